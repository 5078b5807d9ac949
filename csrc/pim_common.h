// The algebra of the PIM kernels (host code, ATen ops on small d x d tensors, used by the CUDA kernels).
//
// With q = Wq a + bq and k = Wk a + bk, the score of token a is
//   s(a) = q.k / sqrt(d) = 0.5 a^T S a + c.a + const,   S = (Wq^T Wk + Wk^T Wq) / sqrt(d),
//                                                       c = (Wq^T bk + Wk^T bq) / sqrt(d),
// and ds/da = S a + c. The constant bq.bk/sqrt(d) is the same for both tokens, so softmax drops it.
// Because the two softmax weights sum to 1, U = v + Wv (w0 v + w1 Zm) + bv: one V product per sample.
// Per sample this needs 3 d x d products forward (S v, S Zm, Wv m) instead of the 6 of computing Q, K,
// V for both tokens. The weight gradients come back from G = sum_i gs_i (v v^T - Zm Zm^T) and
// r = sum_i gs_i (v - Zm), gs_i = dL/ds(v_i) = -dL/ds(Zm_i):
//   dWq = (Wk G + bk r^T)/sqrt(d), dWk = (Wq G + bq r^T)/sqrt(d), dbq = Wk r/sqrt(d), dbk = Wq r/sqrt(d).
// G is symmetric: with P = gs (v - Zm) and Q = v + Zm, G = (P^T Q + Q^T P) / 2, one product, not two.
// The CPU kernel (cpu/pim_attention.cpp) follows the same algebra in fused loops; this header serves
// the CUDA kernels.
#pragma once
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mv.h>
#include <ATen/ops/outer.h>
#include <ATen/ops/zeros.h>

#include <cmath>
#include <optional>
#include <tuple>

namespace pimm_fast {

struct ScoreForm {
  at::Tensor S;  // [d, d], symmetric
  at::Tensor c;  // [d]
};

inline at::Tensor cast(const at::Tensor& t, at::ScalarType ct) { return t.to(ct).contiguous(); }

inline ScoreForm score_form(const at::Tensor& w_q, const at::Tensor& w_k, const std::optional<at::Tensor>& b_q,
                            const std::optional<at::Tensor>& b_k, at::ScalarType ct) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(w_q.size(0)));
  const at::Tensor q = w_q.to(ct), k = w_k.to(ct);
  at::Tensor qk = at::mm(q.t(), k);
  at::Tensor S = ((qk + qk.t()) * scale).contiguous();
  at::Tensor c = at::zeros({w_q.size(0)}, q.options());
  if (b_k) c += at::mv(q.t(), b_k->to(ct));
  if (b_q) c += at::mv(k.t(), b_q->to(ct));
  return {S, (c * scale).contiguous()};
}

// (dWq, dWk, dbq, dbk) from G and r, as above.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> score_weight_grads(
    const at::Tensor& G, const at::Tensor& r, const at::Tensor& w_q, const at::Tensor& w_k,
    const std::optional<at::Tensor>& b_q, const std::optional<at::Tensor>& b_k, at::ScalarType ct) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(w_q.size(0)));
  const at::Tensor q = w_q.to(ct), k = w_k.to(ct);
  at::Tensor g_wq = at::mm(k, G);
  at::Tensor g_wk = at::mm(q, G);
  if (b_k) g_wq += at::outer(b_k->to(ct), r);
  if (b_q) g_wk += at::outer(b_q->to(ct), r);
  return {g_wq * scale, g_wk * scale, at::mv(k, r) * scale, at::mv(q, r) * scale};
}

}  // namespace pimm_fast
