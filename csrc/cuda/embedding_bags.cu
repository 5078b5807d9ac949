// Multi-hot fields on the GPU, composed of ATen ops: gather the rows of every value, scale by the
// pooling factor of its bag, sum per bag with index_add (see csrc/cpu/embedding_bags.cpp).
//
// Everything that depends on data (each value's bag and field, the field sizes, the validity of the
// offsets and ids) is computed on the device with sizes known on the host, and the host reads one
// combined flag per call: the op's only synchronisation. index_add_ is deterministic under
// torch.use_deterministic_algorithms.
#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/stack.h>
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
  const int64_t F = field_offsets.numel(), B = F ? (bag_offsets.numel() - 1) / F : 0, n = values.numel();
  const int64_t num_bags = bag_offsets.numel() - 1;
  const at::Tensor bo = bag_offsets.contiguous(), off = field_offsets.contiguous();
  const at::Tensor lengths = bo.slice(0, 1) - bo.slice(0, 0, -1);
  // bag of each value: the last bag starting at or before it (in range whatever the offsets hold)
  const at::Tensor positions = at::arange(n, bo.options());
  const at::Tensor bag =
      at::searchsorted(bo.slice(0, 1), positions, /*out_int32=*/false, /*right=*/true).clamp_max(std::max<int64_t>(num_bags - 1, 0));
  const at::Tensor field = bag.div(std::max<int64_t>(B, 1), "floor").clamp_max(std::max<int64_t>(F - 1, 0));
  const at::Tensor ends = at::cat({off.slice(0, 1), at::full({1}, num_rows, off.options())});
  const at::Tensor sizes = ends - off;
  const at::Tensor ids = values.to(at::kLong);
  at::Tensor ok_offsets = (bo[0] == 0) & (bo[-1] == n) & (lengths >= 0).all();
  at::Tensor ok_fields = F ? (off[0] == 0) & (sizes >= 0).all() : at::ones({}, bo.options().dtype(at::kBool));
  at::Tensor bad = n ? (ids < 0) | (ids >= sizes.index_select(0, field)) : at::zeros({1}, bo.options().dtype(at::kBool));
  const at::Tensor checks = at::stack({ok_offsets, ok_fields, bad.any()}).cpu();  // the one sync
  const bool* c = checks.data_ptr<bool>();
  TORCH_CHECK_VALUE(c[0], op, ": bag_offsets must run from 0 to the number of values (", n, ") without decreasing");
  TORCH_CHECK_VALUE(c[1], op, ": field_offsets must start at 0, be non-decreasing and <= num_rows=", num_rows,
                    ", got ", field_offsets.cpu());
  if (c[2]) {  // error path: a few more host reads to name the id
    const int64_t i = bad.nonzero()[0][0].item<int64_t>();
    const int64_t f = field[i].item<int64_t>();
    TORCH_CHECK_INDEX(false, op, ": id ", ids[i].item<int64_t>(), " out of range for field ", f, " (size ",
                      sizes[f].item<int64_t>(), ") in the bag of sample ", bag[i].item<int64_t>() % B);
  }
  at::Tensor is_mean = at::empty({F}, at::TensorOptions().dtype(at::kBool));
  for (int64_t f = 0; f < F; ++f) is_mean.data_ptr<bool>()[f] = pooling[f] == 1;
  is_mean = is_mean.to(values.device()).repeat_interleave(B);
  const at::Tensor per_bag =
      at::where(is_mean, 1.0 / lengths.clamp_min(1).to(ct), at::ones({1}, lengths.options().dtype(ct)));
  return {F, B, bag, ids + off.index_select(0, field), per_bag.index_select(0, bag)};
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
  const int64_t D = check_embedding_bags_backward(grad_out, field_offsets, bag_offsets), F = field_offsets.numel();
  check_values("embedding_bags_concat_backward", values);
  check_same_device("embedding_bags_concat_backward", grad_out, "grad_out", values, "values");
  check_same_device("embedding_bags_concat_backward", grad_out, "grad_out", field_offsets, "field_offsets");
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
