// Embedding lookup + concat on the GPU: one warp per (sample, field) row, its lanes over the D columns
// (one division per row, none per element); the dense backward scatters with atomics, or with
// index_add_ (deterministic) under torch.use_deterministic_algorithms.
//
// Field sizes and the offsets' validity are computed on the device; ids are checked there too and a bad
// one recorded in a flag, never used for an access. The host reads the flags once per call (the one
// synchronisation: errors must raise).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "../checks.h"
#include "../ops.h"
#include "common.cuh"

namespace pimm_fast::cuda {
namespace {

enum Slot { kBadId = 0, kBadOffsets = 1, kNumSlots = 2 };

// Row (b, f) = bf: its table row, or -1 (flagged) when the id is outside field f or the offsets are invalid.
template <typename index_t>
__device__ __forceinline__ int64_t table_row(const index_t* ids, const int64_t* off, int64_t bf, int64_t F,
                                             int64_t num_rows, unsigned long long* flags) {
  const int64_t f = bf % F;
  const int64_t id = static_cast<int64_t>(ids[bf]);
  const int64_t size = field_size(off, f, F, num_rows);
  if (bf < F && (off[0] != 0 || size < 0)) flag_error(flags + kBadOffsets, f);  // checked once per field
  if (id < 0 || id >= size || off[f] < 0 || off[f] + size > num_rows) {
    flag_error(flags + kBadId, bf);
    return -1;
  }
  return off[f] + id;
}

template <typename index_t, typename scalar_t>
__global__ void gather_kernel(const index_t* __restrict__ ids, const scalar_t* __restrict__ weight,
                              const int64_t* __restrict__ off, scalar_t* __restrict__ out, int64_t BF, int64_t F,
                              int D, int64_t num_rows, unsigned long long* flags) {
  const int lane = threadIdx.x % 32;
  for (int64_t bf = global_warp(); bf < BF; bf += grid_warps()) {
    const int64_t row = table_row(ids, off, bf, F, num_rows, flags);
    scalar_t* dst = out + bf * D;
    if (row < 0) {
      for (int j = lane; j < D; j += 32) dst[j] = scalar_t(0);
    } else {
      const scalar_t* src = weight + row * D;
      for (int j = lane; j < D; j += 32) dst[j] = src[j];
    }
  }
}

template <typename index_t, typename scalar_t, typename acc_t>
__global__ void scatter_add_kernel(const scalar_t* __restrict__ grad, const index_t* __restrict__ ids,
                                   const int64_t* __restrict__ off, acc_t* __restrict__ acc, int64_t BF, int64_t F,
                                   int D, int64_t num_rows, unsigned long long* flags) {
  const int lane = threadIdx.x % 32;
  for (int64_t bf = global_warp(); bf < BF; bf += grid_warps()) {
    const int64_t row = table_row(ids, off, bf, F, num_rows, flags);
    if (row < 0) continue;  // flagged: never written
    const scalar_t* src = grad + bf * D;
    acc_t* dst = acc + row * D;
    for (int j = lane; j < D; j += 32) atomicAdd(dst + j, static_cast<acc_t>(src[j]));
  }
}

template <typename index_t>
__global__ void rows_kernel(const index_t* __restrict__ ids, const int64_t* __restrict__ off,
                            int64_t* __restrict__ rows, int64_t BF, int64_t F, int64_t num_rows,
                            unsigned long long* flags) {
  for (int64_t bf = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; bf < BF;
       bf += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = table_row(ids, off, bf, F, num_rows, flags);
    rows[bf] = row < 0 ? 0 : row;
  }
}

// Reads the flags (the op's one sync) and raises for a bad id or bad offsets.
void raise_errors(const char* op, const at::Tensor& flags, const at::Tensor& ids, const at::Tensor& field_offsets,
                  int64_t num_rows) {
  const std::vector<unsigned long long> e = read_flags(flags);
  if (e[kBadOffsets] != kNoError) {
    TORCH_CHECK_VALUE(false, op, ": field_offsets must start at 0, be non-decreasing and <= num_rows=", num_rows,
                      ", got ", field_offsets.cpu());
  }
  if (e[kBadId] != kNoError) {  // error path: a few more host reads to name the id
    const int64_t F = ids.size(1), b = static_cast<int64_t>(e[kBadId]) / F, f = static_cast<int64_t>(e[kBadId]) % F;
    const at::Tensor off = field_offsets.cpu();
    const int64_t* o = off.data_ptr<int64_t>();
    TORCH_CHECK_INDEX(false, op, ": id ", ids[b][f].item<int64_t>(), " out of range for field ", f, " (size ",
                      (f + 1 < F ? o[f + 1] : num_rows) - o[f], ") at sample ", b);
  }
}

}  // namespace

at::Tensor embedding_concat(const at::Tensor& indices, const at::Tensor& weight, const at::Tensor& field_offsets) {
  check_embedding_concat(indices, weight, field_offsets);
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor ids = indices.contiguous(), table = weight.contiguous(), off = field_offsets.contiguous();
  const int64_t B = ids.size(0), F = ids.size(1), D = table.size(1);
  TORCH_CHECK_VALUE(D < (int64_t{1} << 31), "embedding_concat: the embedding width must be < 2^31, got ", D);
  at::Tensor out = at::empty({B, F * D}, table.options());
  if (out.numel() == 0) return out;
  const at::Tensor flags = error_flags(kNumSlots, table.device());
  AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "embedding_concat_cuda", [&] {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, table.scalar_type(), "embedding_concat_cuda", [&] {
      gather_kernel<index_t, scalar_t><<<warp_grid(B * F), kThreads, 0, stream()>>>(
          ids.data_ptr<index_t>(), table.data_ptr<scalar_t>(), off.data_ptr<int64_t>(), out.data_ptr<scalar_t>(),
          B * F, F, static_cast<int>(D), table.size(0), flag_ptr(flags));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  raise_errors("embedding_concat", flags, ids, field_offsets, table.size(0));
  return out;
}

at::Tensor embedding_concat_backward(const at::Tensor& grad_out, const at::Tensor& indices,
                                     const at::Tensor& field_offsets, int64_t num_rows) {
  check_embedding_concat_backward(grad_out, indices);
  check_same_device("embedding_concat_backward", grad_out, "grad_out", indices, "indices");
  check_same_device("embedding_concat_backward", grad_out, "grad_out", field_offsets, "field_offsets");
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const at::Tensor ids = indices.contiguous(), grad = grad_out.contiguous(), off = field_offsets.contiguous();
  const int64_t B = ids.size(0), F = ids.size(1), D = F ? grad.size(1) / F : 0;
  const at::ScalarType acc_type = compute_type(grad.scalar_type());
  at::Tensor acc = at::zeros({num_rows, D}, grad.options().dtype(acc_type));
  if (grad.numel() == 0) return acc.to(grad.scalar_type());
  const at::Tensor flags = error_flags(kNumSlots, grad.device());
  // A direct call (not through autograd, whose forward checked them) may carry any id: every id is
  // checked on the device and a bad one is never written.
  if (at::globalContext().deterministicAlgorithms()) {
    at::Tensor rows = at::empty({B * F}, off.options());
    AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "embedding_concat_rows_cuda", [&] {
      rows_kernel<index_t><<<std::min<int64_t>(blocks_for(B * F), 65535), kThreads, 0, stream()>>>(
          ids.data_ptr<index_t>(), off.data_ptr<int64_t>(), rows.data_ptr<int64_t>(), B * F, F, num_rows,
          flag_ptr(flags));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    raise_errors("embedding_concat_backward", flags, ids, field_offsets, num_rows);
    acc.index_add_(0, rows, grad.view({B * F, D}).to(acc_type));  // deterministic in this mode
    return acc_type == grad.scalar_type() ? acc : acc.to(grad.scalar_type());
  }
  AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "embedding_concat_backward_cuda", [&] {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "embedding_concat_backward_cuda",
                                    [&] {
      using acc_t = at::opmath_type<scalar_t>;
      scatter_add_kernel<index_t, scalar_t, acc_t><<<warp_grid(B * F), kThreads, 0, stream()>>>(
          grad.data_ptr<scalar_t>(), ids.data_ptr<index_t>(), off.data_ptr<int64_t>(), acc.data_ptr<acc_t>(), B * F,
          F, static_cast<int>(D), num_rows, flag_ptr(flags));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  raise_errors("embedding_concat_backward", flags, ids, field_offsets, num_rows);
  return acc_type == grad.scalar_type() ? acc : acc.to(grad.scalar_type());
}

}  // namespace pimm_fast::cuda
