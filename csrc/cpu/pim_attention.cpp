// PIM module on the CPU: curriculum draw + sigmoid projection + two-token attention + residual.
// The d x d products go through ATen's GEMM (MKL / oneDNN); everything per sample is fused into one
// pass over the batch, parallel over chunks of samples. Reductions over samples are kept per chunk
// (no shared accumulators, no races) and summed afterwards. See ../pim_common.h for the math.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <cmath>
#include <string>

#include "../checks.h"
#include "../ops.h"
#include "../philox.h"
#include "../pim_common.h"

namespace pimm_fast::cpu {
namespace {

constexpr int64_t kChunk = 256;  // samples per work item

template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
  for (int64_t j = 0; j < n; ++j) s += a[j] * b[j];
  return s;
}

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// Inputs cast to the compute type and made contiguous once.
struct PimInputs {
  at::ScalarType ct;
  int64_t B, d;
  at::Tensor v, h, label, pred, w_prior;
  bool has_label;
};

PimInputs prepare(const at::Tensor& v, const at::Tensor& h_prev, const std::optional<at::Tensor>& label_prev,
                  const at::Tensor& pred_prev, const at::Tensor& w_prior) {
  const at::ScalarType ct = compute_type(v.scalar_type());
  PimInputs in{ct, v.size(0), v.size(1), cast(v, ct), cast(h_prev, ct), at::Tensor(), cast(pred_prev, ct),
               cast(w_prior, ct), label_prev.has_value()};
  if (in.has_label) in.label = cast(*label_prev, ct);
  return in;
}

// y* = select ? label : pred (both already validated); z = sigmoid(y* w); zm = z + h.
template <typename T>
inline void prior_row(const PimInputs& in, int64_t i, bool sel, T* z_out, T* zm_out, T* ystar_out) {
  const T ystar = sel ? in.label.data_ptr<T>()[i] : in.pred.data_ptr<T>()[i];
  const T* w = in.w_prior.data_ptr<T>();
  const T* h = in.h.data_ptr<T>() + i * in.d;
  for (int64_t j = 0; j < in.d; ++j) {
    const T z = sigmoid(ystar * w[j]);
    if (z_out) z_out[j] = z;
    zm_out[j] = z + h[j];
  }
  if (ystar_out) *ystar_out = ystar;
}

// w0 = softmax weight of the v token; m = w0 v + (1 - w0) zm.
template <typename T>
inline T mix_row(const T* v, const T* zm, const T* Sv, const T* Szm, const T* c, int64_t d, T* m) {
  const T s0 = T(0.5) * dot(v, Sv, d) + dot(c, v, d);
  const T s1 = T(0.5) * dot(zm, Szm, d) + dot(c, zm, d);
  const T w0 = sigmoid(s0 - s1);
  for (int64_t j = 0; j < d; ++j) m[j] = w0 * v[j] + (T(1) - w0) * zm[j];
  return w0;
}

// Validates pred (no NaN) and label (0/1) and draws select; returns select as bool [B].
template <typename T>
void draw_and_validate(const PimInputs& in, float p, uint64_t seed, bool* select) {
  const T* pred = in.pred.data_ptr<T>();
  const T* label = in.has_label ? in.label.data_ptr<T>() : nullptr;
  at::parallel_for(0, in.B, kChunk, [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0; i < b1; ++i) {
      TORCH_CHECK_VALUE(!std::isnan(pred[i]), "pim_attention: pred_prev contains NaN (at sample ", i, ")");
      bool sel = false;
      if (label) {
        TORCH_CHECK_VALUE(label[i] == T(0) || label[i] == T(1), "pim_attention: label_prev must be 0 or 1, got ",
                          static_cast<double>(label[i]), " at sample ", i);
        sel = philox_uniform(seed, static_cast<uint32_t>(i)) < p;
      }
      select[i] = sel;
    }
  });
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
  const float p_value = read_p(p);
  const uint64_t seed_value = read_seed(seed);
  const PimInputs in = prepare(v, h_prev, label_prev, pred_prev, w_prior);
  const ScoreForm form = score_form(w_q, w_k, b_q, b_k, in.ct);
  const int64_t B = in.B, d = in.d;

