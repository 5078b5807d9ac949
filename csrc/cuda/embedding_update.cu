// Fused optimizer steps for the embedding table on the GPU: the touched rows are found with a sort
// (at::_unique2), their gradients summed with index_add, and only those rows (and their optimizer
// state) are read and written. Composed of ATen ops, so it runs on the current stream without host
// synchronisation except for the id check (errors must raise, not corrupt the table).
#include <ATen/ops/_unique2.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/repeat_interleave.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/sqrt.h>
#include <ATen/ops/zeros.h>

#include <ATen/TensorOperators.h>

#include "../checks.h"
#include "../ops.h"
#include "common.cuh"

namespace pimm_fast::cuda {
namespace {

struct Touched {
  at::Tensor rows;  // unique rows, sorted
  at::Tensor grad;  // their summed gradient [U, D], compute type
};

// Per-value field index and row, with every id checked (one host sync; nothing is written before).
at::Tensor rows_of_values(const char* op, const at::Tensor& values, const at::Tensor& value_offsets,
                          const at::Tensor& field_offsets, int64_t num_rows) {
  const int64_t F = field_offsets.numel();
  const std::vector<int64_t> vo = host_value_offsets(value_offsets, values.numel());
  const std::vector<int64_t> host_sizes = field_sizes(field_offsets, num_rows);
  std::vector<int64_t> host_counts(F);
  for (int64_t f = 0; f < F; ++f) host_counts[f] = vo[f + 1] - vo[f];
  const at::Tensor counts = to_device(host_counts, values.device());
  const at::Tensor field = at::arange(F, counts.options()).repeat_interleave(counts, std::nullopt, values.numel());
  const at::Tensor ids = values.to(at::kLong);
  const at::Tensor bad = (ids < 0) | (ids >= to_device(host_sizes, values.device()).index_select(0, field));
  if (bad.any().item<bool>()) {
    const int64_t i = bad.nonzero()[0][0].item<int64_t>();
    const int64_t f = field[i].item<int64_t>();
    TORCH_CHECK_INDEX(false, op, ": id ", ids[i].item<int64_t>(), " out of range for field ", f, " (size ",
                      host_sizes[f], ") at position ", i - vo[f], " of the field's values");
  }
  return ids + field_offsets.index_select(0, field);
}

Touched touched_rows(const char* op, const at::Tensor& grad_values, const at::Tensor& values,
                     const at::Tensor& value_offsets, const at::Tensor& field_offsets, const at::Tensor& weight) {
  check_update(grad_values, values, value_offsets, field_offsets, weight);
  const at::Tensor rows = rows_of_values(op, values, value_offsets, field_offsets, weight.size(0));
  auto [unique, inverse, counts] = at::_unique2(rows, /*sorted=*/true, /*return_inverse=*/true,
                                                /*return_counts=*/false);
  const at::ScalarType ct = compute_type(weight.scalar_type());
  at::Tensor grad = at::zeros({unique.size(0), weight.size(1)}, grad_values.options().dtype(ct));
  grad.index_add_(0, inverse, grad_values.to(ct));
  return {unique, grad};
}

void write_rows(const at::Tensor& weight, const at::Tensor& rows, const at::Tensor& values) {
  weight.index_copy_(0, rows, values.to(weight.scalar_type()));
}

}  // namespace

void embedding_update_sgd(const at::Tensor& grad_values, const at::Tensor& values, const at::Tensor& value_offsets,
                          const at::Tensor& field_offsets, const at::Tensor& weight, double lr) {
  const c10::cuda::CUDAGuard guard(weight.device());
  const auto [rows, g] =
      touched_rows("embedding_update_sgd", grad_values, values, value_offsets, field_offsets, weight);
  write_rows(weight, rows, weight.index_select(0, rows).to(g.scalar_type()) - g * lr);
}

void embedding_update_rowwise_adagrad(const at::Tensor& grad_values, const at::Tensor& values,
                                      const at::Tensor& value_offsets, const at::Tensor& field_offsets,
                                      const at::Tensor& weight, const at::Tensor& state_sum, double lr, double eps) {
  const c10::cuda::CUDAGuard guard(weight.device());
  const auto [rows, g] = touched_rows("embedding_update_rowwise_adagrad", grad_values, values, value_offsets,
                                      field_offsets, weight);
  const at::Tensor acc = state_sum.index_select(0, rows) + (g * g).mean(1);
  state_sum.index_copy_(0, rows, acc);
  write_rows(weight, rows, weight.index_select(0, rows).to(g.scalar_type()) - g * (lr / (acc.sqrt() + eps)).unsqueeze(1));
}

void embedding_update_adam(const at::Tensor& grad_values, const at::Tensor& values, const at::Tensor& value_offsets,
                           const at::Tensor& field_offsets, const at::Tensor& weight, const at::Tensor& exp_avg,
                           const at::Tensor& exp_avg_sq, const at::Tensor& step, double lr, double beta1,
                           double beta2, double eps) {
  const c10::cuda::CUDAGuard guard(weight.device());
  const auto [rows, g] =
      touched_rows("embedding_update_adam", grad_values, values, value_offsets, field_offsets, weight);
  step.add_(1);
  const at::Tensor t = step.to(weight.device(), g.scalar_type());  // bias corrections stay on the device
  const at::Tensor step_size = lr * at::sqrt(1 - at::pow(beta2, t)) / (1 - at::pow(beta1, t));
  const at::Tensor m_old = exp_avg.index_select(0, rows), v_old = exp_avg_sq.index_select(0, rows);
  const at::Tensor m = m_old + (g - m_old) * (1 - beta1);
  const at::Tensor v = v_old + (g * g - v_old) * (1 - beta2);
  exp_avg.index_copy_(0, rows, m);
  exp_avg_sq.index_copy_(0, rows, v);
  write_rows(weight, rows, weight.index_select(0, rows).to(g.scalar_type()) - step_size * m / (v.sqrt() + eps));
}

}  // namespace pimm_fast::cuda
