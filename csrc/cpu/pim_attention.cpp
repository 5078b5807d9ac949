// PIM module on the CPU, forward and backward, each one pass over the batch in blocks of samples.
//
// Per sample the forward draws select (Philox), forms y*, Zm = sigmoid(y* w) + h, the two scores,
// the softmax weight w0, m = w0 v + (1 - w0) Zm and U = v + m Wv^T + bv: 3 d x d products instead of
// the 6 of computing Q, K, V for both tokens (algebra in ../pim_common.h). The backward recomputes
// that per block (cheaper than storing 3 [B, d] tensors) and accumulates the weight gradients in
// per-thread d x d buffers with small register-blocked products; the d x d x d epilogue runs once.
// Everything is plain loops over contiguous rows, specialised for d in {8, 16, 32, 64} and compiled
// for several instruction sets (vec_math.h); no ATen op runs inside the loops.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cmath>
#include <vector>

#include "../checks.h"
#include "../ops.h"
#include "../philox.h"
#include "vec_math.h"

namespace pimm_fast::cpu {
namespace {

constexpr int64_t kBlock = 64;  // samples per work item: block buffers stay in L1/L2

// Per-call constants in the compute type T, row-major.
template <typename T>
struct Constants {
  int64_t d;
  std::vector<T> S, c;  // score form: s(a) = 0.5 a.S a + c.a
  std::vector<T> wv, wvT;
  const T *w_prior, *b_v;  // b_v may be null
};

template <typename T, int D>
Constants<T> constants(const at::Tensor& w_q, const at::Tensor& w_k, const at::Tensor& w_v,
                       const at::Tensor& w_prior, const std::optional<at::Tensor>& b_q,
                       const std::optional<at::Tensor>& b_k, const at::Tensor& b_v) {
  const int64_t d = w_q.size(0);
  const T* q = w_q.data_ptr<T>();
  const T* k = w_k.data_ptr<T>();
  const T* v = w_v.data_ptr<T>();
  const T scale = T(1) / std::sqrt(T(d));
  Constants<T> out{d, std::vector<T>(d * d, T(0)), std::vector<T>(d, T(0)), std::vector<T>(v, v + d * d),
                   std::vector<T>(d * d), w_prior.data_ptr<T>(), b_v.defined() ? b_v.data_ptr<T>() : nullptr};
  std::vector<T> qk(d * d, T(0));
  accumulate_tn<T, D>(q, k, d, qk.data(), d);  // Wq^T Wk = sum_r q_r^T k_r
  for (int64_t a = 0; a < d; ++a) {
    for (int64_t b = 0; b < d; ++b) {
      out.S[a * d + b] = (qk[a * d + b] + qk[b * d + a]) * scale;
      out.wvT[a * d + b] = v[b * d + a];
    }
  }
  // c = (Wq^T bk + Wk^T bq) / sqrt(d): row-vector products bk @ Wq and bq @ Wk
  std::vector<T> tmp(d);
  for (const auto& [bias, W] : {std::pair{b_k, q}, std::pair{b_q, k}}) {
    if (!bias) continue;
    vecmat<T, D>(bias->template data_ptr<T>(), W, tmp.data(), d);
    for (int64_t a = 0; a < d; ++a) out.c[a] += tmp[a] * scale;
  }
  return out;
}

template <typename T>
struct Rows {  // the per-sample inputs, compute type, contiguous
  const T *v, *h, *label, *pred;  // label may be null (inference)
};

// y*, z = sigmoid(y* w) and zm = z + h for sample i; returns y*.
template <typename T, int D>
PIMM_INLINE T prior(const Rows<T>& in, const Constants<T>& k, int64_t i, bool sel, T* z, T* zm) {
  const int64_t d = width<D>(k.d);
  const T ystar = sel ? in.label[i] : in.pred[i];
  const T* h = in.h + i * d;
  for (int64_t j = 0; j < d; ++j) {
    z[j] = sigmoid(ystar * k.w_prior[j]);
    zm[j] = z[j] + h[j];
  }
  return ystar;
}

// Scores, softmax weight w0 of the v token, and m = w0 v + (1 - w0) zm.
template <typename T, int D>
PIMM_INLINE T mix(const T* v, const T* zm, const T* Sv, const T* Szm, const T* c, int64_t d_, T* m) {
  const int64_t d = width<D>(d_);
  const T s0 = T(0.5) * dot(v, Sv, d) + dot(c, v, d);
  const T s1 = T(0.5) * dot(zm, Szm, d) + dot(c, zm, d);
  const T w0 = sigmoid(s0 - s1);
  for (int64_t j = 0; j < d; ++j) m[j] = w0 * v[j] + (T(1) - w0) * zm[j];
  return w0;
}

// Checks pred (no NaN) and label (0/1) before any compute: the multiversioned kernels below must not
// throw (GCC treats calls through a target_clones dispatcher as nothrow, so an exception would abort).
template <typename T>
void validate(const Rows<T>& in, int64_t B) {
  at::parallel_for(0, B, 4096, [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0; i < b1; ++i) {
      TORCH_CHECK_VALUE(!std::isnan(static_cast<double>(in.pred[i])),
                        "pim_attention: pred_prev contains NaN (at sample ", i, ")");
      if (in.label) {
        const T y = in.label[i];
        TORCH_CHECK_VALUE(y == T(0) || y == T(1), "pim_attention: label_prev must be 0 or 1, got ",
                          static_cast<double>(y), " at sample ", i);
      }
    }
  });
}

// Forward of samples [b0, b1); scratch holds 6 d values. Never throws (see validate).
template <typename T, int D>
PIMM_TARGET_CLONES void forward_block(const Rows<T>& in, const Constants<T>& k, float p, uint64_t seed,
                                      int64_t b0, int64_t b1, T* u, bool* select, T* scratch) {
  const int64_t d = width<D>(k.d);
  T *z = scratch, *zm = z + d, *Sv = zm + d, *Szm = Sv + d, *m = Szm + d, *vm = m + d;
  for (int64_t i = b0; i < b1; ++i) {
    const bool sel = in.label && philox_uniform(seed, static_cast<uint32_t>(i)) < p;
    select[i] = sel;
    const T* v = in.v + i * d;
    prior<T, D>(in, k, i, sel, z, zm);
    vecmat2<T, D>(v, zm, k.S.data(), Sv, Szm, d);
    mix<T, D>(v, zm, Sv, Szm, k.c.data(), d, m);
    vecmat<T, D>(m, k.wvT.data(), vm, d);
    T* out = u + i * d;
    for (int64_t j = 0; j < d; ++j) out[j] = v[j] + vm[j] + (k.b_v ? k.b_v[j] : T(0));
  }
}

// Per-thread sums of the backward: G and dWv (d x d), and the vectors dw_prior, r, dbv.
template <typename T>
struct GradSums {
  explicit GradSums(int64_t d) : d(d), buf(static_cast<size_t>(2 * d * d + 3 * d), T(0)) {}
  T* G() { return buf.data(); }
  T* gWv() { return buf.data() + d * d; }
  T* gwp() { return buf.data() + 2 * d * d; }
  T* r() { return gwp() + d; }
  T* gbv() { return r() + d; }
  int64_t d;
  std::vector<T> buf;
};

// The per-sample part of the backward (restrict: every row is its own buffer, so the loop vectorizes).
template <typename T, int D>
PIMM_INLINE void backward_row(int64_t d_, T a0, T gs, T ystar, const T* __restrict__ g, const T* __restrict__ gm,
                              const T* __restrict__ Sv, const T* __restrict__ Szm, const T* __restrict__ c,
                              const T* __restrict__ v, const T* __restrict__ zm, const T* __restrict__ z,
                              T* __restrict__ grad_v, T* __restrict__ grad_h, T* __restrict__ p, T* __restrict__ q,
                              T* __restrict__ gwp, T* __restrict__ r, T* __restrict__ gbv) {
  const int64_t d = width<D>(d_);
  const T a1 = T(1) - a0;
  for (int64_t j = 0; j < d; ++j) {
    grad_v[j] = g[j] + a0 * gm[j] + gs * (Sv[j] + c[j]);
    const T gzm = a1 * gm[j] - gs * (Szm[j] + c[j]);
    grad_h[j] = gzm;
    gwp[j] += gzm * z[j] * (T(1) - z[j]) * ystar;
    p[j] = gs * (v[j] - zm[j]);
    q[j] = v[j] + zm[j];
    r[j] += p[j];
    gbv[j] += g[j];
  }
}

// Block size of the scratch that backward_block needs.
inline int64_t backward_scratch(int64_t d) { return 4 * kBlock * d + 4 * d; }

// Backward of samples [b0, b1), at most kBlock of them. Never throws (see validate).
template <typename T, int D>
PIMM_TARGET_CLONES void backward_block(const Rows<T>& in, const Constants<T>& k, const bool* select, const T* g,
                                       int64_t b0, int64_t b1, T* grad_v, T* grad_h, GradSums<T>& sums,
                                       T* scratch) {
  const int64_t d = width<D>(k.d), rows = b1 - b0;
  T *zm_blk = scratch, *m_blk = zm_blk + kBlock * d, *p_blk = m_blk + kBlock * d, *q_blk = p_blk + kBlock * d;
  T *z = q_blk + kBlock * d, *Sv = z + d, *Szm = Sv + d, *gm = Szm + d;
  T *gwp = sums.gwp(), *r = sums.r(), *gbv = sums.gbv();
  for (int64_t i = b0; i < b1; ++i) {
    const int64_t o = (i - b0) * d;
    const T* v = in.v + i * d;
    const T* gi = g + i * d;
    T* zm = zm_blk + o;
    T* m = m_blk + o;
    const T ystar = prior<T, D>(in, k, i, in.label && select[i], z, zm);
    vecmat2<T, D>(v, zm, k.S.data(), Sv, Szm, d);
    const T a0 = mix<T, D>(v, zm, Sv, Szm, k.c.data(), d, m), a1 = T(1) - a0;
    vecmat<T, D>(gi, k.wv.data(), gm, d);  // dL/dm = Wv^T g
    const T gs = a0 * a1 * (dot(gm, v, d) - dot(gm, zm, d));  // dL/ds(v) = -dL/ds(zm)
    backward_row<T, D>(d, a0, gs, ystar, gi, gm, Sv, Szm, k.c.data(), v, zm, z, grad_v + i * d, grad_h + i * d,
                       p_blk + o, q_blk + o, gwp, r, gbv);
  }
  // sum gs (v v^T - zm zm^T) = sym(P^T Q) with P = gs (v - zm), Q = v + zm: one product instead of two.
  // G collects P^T Q here and is symmetrised after the reduction.   dWv += sum g m^T
  accumulate_tn<T, D>(p_blk, q_blk, rows, sums.G(), d);
  accumulate_tn<T, D>(g + b0 * d, m_blk, rows, sums.gWv(), d);
}

// Calls fn.template operator()<D>() with D the compile-time width for d, or 0 (run-time width).
template <typename Fn>
void with_width(int64_t d, Fn&& fn) {
  switch (d) {
    case 8: fn.template operator()<8>(); break;
    case 16: fn.template operator()<16>(); break;
    case 32: fn.template operator()<32>(); break;
    case 64: fn.template operator()<64>(); break;
    default: fn.template operator()<0>();
  }
}

struct Prepared {
  at::ScalarType ct;
  at::Tensor v, h, label, pred, w_prior, w_q, w_k, w_v, b_q, b_k, b_v;
};

Prepared prepare(const at::Tensor& v, const at::Tensor& h_prev, const std::optional<at::Tensor>& label_prev,
                 const at::Tensor& pred_prev, const at::Tensor& w_prior, const at::Tensor& w_q, const at::Tensor& w_k,
                 const at::Tensor& w_v, const std::optional<at::Tensor>& b_q, const std::optional<at::Tensor>& b_k,
                 const std::optional<at::Tensor>& b_v) {
  const at::ScalarType ct = compute_type(v.scalar_type());
  auto cast = [ct](const at::Tensor& t) { return t.to(ct).contiguous(); };
  auto cast_opt = [&](const std::optional<at::Tensor>& t) { return t ? cast(*t) : at::Tensor(); };
  return {ct,           cast(v),      cast(h_prev),    cast_opt(label_prev), cast(pred_prev), cast(w_prior),
          cast(w_q),    cast(w_k),    cast(w_v),       cast_opt(b_q),        cast_opt(b_k),   cast_opt(b_v)};
}

std::optional<at::Tensor> opt(const at::Tensor& t) { return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt; }

template <typename T>
Rows<T> rows_of(const Prepared& in) {
  return {in.v.data_ptr<T>(), in.h.data_ptr<T>(), in.label.defined() ? in.label.data_ptr<T>() : nullptr,
          in.pred.data_ptr<T>()};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> pim_attention(
    const at::Tensor& v, const at::Tensor& h_prev, const std::optional<at::Tensor>& label_prev,
    const at::Tensor& pred_prev, const at::Tensor& w_prior, const at::Tensor& w_q, const at::Tensor& w_k,
    const at::Tensor& w_v, const at::Tensor& p, const at::Tensor& seed, const std::optional<at::Tensor>& b_q,
    const std::optional<at::Tensor>& b_k, const std::optional<at::Tensor>& b_v) {
  check_pim_attention(v, h_prev, label_prev, pred_prev, w_prior, w_q, w_k, w_v, b_q, b_k, b_v);
  TORCH_CHECK_VALUE(p.device().is_cpu() && seed.device().is_cpu(),
                    "pim_attention: p and seed must be CPU tensors for the cpp backend");
  TORCH_CHECK_VALUE(v.size(0) < (int64_t(1) << 31), "pim_attention: at most 2^31 - 1 samples per call");
  const float p_value = read_p(p);
  const uint64_t seed_value = read_seed(seed);
  const Prepared in = prepare(v, h_prev, label_prev, pred_prev, w_prior, w_q, w_k, w_v, b_q, b_k, b_v);
  const int64_t B = v.size(0), d = v.size(1);
  at::Tensor u = at::empty({B, d}, in.v.options());
  at::Tensor select = at::empty({B}, v.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(in.ct, "pim_attention_cpu", [&] {
    using T = scalar_t;
    const Rows<T> rows = rows_of<T>(in);
    T* u_p = u.data_ptr<T>();
    bool* sel_p = select.data_ptr<bool>();
    validate(rows, B);
    with_width(d, [&]<int D>() {
      const Constants<T> k = constants<T, D>(in.w_q, in.w_k, in.w_v, in.w_prior, opt(in.b_q), opt(in.b_k), in.b_v);
      at::parallel_for(0, B, kBlock, [&](int64_t b0, int64_t b1) {
        std::vector<T> scratch(6 * d);
        for (int64_t s = b0; s < b1; s += kBlock)
          forward_block<T, D>(rows, k, p_value, seed_value, s, std::min(b1, s + kBlock), u_p, sel_p, scratch.data());
      });
    });
  });
  return {u.to(v.scalar_type()), select};
}

PimGrads pim_attention_backward(const at::Tensor& grad_u, const at::Tensor& v, const at::Tensor& h_prev,
                                const std::optional<at::Tensor>& label_prev, const at::Tensor& pred_prev,
                                const at::Tensor& w_prior, const at::Tensor& w_q, const at::Tensor& w_k,
                                const at::Tensor& w_v, const at::Tensor& select, const std::optional<at::Tensor>& b_q,
                                const std::optional<at::Tensor>& b_k, const std::optional<at::Tensor>& b_v) {
  check_pim_attention(v, h_prev, label_prev, pred_prev, w_prior, w_q, w_k, w_v, b_q, b_k, b_v);
  check_pim_attention_backward(grad_u, v, select);
  const Prepared in = prepare(v, h_prev, label_prev, pred_prev, w_prior, w_q, w_k, w_v, b_q, b_k, b_v);
  const int64_t B = v.size(0), d = v.size(1);
  const auto opts = in.v.options();
  const at::Tensor g = grad_u.to(in.ct).contiguous(), sel = select.contiguous();
  at::Tensor grad_v = at::empty({B, d}, opts), grad_h = at::empty({B, d}, opts);
  at::Tensor grad_wp = at::empty({d}, opts), grad_wq = at::empty({d, d}, opts), grad_wk = at::empty({d, d}, opts);
  at::Tensor grad_wv = at::empty({d, d}, opts), grad_bq = at::empty({d}, opts), grad_bk = at::empty({d}, opts);
  at::Tensor grad_bv = at::empty({d}, opts);
  AT_DISPATCH_FLOATING_TYPES(in.ct, "pim_attention_backward_cpu", [&] {
    using T = scalar_t;
    const Rows<T> rows = rows_of<T>(in);
    std::vector<GradSums<T>> per_thread(at::get_num_threads(), GradSums<T>(d));
    with_width(d, [&]<int D>() {
      const Constants<T> k = constants<T, D>(in.w_q, in.w_k, in.w_v, in.w_prior, opt(in.b_q), opt(in.b_k), in.b_v);
      at::parallel_for(0, B, kBlock, [&](int64_t b0, int64_t b1) {
        GradSums<T>& sums = per_thread[at::get_thread_num()];
        std::vector<T> scratch(backward_scratch(d));
        for (int64_t s = b0; s < b1; s += kBlock)
          backward_block<T, D>(rows, k, sel.data_ptr<bool>(), g.data_ptr<T>(), s, std::min(b1, s + kBlock),
                               grad_v.data_ptr<T>(), grad_h.data_ptr<T>(), sums, scratch.data());
      });
    });
    GradSums<T> total(d);
    for (auto& part : per_thread) {
      for (size_t e = 0; e < total.buf.size(); ++e) total.buf[e] += part.buf[e];
    }
    T* G = total.G();
    for (int64_t a = 0; a < d; ++a) {  // G = (P^T Q + Q^T P) / 2
      for (int64_t b = a; b < d; ++b) G[a * d + b] = G[b * d + a] = T(0.5) * (G[a * d + b] + G[b * d + a]);
    }
    // Epilogue (d^3): dWq = (Wk G + bk r^T)/sqrt(d), dWk = (Wq G + bq r^T)/sqrt(d), dbq = Wk r/sqrt(d), dbk = Wq r/sqrt(d)
    const T scale = T(1) / std::sqrt(T(d));
    const T *q = in.w_q.data_ptr<T>(), *kk = in.w_k.data_ptr<T>(), *r = total.r();
    const T* bq = in.b_q.defined() ? in.b_q.data_ptr<T>() : nullptr;
    const T* bk = in.b_k.defined() ? in.b_k.data_ptr<T>() : nullptr;
    T *gwq = grad_wq.data_ptr<T>(), *gwk = grad_wk.data_ptr<T>(), *gbq = grad_bq.data_ptr<T>(),
      *gbk = grad_bk.data_ptr<T>();
    for (int64_t a = 0; a < d; ++a) {
      for (int64_t b = 0; b < d; ++b) {
        T sq = 0, sk = 0;
        for (int64_t j = 0; j < d; ++j) {
          sq += kk[a * d + j] * G[j * d + b];
          sk += q[a * d + j] * G[j * d + b];
        }
        gwq[a * d + b] = (sq + (bk ? bk[a] * r[b] : T(0))) * scale;
        gwk[a * d + b] = (sk + (bq ? bq[a] * r[b] : T(0))) * scale;
      }
      gbq[a] = dot(kk + a * d, r, d) * scale;
      gbk[a] = dot(q + a * d, r, d) * scale;
    }
    std::copy(total.gWv(), total.gWv() + d * d, grad_wv.data_ptr<T>());
    std::copy(total.gwp(), total.gwp() + d, grad_wp.data_ptr<T>());
    std::copy(total.gbv(), total.gbv() + d, grad_bv.data_ptr<T>());
  });
  const at::ScalarType out = v.scalar_type();
  return {grad_v.to(out), grad_h.to(out), grad_wp.to(out), grad_wq.to(out), grad_wk.to(out),
          grad_wv.to(out), grad_bq.to(out), grad_bk.to(out), grad_bv.to(out)};
}

}  // namespace pimm_fast::cpu
