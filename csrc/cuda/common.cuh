// Helpers shared by the CUDA kernels. Narrow includes on purpose: ATen/cuda/CUDAContext.h pulls in
// cusparse.h, which the system toolkit here lacks (ARCHITECTURE.md section 6).
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace pimm_fast::cuda {

constexpr int kThreads = 256;
constexpr unsigned long long kNoError = std::numeric_limits<unsigned long long>::max();

inline int64_t blocks_for(int64_t n, int64_t per_block = kThreads) {
  return n == 0 ? 1 : (n + per_block - 1) / per_block;
}

// A host vector as an int64 tensor on `device` (field sizes, counts: a few entries, one copy).
inline at::Tensor to_device(const std::vector<int64_t>& host, const at::Device& device) {
  at::Tensor t = at::empty({static_cast<int64_t>(host.size())}, at::TensorOptions().dtype(at::kLong));
  std::copy(host.begin(), host.end(), t.data_ptr<int64_t>());
  return t.to(device);
}

inline cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Kernels cannot raise: they record the first offending flat index with atomicMin in a device flag
// (kNoError when none), never touch memory out of bounds, and the host reads the flags once.
__device__ __forceinline__ void flag_error(unsigned long long* flag, int64_t index) {
  atomicMin(flag, static_cast<unsigned long long>(index));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

template <typename T>
__device__ __forceinline__ T sigmoid(T x) {
  return T(1) / (T(1) + exp(-x));
}

}  // namespace pimm_fast::cuda
