// Multi-hot fields on the GPU, composed of ATen ops: gather the rows of every value, scale by the
// pooling factor of its bag, sum per bag with index_add (see csrc/cpu/embedding_bags.cpp).
#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/repeat_interleave.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>

#include "../checks.h"
#include "../ops.h"
#include "common.cuh"

namespace pimm_fast::cuda {
namespace {

struct Bags {
  int64_t F, B;
  at::Tensor bag_of_value, rows, scale;  // per value: its bag, its table row, its pooling factor
};

Bags bags_of(const char* op, const at::Tensor& values, const at::Tensor& bag_offsets, const at::Tensor& field_offsets,
             at::IntArrayRef pooling, int64_t num_rows, at::ScalarType ct) {
  const int64_t F = field_offsets.numel(), B = F ? (bag_offsets.numel() - 1) / F : 0;
  const at::Tensor lengths = bag_offsets.slice(0, 1) - bag_offsets.slice(0, 0, -1);
  TORCH_CHECK_VALUE(bag_offsets[0].item<int64_t>() == 0 && bag_offsets[-1].item<int64_t>() == values.numel() &&
                        (lengths >= 0).all().item<bool>(),
                    op, ": bag_offsets must run from 0 to the number of values (", values.numel(),
                    ") without decreasing");
  const at::Tensor bag = at::arange(F * B, lengths.options()).repeat_interleave(lengths, std::nullopt, values.numel());
  const at::Tensor field = bag.div(std::max<int64_t>(B, 1), "floor");
  const std::vector<int64_t> host_sizes = field_sizes(field_offsets, num_rows);
  const at::Tensor sizes = to_device(host_sizes, values.device());
  const at::Tensor ids = values.to(at::kLong);
  const at::Tensor bad = (ids < 0) | (ids >= sizes.index_select(0, field));
  if (bad.any().item<bool>()) {  // one sync: ids must raise, never read out of bounds
    const int64_t i = bad.nonzero()[0][0].item<int64_t>();
    const int64_t f = field[i].item<int64_t>();
    TORCH_CHECK_INDEX(false, op, ": id ", ids[i].item<int64_t>(), " out of range for field ", f, " (size ",
                      host_sizes[f], ") in the bag of sample ", bag[i].item<int64_t>() % B);
  }
  const at::Tensor is_mean =
      to_device(std::vector<int64_t>(pooling.begin(), pooling.end()), values.device()).repeat_interleave(B) == 1;
  const at::Tensor per_bag =
      at::where(is_mean, 1.0 / lengths.clamp_min(1).to(ct), at::ones({1}, lengths.options().dtype(ct)));
  return {F, B, bag, ids + field_offsets.index_select(0, field), per_bag.index_select(0, bag)};
}

}  // namespace

at::Tensor embedding_bags_concat(const at::Tensor& values, const at::Tensor& bag_offsets, const at::Tensor& weight,
                                 const at::Tensor& field_offsets, at::IntArrayRef pooling) {
  check_embedding_bags(values, bag_offsets, weight, field_offsets, pooling);
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::ScalarType ct = compute_type(weight.scalar_type());
  const Bags bags = bags_of("embedding_bags_concat", values, bag_offsets, field_offsets, pooling, weight.size(0), ct);
  const int64_t D = weight.size(1);
  at::Tensor pooled = at::zeros({bags.F * bags.B, D}, weight.options().dtype(ct));
  pooled.index_add_(0, bags.bag_of_value, weight.index_select(0, bags.rows).to(ct) * bags.scale.unsqueeze(1));
  return pooled.view({bags.F, bags.B, D}).transpose(0, 1).reshape({bags.B, bags.F * D}).to(weight.scalar_type());
}

at::Tensor embedding_bags_concat_backward(const at::Tensor& grad_out, const at::Tensor& values,
                                          const at::Tensor& bag_offsets, const at::Tensor& field_offsets,
                                          at::IntArrayRef pooling, int64_t num_rows) {
  const int64_t D = check_embedding_bags_backward(grad_out, field_offsets), F = field_offsets.numel();
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const at::ScalarType ct = compute_type(grad_out.scalar_type());
  const Bags bags =
      bags_of("embedding_bags_concat_backward", values, bag_offsets, field_offsets, pooling, num_rows, ct);
  const at::Tensor per_bag = grad_out.reshape({bags.B, F, D}).transpose(0, 1).reshape({F * bags.B, D}).to(ct);
  at::Tensor acc = at::zeros({num_rows, D}, grad_out.options().dtype(ct));
  acc.index_add_(0, bags.rows, per_bag.index_select(0, bags.bag_of_value) * bags.scale.unsqueeze(1));
  return acc.to(grad_out.scalar_type());
}

}  // namespace pimm_fast::cuda
