// Kernel entry points, one set per device. Registered in register.cpp.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace pimm_fast {

using PimGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                            at::Tensor, at::Tensor>;

#define PIMM_FAST_DECLARE_KERNELS                                                                               \
  at::Tensor embedding_concat(const at::Tensor& indices, const at::Tensor& weight,                              \
                              const at::Tensor& field_offsets);                                                 \
  at::Tensor embedding_concat_backward(const at::Tensor& grad_out, const at::Tensor& indices,                   \
                                       const at::Tensor& field_offsets, int64_t num_rows);                      \
  std::tuple<at::Tensor, at::Tensor> pim_attention(                                                             \
      const at::Tensor& v, const at::Tensor& h_prev, const std::optional<at::Tensor>& label_prev,               \
      const at::Tensor& pred_prev, const at::Tensor& w_prior, const at::Tensor& w_q, const at::Tensor& w_k,     \
      const at::Tensor& w_v, const at::Tensor& p, const at::Tensor& seed, const std::optional<at::Tensor>& b_q, \
      const std::optional<at::Tensor>& b_k, const std::optional<at::Tensor>& b_v);                              \
  PimGrads pim_attention_backward(                                                                              \
      const at::Tensor& grad_u, const at::Tensor& v, const at::Tensor& h_prev,                                  \
      const std::optional<at::Tensor>& label_prev, const at::Tensor& pred_prev, const at::Tensor& w_prior,      \
      const at::Tensor& w_q, const at::Tensor& w_k, const at::Tensor& w_v, const at::Tensor& select,            \
      const std::optional<at::Tensor>& b_q, const std::optional<at::Tensor>& b_k,                               \
      const std::optional<at::Tensor>& b_v);                                                                    \
  at::Tensor embedding_bags_concat(const at::Tensor& values, const at::Tensor& bag_offsets, const at::Tensor& weight, \
                                   const at::Tensor& field_offsets, at::IntArrayRef pooling);                    \
  at::Tensor embedding_bags_concat_backward(const at::Tensor& grad_out, const at::Tensor& values,               \
                                            const at::Tensor& bag_offsets, const at::Tensor& field_offsets,     \
                                            at::IntArrayRef pooling, int64_t num_rows);                         \
  void embedding_update_sgd(const at::Tensor& grad_values, const at::Tensor& values,                            \
                            const at::Tensor& value_offsets, const at::Tensor& field_offsets,                   \
                            const at::Tensor& weight, double lr);                                               \
  void embedding_update_rowwise_adagrad(const at::Tensor& grad_values, const at::Tensor& values,                \
                                        const at::Tensor& value_offsets, const at::Tensor& field_offsets,       \
                                        const at::Tensor& weight, const at::Tensor& state_sum, double lr,       \
                                        double eps);                                                            \
  void embedding_update_adam(const at::Tensor& grad_values, const at::Tensor& values,                           \
                             const at::Tensor& value_offsets, const at::Tensor& field_offsets,                  \
                             const at::Tensor& weight, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq, \
                             const at::Tensor& step, double lr, double beta1, double beta2, double eps);

namespace cpu {
PIMM_FAST_DECLARE_KERNELS
}  // namespace cpu

namespace cuda {
PIMM_FAST_DECLARE_KERNELS
}  // namespace cuda

#undef PIMM_FAST_DECLARE_KERNELS

// Labels [B, T]: 0/1 and, with cascade, y_t <= y_{t-1}; returns a float32 copy. ATen ops only: one
// kernel for every device (csrc/cpu/validate_labels.cpp).
at::Tensor validate_labels(const at::Tensor& labels, int64_t num_tasks, bool cascade);

}  // namespace pimm_fast
