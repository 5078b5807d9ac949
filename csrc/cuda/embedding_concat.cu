// Embedding lookup + concat on the GPU: one thread per output element; dense backward with atomics.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>

#include "../checks.h"
#include "../ops.h"
#include "common.cuh"

namespace pimm_fast::cuda {
namespace {

template <typename index_t, typename scalar_t>
__global__ void gather_kernel(const index_t* __restrict__ ids, const scalar_t* __restrict__ weight,
                              const int64_t* __restrict__ offsets, const int64_t* __restrict__ sizes,
                              scalar_t* __restrict__ out, int64_t B, int64_t F, int64_t D,
                              unsigned long long* bad) {
  const int64_t n = B * F * D;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t bf = e / D, j = e % D, f = bf % F;
    const int64_t id = static_cast<int64_t>(ids[bf]);
    if (id < 0 || id >= sizes[f]) {
      flag_error(bad, bf);
      out[e] = scalar_t(0);
    } else {
      out[e] = weight[(offsets[f] + id) * D + j];
    }
  }
}

template <typename index_t, typename scalar_t, typename acc_t>
__global__ void scatter_add_kernel(const scalar_t* __restrict__ grad, const index_t* __restrict__ ids,
                                   const int64_t* __restrict__ offsets, acc_t* __restrict__ acc, int64_t B,
                                   int64_t F, int64_t D) {
  const int64_t n = B * F * D;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t bf = e / D, j = e % D, f = bf % F;
    atomicAdd(acc + (offsets[f] + static_cast<int64_t>(ids[bf])) * D + j, static_cast<acc_t>(grad[e]));
  }
}

inline int64_t grid_for(int64_t n) { return std::min<int64_t>(blocks_for(n), 65535); }

}  // namespace

at::Tensor embedding_concat(const at::Tensor& indices, const at::Tensor& weight, const at::Tensor& field_offsets) {
  check_embedding_concat(indices, weight, field_offsets);
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor ids = indices.contiguous(), table = weight.contiguous(), off = field_offsets.contiguous();
  const int64_t B = ids.size(0), F = ids.size(1), D = table.size(1);
  const std::vector<int64_t> host_sizes = field_sizes(field_offsets, table.size(0));
  const at::Tensor sizes = to_device(host_sizes, off.device());
  at::Tensor out = at::empty({B, F * D}, table.options());
  at::Tensor bad = at::full({1}, static_cast<int64_t>(-1), off.options());  // all bits set = kNoError
  if (out.numel() == 0) return out;
  AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "embedding_concat_cuda", [&] {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, table.scalar_type(), "embedding_concat_cuda", [&] {
      gather_kernel<index_t, scalar_t><<<grid_for(out.numel()), kThreads, 0, stream()>>>(
          ids.data_ptr<index_t>(), table.data_ptr<scalar_t>(), off.data_ptr<int64_t>(), sizes.data_ptr<int64_t>(),
          out.data_ptr<scalar_t>(), B, F, D, reinterpret_cast<unsigned long long*>(bad.data_ptr<int64_t>()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  const auto first_bad = static_cast<unsigned long long>(bad.item<int64_t>());  // one sync: errors must raise
  if (first_bad != kNoError) {
    const int64_t b = first_bad / F, f = first_bad % F;
    TORCH_CHECK_INDEX(false, "embedding_concat: id ", ids[b][f].item<int64_t>(), " out of range for field ", f,
                      " (size ", host_sizes[f], ") at sample ", b);
  }
  return out;
}

at::Tensor embedding_concat_backward(const at::Tensor& grad_out, const at::Tensor& indices,
                                     const at::Tensor& field_offsets, int64_t num_rows) {
  check_embedding_concat_backward(grad_out, indices);
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const at::Tensor ids = indices.contiguous(), grad = grad_out.contiguous(), off = field_offsets.contiguous();
  const int64_t B = ids.size(0), F = ids.size(1), D = F ? grad.size(1) / F : 0;
  const at::ScalarType acc_type = compute_type(grad.scalar_type());
  at::Tensor acc = at::zeros({num_rows, D}, grad.options().dtype(acc_type));
  if (grad.numel() == 0) return acc.to(grad.scalar_type());
  AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "embedding_concat_backward_cuda", [&] {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "embedding_concat_backward_cuda",
                                    [&] {
      using acc_t = at::opmath_type<scalar_t>;
      scatter_add_kernel<index_t, scalar_t, acc_t><<<grid_for(grad.numel()), kThreads, 0, stream()>>>(
          grad.data_ptr<scalar_t>(), ids.data_ptr<index_t>(), off.data_ptr<int64_t>(), acc.data_ptr<acc_t>(), B, F,
          D);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return acc_type == grad.scalar_type() ? acc : acc.to(grad.scalar_type());
}

}  // namespace pimm_fast::cuda
