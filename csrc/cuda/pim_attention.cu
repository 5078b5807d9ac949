// PIM module on the GPU: the same algorithm as csrc/cpu/pim_attention.cpp (see ../pim_common.h).
// d x d products go through cuBLAS (at::mm); the per-sample work is fused in a few kernels with one
// warp per sample (lanes over d, warp-shuffle reductions). Reductions over samples are done with
// at::sum on per-sample rows, so results are deterministic.
#include <ATen/Dispatch.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/mm.h>

#include "../checks.h"
#include "../ops.h"
#include "../philox.h"
#include "../pim_common.h"
#include "common.cuh"

namespace pimm_fast::cuda {
namespace {

enum ErrorSlot { kNanPred = 0, kBadLabel = 1, kBadP = 2, kBadSeed = 3, kNumSlots = 4 };

// select and y* per sample; validates pred (no NaN), label (0/1), p in [0, 1] and seed >= 0.
template <typename T>
__global__ void draw_kernel(const T* __restrict__ label, const T* __restrict__ pred, const float* __restrict__ p,
                            const int64_t* __restrict__ seed, bool* __restrict__ select, T* __restrict__ ystar,
                            int64_t B, bool draw, unsigned long long* errors) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= B) return;
  const T pr = pred[i];
  if (isnan(static_cast<double>(pr))) flag_error(errors + kNanPred, i);
  if (draw && i == 0) {  // p and seed are checked with or without labels, as on every backend
    if (!(*p >= 0.f && *p <= 1.f)) flag_error(errors + kBadP, 0);
    if (*seed < 0) flag_error(errors + kBadSeed, 0);
  }
  bool sel = false;
  if (label != nullptr) {
    const T y = label[i];
    if (!(y == T(0) || y == T(1))) flag_error(errors + kBadLabel, i);
    if (draw) {
      const float pv = *p;
      const int64_t sv = *seed;
      sel = philox_uniform(static_cast<uint64_t>(sv), static_cast<uint32_t>(i)) < pv;
    } else {
      sel = select[i];
    }
  }
  if (draw) select[i] = sel;
  ystar[i] = sel ? label[i] : pr;
}

// z = sigmoid(y* w), zm = z + h; elementwise over [B, d].
template <typename T>
__global__ void prior_kernel(const T* __restrict__ ystar, const T* __restrict__ w_prior, const T* __restrict__ h,
                             T* __restrict__ z, T* __restrict__ zm, int64_t B, int64_t d) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= B * d) return;
  const T zv = sigmoid(ystar[e / d] * w_prior[e % d]);
  if (z != nullptr) z[e] = zv;
  zm[e] = zv + h[e];
}

// One warp per sample: scores, softmax weight w0 and m = w0 v + (1 - w0) zm.
template <typename T>
__global__ void mix_kernel(const T* __restrict__ v, const T* __restrict__ zm, const T* __restrict__ Sv,
                           const T* __restrict__ Szm, const T* __restrict__ c, T* __restrict__ w0_out,
                           T* __restrict__ m, int64_t B, int64_t d) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= B) return;
  const int64_t o = i * d;
  T s0 = 0, s1 = 0;
  for (int64_t j = lane; j < d; j += 32) {
    s0 += v[o + j] * (T(0.5) * Sv[o + j] + c[j]);
    s1 += zm[o + j] * (T(0.5) * Szm[o + j] + c[j]);
  }
  const T w0 = sigmoid(warp_sum(s0) - warp_sum(s1));
  for (int64_t j = lane; j < d; j += 32) m[o + j] = w0 * v[o + j] + (T(1) - w0) * zm[o + j];
  if (lane == 0 && w0_out != nullptr) w0_out[i] = w0;
}

// One warp per sample: input gradients and the per-sample rows that the weight gradients sum.
template <typename T>
__global__ void grad_kernel(const T* __restrict__ g, const T* __restrict__ gm, const T* __restrict__ v,
                            const T* __restrict__ z, const T* __restrict__ zm, const T* __restrict__ Sv,
                            const T* __restrict__ Szm, const T* __restrict__ c, const T* __restrict__ w0s,
                            const T* __restrict__ ystar, T* __restrict__ grad_v, T* __restrict__ grad_zm,
                            T* __restrict__ p, T* __restrict__ q, T* __restrict__ wp_rows, int64_t B, int64_t d) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= B) return;
  const int64_t o = i * d;
  T dv = 0, dz = 0;
  for (int64_t j = lane; j < d; j += 32) {
    dv += gm[o + j] * v[o + j];
    dz += gm[o + j] * zm[o + j];
  }
  const T a0 = w0s[i], a1 = T(1) - a0;
  const T gs = a0 * a1 * (warp_sum(dv) - warp_sum(dz));
  const T ys = ystar[i];
  for (int64_t j = lane; j < d; j += 32) {
    const int64_t e = o + j;
    grad_v[e] = g[e] + a0 * gm[e] + gs * (Sv[e] + c[j]);
    const T gzm = a1 * gm[e] - gs * (Szm[e] + c[j]);
    grad_zm[e] = gzm;
    wp_rows[e] = gzm * z[e] * (T(1) - z[e]) * ys;
    p[e] = gs * (v[e] - zm[e]);
    q[e] = v[e] + zm[e];
  }
}

