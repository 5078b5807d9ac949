// Fused optimizer steps for the embedding table on the GPU. The touched rows are sorted (a stable
// at::sort, no host synchronisation); one warp per sorted position, and the warp at the head of a run
// of equal rows sums the run's gradients (lanes over columns for short runs, over positions for the long
// runs of hot ids) and updates that row and its optimizer state once. Each row is written by one warp in
// a fixed order: deterministic, no atomics.
//
// Every input, the optimizer state and every id are checked before anything is written (a failing
// call leaves the table and the state as they were): the ids on the device, read back in one flag
// (the op's only synchronisation). Adam's bias correction is computed in double from the step counter
// where it lives (on the device: read by the kernel, not by the host).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/stack.h>

#include <cmath>

#include "../checks.h"
#include "../ops.h"
#include "common.cuh"

namespace pimm_fast::cuda {
namespace {

enum Optimizer { kSgd = 0, kAdagrad = 1, kAdam = 2 };

struct Hyper {
  double lr, eps, one_minus_beta1, one_minus_beta2, beta1, beta2;
  double host_step_size;          // used when step_ptr is null
  const int64_t* step_ptr;        // Adam's counter on the device (already incremented), or null
};

// Column j's gradient summed over the run [i, end) of equal rows. Short runs: the calling lane alone, in
// value order. Long runs (hot ids): the 32 lanes take every 32nd position and a shuffle tree adds their
// partial sums; every lane gets the sum. Both orders are fixed: deterministic.
constexpr int64_t kLongRun = 32;

template <typename acc_t>
__device__ __forceinline__ acc_t run_sum_lane(const acc_t* grad, const int64_t* perm, int64_t i, int64_t end,
                                              int64_t j, int64_t D) {
  acc_t g = 0;
  for (int64_t k = i; k < end; ++k) g += grad[perm[k] * D + j];
  return g;
}

template <typename acc_t>
__device__ __forceinline__ acc_t run_sum_warp(const acc_t* grad, const int64_t* perm, int64_t i, int64_t end,
                                              int64_t j, int64_t D, int lane) {
  acc_t g = 0;
  for (int64_t k = i + lane; k < end; k += 32) g += grad[perm[k] * D + j];
  return warp_sum(g);
}

template <int kOpt, typename scalar_t, typename acc_t>
__device__ __forceinline__ void update_column(scalar_t* w, acc_t* s1, acc_t* s2, int64_t row, int64_t j, int64_t D,
                                              acc_t g, acc_t scale, acc_t step_size, acc_t eps, const Hyper& hp) {
  scalar_t* wr = w + row * D;
  const acc_t wv = static_cast<acc_t>(wr[j]);
  if (kOpt == kAdam) {
    const int64_t k = row * D + j;
    const acc_t m = s1[k] + (g - s1[k]) * static_cast<acc_t>(hp.one_minus_beta1);
    const acc_t v = s2[k] + (g * g - s2[k]) * static_cast<acc_t>(hp.one_minus_beta2);
    s1[k] = m;
    s2[k] = v;
    wr[j] = static_cast<scalar_t>(wv - step_size * m / (sqrt(v) + eps));
  } else {
    wr[j] = static_cast<scalar_t>(wv - scale * g);
  }
}

template <int kOpt, typename scalar_t, typename acc_t>
__global__ void update_kernel(const int64_t* __restrict__ sorted, const int64_t* __restrict__ ends,
                              const int64_t* __restrict__ perm, const acc_t* __restrict__ grad,
                              scalar_t* __restrict__ w, acc_t* __restrict__ s1, acc_t* __restrict__ s2, int64_t n,
                              int64_t D, Hyper hp) {
  const int lane = threadIdx.x % 32;
  const acc_t lr = static_cast<acc_t>(hp.lr), eps = static_cast<acc_t>(hp.eps);
  acc_t step_size = static_cast<acc_t>(hp.host_step_size);
  if (kOpt == kAdam && hp.step_ptr != nullptr) {  // bias correction in double, from the device counter
    const double t = static_cast<double>(*hp.step_ptr);
    step_size = static_cast<acc_t>(hp.lr * sqrt(1.0 - pow(hp.beta2, t)) / (1.0 - pow(hp.beta1, t)));
  }
  for (int64_t i = global_warp(); i < n; i += grid_warps()) {
    const int64_t row = sorted[i];
    if (i > 0 && sorted[i - 1] == row) continue;  // not the head of its run (warp-uniform)
    const int64_t end = ends[i];
    const bool long_run = end - i > kLongRun;  // warp-uniform
    acc_t scale = lr;
    if (kOpt == kAdagrad) {  // G_r += mean(g_r^2); w_r -= lr g_r / (sqrt(G_r) + eps)
      acc_t sq = 0;
      if (long_run) {
        for (int64_t j = 0; j < D; ++j) {
          const acc_t g = run_sum_warp(grad, perm, i, end, j, D, lane);
          sq += lane == 0 ? g * g : acc_t(0);
        }
      } else {
        for (int64_t j = lane; j < D; j += 32) {
          const acc_t g = run_sum_lane(grad, perm, i, end, j, D);
          sq += g * g;
        }
      }
      sq = warp_sum(sq);
      const acc_t G = s1[row] + sq / static_cast<acc_t>(D);
      __syncwarp();
      if (lane == 0) s1[row] = G;
      scale = lr / (sqrt(G) + eps);
    }
    if (long_run) {
      for (int64_t j = 0; j < D; ++j) {
        const acc_t g = run_sum_warp(grad, perm, i, end, j, D, lane);
        if (j % 32 == lane) update_column<kOpt>(w, s1, s2, row, j, D, g, scale, step_size, eps, hp);
      }
    } else {
      for (int64_t j = lane; j < D; j += 32) {
        update_column<kOpt>(w, s1, s2, row, j, D, run_sum_lane(grad, perm, i, end, j, D), scale, step_size, eps,
                            hp);
      }
    }
  }
}

struct Sorted {
  at::Tensor rows, ends, perm, grad;  // sorted rows [n], end of each one's run [n], positions in values [n],
                                      // grad_values in the compute type
};

// Checks the layout and every id on the device (one flag read), then sorts the touched rows.
Sorted prepare(const char* op, const at::Tensor& grad_values, const at::Tensor& values,
               const at::Tensor& value_offsets, const at::Tensor& field_offsets, const at::Tensor& weight) {
  const int64_t F = field_offsets.numel(), n = values.numel(), num_rows = weight.size(0);
  const at::Tensor vo = value_offsets.contiguous(), off = field_offsets.contiguous();
  const auto long_opts = vo.options();
  const at::Tensor field = F ? at::searchsorted(vo.slice(0, 1), at::arange(n, long_opts), false, /*right=*/true)
                                   .clamp_max(F - 1)
                             : at::zeros({n}, long_opts);
  const at::Tensor sizes = F ? at::cat({off.slice(0, 1), at::full({1}, num_rows, long_opts)}) - off : off;
  const at::Tensor ids = values.to(at::kLong);
  const at::Tensor ok_layout = (vo[0] == 0) & (vo[-1] == n) & (vo.slice(0, 1) >= vo.slice(0, 0, -1)).all();
  const at::Tensor ok_fields = F ? (off[0] == 0) & (sizes >= 0).all() : at::full({}, true, long_opts.dtype(at::kBool));
  const at::Tensor bad = F && n ? (ids < 0) | (ids >= sizes.index_select(0, field)) : at::zeros({n}, ids.options().dtype(at::kBool));
  const at::Tensor checks = at::stack({ok_layout, ok_fields, bad.any()}).cpu();  // the one sync
  const bool* c = checks.data_ptr<bool>();
  TORCH_CHECK_VALUE(c[0], "embedding: value offsets must run from 0 to the number of values (", n,
                    ") without decreasing, got ", value_offsets.cpu());
  TORCH_CHECK_VALUE(c[1], "embedding_concat: field_offsets must start at 0, be non-decreasing and <= num_rows=",
                    num_rows, ", got ", field_offsets.cpu());
  if (c[2]) {  // error path: a few more host reads to name the id
    const int64_t i = bad.nonzero()[0][0].item<int64_t>();
    const int64_t f = field[i].item<int64_t>();
    TORCH_CHECK_INDEX(false, op, ": id ", ids[i].item<int64_t>(), " out of range for field ", f, " (size ",
                      sizes[f].item<int64_t>(), ") at position ", i - vo[f].item<int64_t>(),
                      " of the field's values");
  }
  const at::Tensor rows = F ? ids + off.index_select(0, field) : ids;
  auto [sorted, perm] = at::sort(rows, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor ends = at::searchsorted(sorted, sorted, /*out_int32=*/false, /*right=*/true);
  return {sorted, ends, perm, grad_values.to(compute_type(weight.scalar_type())).contiguous()};
}

template <int kOpt>
void launch(const Sorted& s, const at::Tensor& weight, const at::Tensor* s1, const at::Tensor* s2, const Hyper& hp) {
  const int64_t n = s.rows.numel(), D = weight.size(1);
  if (n == 0 || D == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weight.scalar_type(), "embedding_update_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    update_kernel<kOpt, scalar_t, acc_t><<<warp_grid(n), kThreads, 0, stream()>>>(
        s.rows.data_ptr<int64_t>(), s.ends.data_ptr<int64_t>(), s.perm.data_ptr<int64_t>(), s.grad.data_ptr<acc_t>(),
        weight.data_ptr<scalar_t>(), s1 ? s1->data_ptr<acc_t>() : nullptr, s2 ? s2->data_ptr<acc_t>() : nullptr, n, D,
        hp);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

void embedding_update_sgd(const at::Tensor& grad_values, const at::Tensor& values, const at::Tensor& value_offsets,
                          const at::Tensor& field_offsets, const at::Tensor& weight, double lr) {
  check_update(grad_values, values, value_offsets, field_offsets, weight);
  const c10::cuda::CUDAGuard guard(weight.device());
  const Sorted s = prepare("embedding_update_sgd", grad_values, values, value_offsets, field_offsets, weight);
  launch<kSgd>(s, weight, nullptr, nullptr, Hyper{lr, 0, 0, 0, 0, 0, 0, nullptr});
}

void embedding_update_rowwise_adagrad(const at::Tensor& grad_values, const at::Tensor& values,
                                      const at::Tensor& value_offsets, const at::Tensor& field_offsets,
                                      const at::Tensor& weight, const at::Tensor& state_sum, double lr, double eps) {
  const char* op = "embedding_update_rowwise_adagrad";
  check_update(grad_values, values, value_offsets, field_offsets, weight);
  check_state(op, "state_sum", state_sum, weight, /*per_element=*/false);
  const c10::cuda::CUDAGuard guard(weight.device());
  const Sorted s = prepare(op, grad_values, values, value_offsets, field_offsets, weight);
  launch<kAdagrad>(s, weight, &state_sum, nullptr, Hyper{lr, eps, 0, 0, 0, 0, 0, nullptr});
}

void embedding_update_adam(const at::Tensor& grad_values, const at::Tensor& values, const at::Tensor& value_offsets,
                           const at::Tensor& field_offsets, const at::Tensor& weight, const at::Tensor& exp_avg,
                           const at::Tensor& exp_avg_sq, const at::Tensor& step, double lr, double beta1,
                           double beta2, double eps) {
  const char* op = "embedding_update_adam";
  check_update(grad_values, values, value_offsets, field_offsets, weight);
  check_state(op, "exp_avg", exp_avg, weight, /*per_element=*/true);
  check_state(op, "exp_avg_sq", exp_avg_sq, weight, /*per_element=*/true);
  check_step(op, step, weight);
  const c10::cuda::CUDAGuard guard(weight.device());
  const Sorted s = prepare(op, grad_values, values, value_offsets, field_offsets, weight);
  step.add_(1);  // one counter for the table, as torch.optim.SparseAdam
  // 1 - beta in double first: 1 - float(0.999) is off by 1e-5 relative
  Hyper hp{lr, eps, 1.0 - beta1, 1.0 - beta2, beta1, beta2, 0, nullptr};
  if (step.device().is_cpu()) {
    const double t = static_cast<double>(*step.data_ptr<int64_t>());
    hp.host_step_size = lr * std::sqrt(1 - std::pow(beta2, t)) / (1 - std::pow(beta1, t));
  } else {
    hp.step_ptr = step.data_ptr<int64_t>();
  }
  launch<kAdam>(s, weight, &exp_avg, &exp_avg_sq, hp);
}

}  // namespace pimm_fast::cuda
