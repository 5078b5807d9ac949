// Fused optimizer steps for the embedding table on the GPU: the touched rows are found with a sort
// (at::_unique2), their gradients summed with index_add, and only those rows (and their optimizer
// state) are read and written. Composed of ATen ops, so it runs on the current stream without host
// synchronisation except for the id check (errors must raise, not corrupt the table).
#include <ATen/ops/_unique2.h>
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

Touched touched_rows(const char* op, const at::Tensor& grad_out, const at::Tensor& indices,
                     const at::Tensor& field_offsets, const at::Tensor& weight) {
  check_embedding_concat(indices, weight, field_offsets);
  TORCH_CHECK_VALUE(weight.is_contiguous(), op, ": weight must be contiguous (it is updated in place)");
  const int64_t B = indices.size(0), F = indices.size(1), D = weight.size(1);
  TORCH_CHECK_VALUE(grad_out.dim() == 2 && grad_out.size(0) == B && grad_out.size(1) == F * D, op,
                    ": grad_out must be [B, F*D] = [", B, ", ", F * D, "], got ", grad_out.sizes());
  const std::vector<int64_t> host_sizes = field_sizes(field_offsets, weight.size(0));
  at::Tensor sizes_cpu = at::empty({F}, field_offsets.options().device(at::kCPU));
  std::copy(host_sizes.begin(), host_sizes.end(), sizes_cpu.data_ptr<int64_t>());
  const at::Tensor ids = indices.to(at::kLong);
  const at::Tensor bad = (ids < 0) | (ids >= sizes_cpu.to(ids.device()));
  if (bad.any().item<bool>()) {  // one sync; nothing has been written yet
    const at::Tensor where = bad.nonzero()[0].cpu();
    const int64_t b = where[0].item<int64_t>(), f = where[1].item<int64_t>();
    TORCH_CHECK_INDEX(false, op, ": id ", ids[b][f].item<int64_t>(), " out of range for field ", f, " (size ",
                      host_sizes[f], ") at sample ", b);
  }
  const at::Tensor rows = (ids + field_offsets).reshape({-1});
  auto [unique, inverse, counts] = at::_unique2(rows, /*sorted=*/true, /*return_inverse=*/true,
                                                /*return_counts=*/false);
  const at::ScalarType ct = compute_type(weight.scalar_type());
  at::Tensor grad = at::zeros({unique.size(0), D}, grad_out.options().dtype(ct));
  grad.index_add_(0, inverse, grad_out.reshape({B * F, D}).to(ct));
  return {unique, grad};
}

void write_rows(const at::Tensor& weight, const at::Tensor& rows, const at::Tensor& values) {
  weight.index_copy_(0, rows, values.to(weight.scalar_type()));
}

}  // namespace

void embedding_update_sgd(const at::Tensor& grad_out, const at::Tensor& indices, const at::Tensor& field_offsets,
                          const at::Tensor& weight, double lr) {
  const c10::cuda::CUDAGuard guard(weight.device());
  const auto [rows, g] = touched_rows("embedding_update_sgd", grad_out, indices, field_offsets, weight);
  write_rows(weight, rows, weight.index_select(0, rows).to(g.scalar_type()) - g * lr);
}

void embedding_update_rowwise_adagrad(const at::Tensor& grad_out, const at::Tensor& indices,
                                      const at::Tensor& field_offsets, const at::Tensor& weight,
                                      const at::Tensor& state_sum, double lr, double eps) {
  const c10::cuda::CUDAGuard guard(weight.device());
  const auto [rows, g] = touched_rows("embedding_update_rowwise_adagrad", grad_out, indices, field_offsets, weight);
  const at::Tensor acc = state_sum.index_select(0, rows) + (g * g).mean(1);
  state_sum.index_copy_(0, rows, acc);
  write_rows(weight, rows, weight.index_select(0, rows).to(g.scalar_type()) - g * (lr / (acc.sqrt() + eps)).unsqueeze(1));
}

void embedding_update_adam(const at::Tensor& grad_out, const at::Tensor& indices, const at::Tensor& field_offsets,
                           const at::Tensor& weight, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                           const at::Tensor& step, double lr, double beta1, double beta2, double eps) {
  const c10::cuda::CUDAGuard guard(weight.device());
  const auto [rows, g] = touched_rows("embedding_update_adam", grad_out, indices, field_offsets, weight);
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
