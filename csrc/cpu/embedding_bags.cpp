// Multi-hot fields on the CPU: each (field, sample) bag of ids pooled by sum or mean into its slot of
// the concatenated output. Field-major layout: bag (f, b) = values[bag_offsets[f*B + b] : ...].
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <vector>

#include "../checks.h"
#include "../ops.h"

namespace pimm_fast::cpu {
namespace {

struct BagLayout {
  int64_t F, B, D;
  std::vector<int64_t> sizes, field_offsets;
  at::Tensor values, bag_offsets;  // contiguous
};

BagLayout layout_of(const at::Tensor& values, const at::Tensor& bag_offsets, const at::Tensor& field_offsets,
                    int64_t num_rows, int64_t D) {
  const int64_t F = field_offsets.numel();
  BagLayout layout{F, F ? (bag_offsets.numel() - 1) / F : 0, D, field_sizes(field_offsets, num_rows), {},
                   values.contiguous(), bag_offsets.contiguous()};
  const at::Tensor off = field_offsets.contiguous();
  layout.field_offsets.assign(off.data_ptr<int64_t>(), off.data_ptr<int64_t>() + F);
  const int64_t* bo = layout.bag_offsets.data_ptr<int64_t>();
  bool ok = bo[0] == 0 && bo[layout.bag_offsets.numel() - 1] == values.numel();
  for (int64_t k = 0; k + 1 < layout.bag_offsets.numel(); ++k) ok = ok && bo[k + 1] >= bo[k];
  TORCH_CHECK_VALUE(ok, "embedding_bags_concat: bag_offsets must run from 0 to the number of values (",
                    values.numel(), ") without decreasing");
  return layout;
}

template <typename acc_t>
inline acc_t bag_scale(int64_t pooling, int64_t length) {
  return pooling == 1 && length > 0 ? acc_t(1) / static_cast<acc_t>(length) : acc_t(1);
}

}  // namespace

at::Tensor embedding_bags_concat(const at::Tensor& values, const at::Tensor& bag_offsets, const at::Tensor& weight,
                                 const at::Tensor& field_offsets, at::IntArrayRef pooling) {
  check_embedding_bags(values, bag_offsets, weight, field_offsets, pooling);
  const at::Tensor table = weight.contiguous();
  const BagLayout L = layout_of(values, bag_offsets, field_offsets, table.size(0), table.size(1));
  at::Tensor out = at::empty({L.B, L.F * L.D}, table.options());
  AT_DISPATCH_INDEX_TYPES(L.values.scalar_type(), "embedding_bags_concat_cpu", [&] {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, table.scalar_type(), "embedding_bags_concat_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const index_t* v = L.values.data_ptr<index_t>();
      const int64_t* bo = L.bag_offsets.data_ptr<int64_t>();
      const scalar_t* w = table.data_ptr<scalar_t>();
      scalar_t* o = out.data_ptr<scalar_t>();
      at::parallel_for(0, L.F * L.B, 256, [&](int64_t k0, int64_t k1) {
        std::vector<acc_t> acc(L.D);
        for (int64_t k = k0; k < k1; ++k) {
          const int64_t f = k / L.B, b = k % L.B;
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int64_t i = bo[k]; i < bo[k + 1]; ++i) {
            const index_t id = v[i];
            TORCH_CHECK_INDEX(id >= 0 && id < L.sizes[f], "embedding_bags_concat: id ", static_cast<int64_t>(id),
                              " out of range for field ", f, " (size ", L.sizes[f], ") in the bag of sample ", b);
            const scalar_t* row = w + (L.field_offsets[f] + id) * L.D;
            for (int64_t j = 0; j < L.D; ++j) acc[j] += static_cast<acc_t>(row[j]);
          }
          const acc_t scale = bag_scale<acc_t>(pooling[f], bo[k + 1] - bo[k]);
          scalar_t* dst = o + b * L.F * L.D + f * L.D;
          for (int64_t j = 0; j < L.D; ++j) dst[j] = static_cast<scalar_t>(acc[j] * scale);
        }
      });
    });
  });
  return out;
}

// Dense gradient of the table; fields own disjoint rows and run in parallel.
at::Tensor embedding_bags_concat_backward(const at::Tensor& grad_out, const at::Tensor& values,
                                          const at::Tensor& bag_offsets, const at::Tensor& field_offsets,
                                          at::IntArrayRef pooling, int64_t num_rows) {
  const int64_t D = check_embedding_bags_backward(grad_out, field_offsets, bag_offsets);
  const BagLayout L = layout_of(values, bag_offsets, field_offsets, num_rows, D);
  TORCH_CHECK_VALUE(grad_out.size(0) == L.B, "embedding_bags_concat_backward: grad_out has ", grad_out.size(0),
                    " rows for ", L.B, " samples");
  const at::Tensor grad = grad_out.contiguous();
  const at::ScalarType acc_type = compute_type(grad.scalar_type());
  at::Tensor acc = at::zeros({num_rows, D}, grad.options().dtype(acc_type));
  AT_DISPATCH_INDEX_TYPES(L.values.scalar_type(), "embedding_bags_concat_backward_cpu", [&] {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "embedding_bags_concat_backward_cpu",
                                    [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const index_t* v = L.values.data_ptr<index_t>();
      const int64_t* bo = L.bag_offsets.data_ptr<int64_t>();
      const scalar_t* g = grad.data_ptr<scalar_t>();
      acc_t* a = acc.data_ptr<acc_t>();
      at::parallel_for(0, L.F, 1, [&](int64_t f0, int64_t f1) {
        for (int64_t f = f0; f < f1; ++f) {
          for (int64_t b = 0; b < L.B; ++b) {
            const int64_t k = f * L.B + b;
            const acc_t scale = bag_scale<acc_t>(pooling[f], bo[k + 1] - bo[k]);
            const scalar_t* gb = g + b * L.F * L.D + f * L.D;
            for (int64_t i = bo[k]; i < bo[k + 1]; ++i) {
              TORCH_CHECK_INDEX(v[i] >= 0 && v[i] < L.sizes[f], "embedding_bags_concat_backward: id ",
                                static_cast<int64_t>(v[i]), " out of range for field ", f);
              acc_t* row = a + (L.field_offsets[f] + v[i]) * L.D;
              for (int64_t j = 0; j < L.D; ++j) row[j] += static_cast<acc_t>(gb[j]) * scale;
            }
          }
        }
      });
    });
  });
  return acc_type == grad.scalar_type() ? acc : acc.to(grad.scalar_type());
}

}  // namespace pimm_fast::cpu