struct Prepared {
  at::ScalarType ct;
  int64_t B, d;
  at::Tensor v, h, label, pred, w_prior;
  bool has_label;
};

Prepared prepare(const at::Tensor& v, const at::Tensor& h_prev, const std::optional<at::Tensor>& label_prev,
                 const at::Tensor& pred_prev, const at::Tensor& w_prior) {
  const at::ScalarType ct = compute_type(v.scalar_type());
  Prepared in{ct, v.size(0), v.size(1), cast(v, ct), cast(h_prev, ct), at::Tensor(), cast(pred_prev, ct),
              cast(w_prior, ct), label_prev.has_value()};
  if (in.has_label) in.label = cast(*label_prev, ct);
  return in;
}

void raise_errors(const at::Tensor& errors, const Prepared& in) {
  const at::Tensor host = errors.cpu();  // one sync per forward: bad data must raise, not propagate
  const auto* e = reinterpret_cast<const unsigned long long*>(host.data_ptr<int64_t>());
  TORCH_CHECK_VALUE(e[kBadP] == kNoError, "pim_attention: p must lie in [0, 1]");
  TORCH_CHECK_VALUE(e[kBadSeed] == kNoError, "pim_attention: seed must be non-negative");
  TORCH_CHECK_VALUE(e[kNanPred] == kNoError, "pim_attention: pred_prev contains NaN (at sample ", e[kNanPred], ")");
  if (e[kBadLabel] != kNoError) {
    const int64_t i = static_cast<int64_t>(e[kBadLabel]);
    TORCH_CHECK_VALUE(false, "pim_attention: label_prev must be 0 or 1, got ", in.label[i].item<double>(),
                      " at sample ", i);
  }
}