  at::Tensor select = at::empty({B}, v.options().dtype(at::kBool));
  at::Tensor zm = at::empty({B, d}, in.v.options());
  at::Tensor m = at::empty({B, d}, in.v.options());
  AT_DISPATCH_FLOATING_TYPES(in.ct, "pim_attention_cpu", [&] {
    bool* sel = select.data_ptr<bool>();
    draw_and_validate<scalar_t>(in, p_value, seed_value, sel);
    scalar_t* zm_p = zm.data_ptr<scalar_t>();
    at::parallel_for(0, B, kChunk, [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0; i < b1; ++i) prior_row<scalar_t>(in, i, sel[i], nullptr, zm_p + i * d, nullptr);
    });
    const at::Tensor Sv = at::mm(in.v, form.S), Szm = at::mm(zm, form.S);
    const scalar_t *v_p = in.v.data_ptr<scalar_t>(), *Sv_p = Sv.data_ptr<scalar_t>(),
                   *Szm_p = Szm.data_ptr<scalar_t>(), *c_p = form.c.data_ptr<scalar_t>();
    scalar_t* m_p = m.data_ptr<scalar_t>();
    at::parallel_for(0, B, kChunk, [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0; i < b1; ++i) {
        const int64_t o = i * d;
        mix_row<scalar_t>(v_p + o, zm_p + o, Sv_p + o, Szm_p + o, c_p, d, m_p + o);
      }
    });
  });
  // U = v + m Wv^T + bv
  at::Tensor u = at::addmm(in.v, m, cast(w_v, in.ct).t());
  if (b_v) u += b_v->to(in.ct);
  return {u.to(v.scalar_type()), select};
}

