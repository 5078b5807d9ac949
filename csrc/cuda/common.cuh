// Helpers shared by the CUDA kernels. Narrow includes on purpose: ATen/cuda/CUDAContext.h pulls in
// cusparse.h, which the system toolkit here lacks (ARCHITECTURE.md section 6).
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
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

// Error flags on the device, all bits set (kNoError) until a kernel records an offending index.
inline at::Tensor error_flags(int64_t slots, const at::Device& device) {
  return at::full({slots}, static_cast<int64_t>(-1), at::TensorOptions().dtype(at::kLong).device(device));
}

inline unsigned long long* flag_ptr(const at::Tensor& flags, int64_t slot = 0) {
  return reinterpret_cast<unsigned long long*>(flags.data_ptr<int64_t>()) + slot;
}

// The one host read of an op: all its flags in one copy.
inline std::vector<unsigned long long> read_flags(const at::Tensor& flags) {
  const at::Tensor host = flags.cpu();
  const auto* p = reinterpret_cast<const unsigned long long*>(host.data_ptr<int64_t>());
  return std::vector<unsigned long long>(p, p + host.numel());
}

// Field f owns rows [off[f], off[f+1]) (the last one up to num_rows); computed on the device.
__device__ __forceinline__ int64_t field_size(const int64_t* off, int64_t f, int64_t F, int64_t num_rows) {
  return (f + 1 < F ? off[f + 1] : num_rows) - off[f];
}

// Rows with one warp each: the warp's global index and the number of warps in the grid.
constexpr int kWarpsPerBlock = kThreads / 32;
__device__ __forceinline__ int64_t global_warp() {
  return blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / 32;
}
__device__ __forceinline__ int64_t grid_warps() { return static_cast<int64_t>(gridDim.x) * kWarpsPerBlock; }
inline int64_t warp_grid(int64_t rows) { return std::min<int64_t>(blocks_for(rows, kWarpsPerBlock), 1 << 20); }

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