// Runs draw (or reads select), prior and mix; returns (zm, Sv, Szm, w0, m) in the compute type.
template <typename T>
void forward_core(const Prepared& in, const ScoreForm& form, const float* p, const int64_t* seed, bool draw,
                  at::Tensor& select, at::Tensor& ystar, at::Tensor* z, at::Tensor& zm, at::Tensor& Sv,
                  at::Tensor& Szm, at::Tensor* w0, at::Tensor& m, unsigned long long* errors) {
  const int64_t B = in.B, d = in.d;
  draw_kernel<T><<<blocks_for(B), kThreads, 0, stream()>>>(
      in.has_label ? in.label.data_ptr<T>() : nullptr, in.pred.data_ptr<T>(), p, seed, select.data_ptr<bool>(),
      ystar.data_ptr<T>(), B, draw, errors);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  prior_kernel<T><<<blocks_for(B * d), kThreads, 0, stream()>>>(
      ystar.data_ptr<T>(), in.w_prior.data_ptr<T>(), in.h.data_ptr<T>(), z ? z->data_ptr<T>() : nullptr,
      zm.data_ptr<T>(), B, d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  Sv = at::mm(in.v, form.S);
  Szm = at::mm(zm, form.S);
  mix_kernel<T><<<blocks_for(B, kWarpsPerBlock), kThreads, 0, stream()>>>(
      in.v.data_ptr<T>(), zm.data_ptr<T>(), Sv.data_ptr<T>(), Szm.data_ptr<T>(), form.c.data_ptr<T>(),
      w0 ? w0->data_ptr<T>() : nullptr, m.data_ptr<T>(), B, d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> pim_attention(
    const at::Tensor& v, const at::Tensor& h_prev, const std::optional<at::Tensor>& label_prev,
    const at::Tensor& pred_prev, const at::Tensor& w_prior, const at::Tensor& w_q, const at::Tensor& w_k,
    const at::Tensor& w_v, const at::Tensor& p, const at::Tensor& seed, const std::optional<at::Tensor>& b_q,
    const std::optional<at::Tensor>& b_k, const std::optional<at::Tensor>& b_v) {
  check_pim_attention(v, h_prev, label_prev, pred_prev, w_prior, w_q, w_k, w_v, b_q, b_k, b_v);
  check_p_seed(p, seed, v);
  const c10::cuda::CUDAGuard guard(v.device());
  if (p.device().is_cpu()) read_p(p);  // on the host: checked here without a sync (on the device: by the kernel)
  if (seed.device().is_cpu()) read_seed(seed);
  const Prepared in = prepare(v, h_prev, label_prev, pred_prev, w_prior);
  const ScoreForm form = score_form(w_q, w_k, b_q, b_k, in.ct);
  const at::Tensor p_dev = p.to(v.device(), at::kFloat), seed_dev = seed.to(v.device());
  const auto opts = in.v.options();
  at::Tensor select = at::empty({in.B}, opts.dtype(at::kBool));
  at::Tensor ystar = at::empty({in.B}, opts), zm = at::empty({in.B, in.d}, opts), m = at::empty({in.B, in.d}, opts);
  at::Tensor Sv, Szm;
  at::Tensor errors = at::full({kNumSlots}, static_cast<int64_t>(-1), opts.dtype(at::kLong));
  if (in.B > 0) {
    AT_DISPATCH_FLOATING_TYPES(in.ct, "pim_attention_cuda", [&] {
      forward_core<scalar_t>(in, form, p_dev.data_ptr<float>(), seed_dev.data_ptr<int64_t>(), true, select, ystar,
                             nullptr, zm, Sv, Szm, nullptr, m,
                             reinterpret_cast<unsigned long long*>(errors.data_ptr<int64_t>()));
    });
    raise_errors(errors, in);
  }
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
  check_pim_attention_backward(grad_u, v, select);
  const c10::cuda::CUDAGuard guard(v.device());
  const Prepared in = prepare(v, h_prev, label_prev, pred_prev, w_prior);
  const ScoreForm form = score_form(w_q, w_k, b_q, b_k, in.ct);
  const int64_t B = in.B, d = in.d;
  const auto opts = in.v.options();
  const at::Tensor g = cast(grad_u, in.ct), wv = cast(w_v, in.ct);
  at::Tensor sel = select.contiguous();
  at::Tensor ystar = at::empty({B}, opts), w0 = at::empty({B}, opts);
  at::Tensor z = at::empty({B, d}, opts), zm = at::empty({B, d}, opts), m = at::empty({B, d}, opts);
  at::Tensor grad_v = at::empty({B, d}, opts), grad_zm = at::empty({B, d}, opts);
  at::Tensor p = at::empty({B, d}, opts), q = at::empty({B, d}, opts), wp_rows = at::empty({B, d}, opts);
  at::Tensor Sv, Szm, gm;
  at::Tensor errors = at::full({kNumSlots}, static_cast<int64_t>(-1), opts.dtype(at::kLong));
  if (B > 0) {
    AT_DISPATCH_FLOATING_TYPES(in.ct, "pim_attention_backward_cuda", [&] {
      forward_core<scalar_t>(in, form, nullptr, nullptr, false, sel, ystar, &z, zm, Sv, Szm, &w0, m,
                             reinterpret_cast<unsigned long long*>(errors.data_ptr<int64_t>()));
      gm = at::mm(g, wv);
      grad_kernel<scalar_t><<<blocks_for(B, kWarpsPerBlock), kThreads, 0, stream()>>>(
          g.data_ptr<scalar_t>(), gm.data_ptr<scalar_t>(), in.v.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(),
          zm.data_ptr<scalar_t>(), Sv.data_ptr<scalar_t>(), Szm.data_ptr<scalar_t>(), form.c.data_ptr<scalar_t>(),
          w0.data_ptr<scalar_t>(), ystar.data_ptr<scalar_t>(), grad_v.data_ptr<scalar_t>(),
          grad_zm.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(),
          wp_rows.data_ptr<scalar_t>(), B, d);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  // sum gs (v v^T - zm zm^T) = sym(P^T Q), P = gs (v - zm), Q = v + zm (see ../pim_common.h)
  const at::Tensor PQ = at::mm(p.t(), q);
  const at::Tensor G = (PQ + PQ.t()) * 0.5;
  const at::Tensor r = p.sum(0);
  auto [g_wq, g_wk, g_bq, g_bk] = score_weight_grads(G, r, w_q, w_k, b_q, b_k, in.ct);
  const at::ScalarType out = v.scalar_type();
  return {grad_v.to(out), grad_zm.to(out), wp_rows.sum(0).to(out), g_wq.to(out), g_wk.to(out),
          at::mm(g.t(), m).to(out), g_bq.to(out), g_bk.to(out), g.sum(0).to(out)};
}

}  // namespace pimm_fast::cuda
