// Embedding lookup + concat on the CPU: out[b, f*D:(f+1)*D] = weight[offset_f + ids[b, f]].
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <cstring>

#include "../checks.h"
#include "../ops.h"

namespace pimm_fast::cpu {

namespace {

template <typename index_t>
[[noreturn]] void bad_id(index_t id, int64_t field, int64_t size, int64_t sample) {
  TORCH_CHECK_INDEX(false, "embedding_concat: id ", static_cast<int64_t>(id), " out of range for field ", field,
                    " (size ", size, ") at sample ", sample);
}

}  // namespace

at::Tensor embedding_concat(const at::Tensor& indices, const at::Tensor& weight, const at::Tensor& field_offsets) {
  check_embedding_concat(indices, weight, field_offsets);
  const at::Tensor ids = indices.contiguous(), table = weight.contiguous();
  const int64_t B = ids.size(0), F = ids.size(1), D = table.size(1);
  const std::vector<int64_t> sizes = field_sizes(field_offsets, table.size(0));
  const at::Tensor off_t = field_offsets.contiguous();
  const int64_t* off = off_t.data_ptr<int64_t>();
  at::Tensor out = at::empty({B, F * D}, table.options());
  AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "embedding_concat_cpu", [&] {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, table.scalar_type(), "embedding_concat_cpu", [&] {
      const index_t* id_p = ids.data_ptr<index_t>();
      const scalar_t* w_p = table.data_ptr<scalar_t>();
      scalar_t* out_p = out.data_ptr<scalar_t>();
      const size_t row_bytes = D * sizeof(scalar_t);
      at::parallel_for(0, B, 64, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          for (int64_t f = 0; f < F; ++f) {
            const index_t id = id_p[b * F + f];
            if (id < 0 || id >= sizes[f]) bad_id(id, f, sizes[f], b);
            std::memcpy(out_p + (b * F + f) * D, w_p + (off[f] + id) * D, row_bytes);
          }
        }
      });
    });
  });
  return out;
}

// Dense gradient of the table. Fields own disjoint row ranges, so fields are processed in parallel
// without atomics; repeated rows accumulate in fp32 for 16-bit tables.
at::Tensor embedding_concat_backward(const at::Tensor& grad_out, const at::Tensor& indices,
                                     const at::Tensor& field_offsets, int64_t num_rows) {
  check_embedding_concat_backward(grad_out, indices);
  const at::Tensor ids = indices.contiguous(), grad = grad_out.contiguous(), off_t = field_offsets.contiguous();
  const int64_t B = ids.size(0), F = ids.size(1), D = F ? grad.size(1) / F : 0;
  const at::ScalarType acc_type = compute_type(grad.scalar_type());
  at::Tensor acc = at::zeros({num_rows, D}, grad.options().dtype(acc_type));
  const int64_t* off = off_t.data_ptr<int64_t>();
  // A direct call (not through autograd, whose forward checked them) may carry any id: never write out of bounds.
  const std::vector<int64_t> sizes = field_sizes(field_offsets, num_rows);
  AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "embedding_concat_backward_cpu", [&] {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "embedding_concat_backward_cpu",
                                    [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const index_t* id_p = ids.data_ptr<index_t>();
      const scalar_t* g_p = grad.data_ptr<scalar_t>();
      acc_t* acc_p = acc.data_ptr<acc_t>();
      at::parallel_for(0, F, 1, [&](int64_t f0, int64_t f1) {
        for (int64_t f = f0; f < f1; ++f) {
          for (int64_t b = 0; b < B; ++b) {
            const int64_t id = static_cast<int64_t>(id_p[b * F + f]);
            TORCH_CHECK_INDEX(id >= 0 && id < sizes[f], "embedding_concat_backward: id ", id,
                              " out of range for field ", f, " (size ", sizes[f], ") at sample ", b);
            acc_t* row = acc_p + (off[f] + id) * D;
            const scalar_t* g_row = g_p + (b * F + f) * D;
            for (int64_t j = 0; j < D; ++j) row[j] += static_cast<acc_t>(g_row[j]);
          }
        }
      });
    });
  });
  return acc_type == grad.scalar_type() ? acc : acc.to(grad.scalar_type());
}

}  // namespace pimm_fast::cpu