PimGrads pim_attention_backward(const at::Tensor& grad_u, const at::Tensor& v, const at::Tensor& h_prev,
                       const std::optional<at::Tensor>& label_prev, const at::Tensor& pred_prev,
                       const at::Tensor& w_prior, const at::Tensor& w_q, const at::Tensor& w_k,
                       const at::Tensor& w_v, const at::Tensor& select, const std::optional<at::Tensor>& b_q,
                       const std::optional<at::Tensor>& b_k, const std::optional<at::Tensor>& b_v) {
  check_pim_attention(v, h_prev, label_prev, pred_prev, w_prior, w_q, w_k, w_v, b_q, b_k, b_v);
  TORCH_CHECK_VALUE(grad_u.sizes() == v.sizes(), "pim_attention_backward: grad_u must have the shape of v ",
                    v.sizes(), ", got ", grad_u.sizes());
  TORCH_CHECK_VALUE(select.scalar_type() == at::kBool && select.sizes() == at::IntArrayRef{v.size(0)},
                    "pim_attention_backward: select must be bool [B]");
  const PimInputs in = prepare(v, h_prev, label_prev, pred_prev, w_prior);
  const ScoreForm form = score_form(w_q, w_k, b_q, b_k, in.ct);
  const int64_t B = in.B, d = in.d;
  const int64_t n_chunks = (B + kChunk - 1) / kChunk;
  const at::Tensor g = cast(grad_u, in.ct);
  const at::Tensor sel_t = select.contiguous();
  const at::Tensor wv = cast(w_v, in.ct);

  at::Tensor z = at::empty({B, d}, in.v.options()), zm = at::empty({B, d}, in.v.options());
  at::Tensor ystar = at::empty({B}, in.v.options()), w0 = at::empty({B}, in.v.options());
  at::Tensor m = at::empty({B, d}, in.v.options());
  at::Tensor grad_v = at::empty({B, d}, in.v.options()), grad_zm = at::empty({B, d}, in.v.options());
  at::Tensor sv = at::empty({B, d}, in.v.options()), szm = at::empty({B, d}, in.v.options());
  at::Tensor part_wp = at::zeros({n_chunks, d}, in.v.options()), part_r = at::zeros({n_chunks, d}, in.v.options());
  at::Tensor Sv, Szm, gm;

  AT_DISPATCH_FLOATING_TYPES(in.ct, "pim_attention_backward_cpu", [&] {
    const bool* sel = sel_t.data_ptr<bool>();
    scalar_t *z_p = z.data_ptr<scalar_t>(), *zm_p = zm.data_ptr<scalar_t>(), *ys_p = ystar.data_ptr<scalar_t>();
    at::parallel_for(0, B, kChunk, [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0; i < b1; ++i) prior_row<scalar_t>(in, i, sel[i], z_p + i * d, zm_p + i * d, ys_p + i);
    });
    Sv = at::mm(in.v, form.S);
    Szm = at::mm(zm, form.S);
    const scalar_t *v_p = in.v.data_ptr<scalar_t>(), *Sv_p = Sv.data_ptr<scalar_t>(),
                   *Szm_p = Szm.data_ptr<scalar_t>(), *c_p = form.c.data_ptr<scalar_t>();
    scalar_t *m_p = m.data_ptr<scalar_t>(), *w0_p = w0.data_ptr<scalar_t>();
    at::parallel_for(0, B, kChunk, [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0; i < b1; ++i) {
        const int64_t o = i * d;
        w0_p[i] = mix_row<scalar_t>(v_p + o, zm_p + o, Sv_p + o, Szm_p + o, c_p, d, m_p + o);
      }
    });
    gm = at::mm(g, wv);  // dL/dm = Wv^T g, row form
    const scalar_t *g_p = g.data_ptr<scalar_t>(), *gm_p = gm.data_ptr<scalar_t>();
    scalar_t *gv_p = grad_v.data_ptr<scalar_t>(), *gzm_p = grad_zm.data_ptr<scalar_t>();
    scalar_t *sv_p = sv.data_ptr<scalar_t>(), *szm_p = szm.data_ptr<scalar_t>();
    scalar_t *pwp = part_wp.data_ptr<scalar_t>(), *pr = part_r.data_ptr<scalar_t>();
    at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t chunk = c0; chunk < c1; ++chunk) {
        scalar_t* acc_wp = pwp + chunk * d;
        scalar_t* acc_r = pr + chunk * d;
        for (int64_t i = chunk * kChunk; i < std::min(B, (chunk + 1) * kChunk); ++i) {
          const int64_t o = i * d;
          const scalar_t a0 = w0_p[i], a1 = scalar_t(1) - a0;
          const scalar_t gs = a0 * a1 * (dot(gm_p + o, v_p + o, d) - dot(gm_p + o, zm_p + o, d));
          for (int64_t j = 0; j < d; ++j) {
            const scalar_t vj = v_p[o + j], zmj = zm_p[o + j], zj = z_p[o + j];
            gv_p[o + j] = g_p[o + j] + a0 * gm_p[o + j] + gs * (Sv_p[o + j] + c_p[j]);
            const scalar_t gzm = a1 * gm_p[o + j] - gs * (Szm_p[o + j] + c_p[j]);
            gzm_p[o + j] = gzm;
            acc_wp[j] += gzm * zj * (scalar_t(1) - zj) * ys_p[i];
            acc_r[j] += gs * (vj - zmj);
            sv_p[o + j] = gs * vj;
            szm_p[o + j] = gs * zmj;
          }
        }
      }
    });
  });
  // G = sum_i gs_i (v v^T - zm zm^T)
  at::Tensor G = at::mm(sv.t(), in.v);
  G.addmm_(szm.t(), zm, /*beta=*/1, /*alpha=*/-1);
  const at::Tensor r = part_r.sum(0);
  auto [g_wq, g_wk, g_bq, g_bk] = score_weight_grads(G, r, w_q, w_k, b_q, b_k, in.ct);
  const at::Tensor g_wv = at::mm(g.t(), m);
  const at::ScalarType out = v.scalar_type();
  return {grad_v.to(out), grad_zm.to(out), part_wp.sum(0).to(out), g_wq.to(out), g_wk.to(out), g_wv.to(out),
          g_bq.to(out), g_bk.to(out), g.sum(0).to(out)};
}

}  // namespace pimm_fast::cpu
