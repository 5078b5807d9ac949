// Fused optimizer steps for the embedding table on the CPU (FBGEMM's idea, kept simple): the
// backward of embedding_concat sums the gradient of every row the batch touched and updates that row
// and its optimizer state in place. No table-sized gradient is ever formed.
//
// Fields own disjoint row ranges, so fields are processed in parallel without atomics. Inside a
// field an open-addressing map gathers the samples of each row; the rows are then updated in the order
// of their first occurrence, and gradients are summed in sample order (deterministic).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <cmath>
#include <vector>

#include "../checks.h"
#include "../ops.h"

namespace pimm_fast::cpu {
namespace {

// row -> slot map with a D-wide gradient sum per slot, for the (at most n) rows of one field.
template <typename acc_t>
class RowSums {
 public:
  void reset(int64_t n, int64_t D) {
    int64_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    mask_ = cap - 1;
    shift_ = 64 - __builtin_ctzll(static_cast<unsigned long long>(cap));
    keys_.assign(cap, -1);
    slots_.resize(cap);
    rows_.clear();
    rows_.reserve(n);
    sums_.assign(static_cast<size_t>(n * D), acc_t(0));
    D_ = D;
  }

  // The gradient sum of `row`, a new zero one on its first occurrence.
  acc_t* operator[](int64_t row) {
    uint64_t h = (static_cast<uint64_t>(row) * 0x9E3779B97F4A7C15ull) >> shift_;
    while (true) {
      const int64_t key = keys_[h];
      if (key == row) return sums_.data() + slots_[h] * D_;
      if (key < 0) {
        keys_[h] = row;
        slots_[h] = static_cast<int64_t>(rows_.size());
        rows_.push_back(row);
        return sums_.data() + slots_[h] * D_;
      }
      h = (h + 1) & mask_;
    }
  }

  int64_t size() const { return static_cast<int64_t>(rows_.size()); }
  int64_t row(int64_t slot) const { return rows_[slot]; }
  const acc_t* sum(int64_t slot) const { return sums_.data() + slot * D_; }

 private:
  uint64_t mask_ = 0;
  int shift_ = 0;
  int64_t D_ = 0;
  std::vector<int64_t> keys_, slots_, rows_;
  std::vector<acc_t> sums_;
};

// Every id in range, checked before anything is written: a failing call leaves the table untouched.
void check_ids(const char* op, const at::Tensor& indices, const std::vector<int64_t>& sizes) {
  const at::Tensor ids_t = indices.contiguous();
  const int64_t B = ids_t.size(0), F = ids_t.size(1);
  AT_DISPATCH_INDEX_TYPES(ids_t.scalar_type(), "embedding_update_check_ids", [&] {
    const index_t* ids = ids_t.data_ptr<index_t>();
    at::parallel_for(0, B, 2048, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        for (int64_t f = 0; f < F; ++f) {
          const index_t id = ids[b * F + f];
          TORCH_CHECK_INDEX(id >= 0 && id < sizes[f], op, ": id ", static_cast<int64_t>(id),
                            " out of range for field ", f, " (size ", sizes[f], ") at sample ", b);
        }
      }
    });
  });
}

// Checks shared by the three updates; returns the rows each field owns.
std::vector<int64_t> check_update(const char* op, const at::Tensor& grad_out, const at::Tensor& indices,
                                  const at::Tensor& field_offsets, const at::Tensor& weight) {
  check_embedding_concat(indices, weight, field_offsets);
  TORCH_CHECK_VALUE(weight.is_contiguous(), op, ": weight must be contiguous (it is updated in place)");
  const int64_t B = indices.size(0), F = indices.size(1), D = weight.size(1);
  TORCH_CHECK_VALUE(grad_out.dim() == 2 && grad_out.size(0) == B && grad_out.size(1) == F * D, op,
                    ": grad_out must be [B, F*D] = [", B, ", ", F * D, "], got ", grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == weight.scalar_type(), op, ": grad_out has dtype ",
                   dtype_name(grad_out.scalar_type()), " but weight has ", dtype_name(weight.scalar_type()));
  std::vector<int64_t> sizes = field_sizes(field_offsets, weight.size(0));
  check_ids(op, indices, sizes);
  return sizes;
}

void check_state(const char* op, const char* name, const at::Tensor& state, const at::Tensor& weight,
                 bool per_element) {
  const at::ScalarType expected = compute_type(weight.scalar_type());
  TORCH_CHECK_TYPE(state.scalar_type() == expected, op, ": ", name, " must have dtype ", dtype_name(expected),
                   " for a ", dtype_name(weight.scalar_type()), " table, got ", dtype_name(state.scalar_type()));
  const bool shape_ok = per_element ? state.sizes() == weight.sizes()
                                    : (state.dim() == 1 && state.size(0) == weight.size(0));
  TORCH_CHECK_VALUE(shape_ok, op, ": ", name, " must have shape ",
                    per_element ? weight.sizes() : at::IntArrayRef{weight.size(0)}, ", got ", state.sizes());
  TORCH_CHECK_VALUE(state.is_contiguous() && state.device() == weight.device(), op, ": ", name,
                    " must be contiguous and on the device of weight");
}

// Rows are scattered over tables of hundreds of MB; fetching the rows of a later slot while this one
// is updated hides most of the memory latency.
constexpr int64_t kPrefetchDistance = 8;

// Sums the gradient of every touched row and calls update(row, grad_sum) once per row (ids checked);
// prefetch(row) is called kPrefetchDistance rows ahead.
template <typename scalar_t, typename index_t, typename acc_t, typename Update, typename Prefetch>
void for_each_touched_row(const at::Tensor& grad_out, const at::Tensor& indices, const at::Tensor& field_offsets,
                          int64_t D, const Update& update, const Prefetch& prefetch) {
  const at::Tensor grad = grad_out.contiguous(), ids_t = indices.contiguous(), off_t = field_offsets.contiguous();
  const int64_t B = ids_t.size(0), F = ids_t.size(1);
  const scalar_t* g = grad.data_ptr<scalar_t>();
  const index_t* ids = ids_t.data_ptr<index_t>();
  const int64_t* off = off_t.data_ptr<int64_t>();
  at::parallel_for(0, F, 1, [&](int64_t f0, int64_t f1) {
    RowSums<acc_t> sums;
    for (int64_t f = f0; f < f1; ++f) {
      sums.reset(B, D);
      for (int64_t b = 0; b < B; ++b) {
        acc_t* s = sums[off[f] + ids[b * F + f]];
        const scalar_t* gb = g + (b * F + f) * D;
        for (int64_t j = 0; j < D; ++j) s[j] += static_cast<acc_t>(gb[j]);
      }
      const int64_t n = sums.size();
      for (int64_t slot = 0; slot < std::min(n, kPrefetchDistance); ++slot) prefetch(sums.row(slot));
      for (int64_t slot = 0; slot < n; ++slot) {
        if (slot + kPrefetchDistance < n) prefetch(sums.row(slot + kPrefetchDistance));
        update(sums.row(slot), sums.sum(slot));
      }
    }
  });
}

// Dispatches on the id and table types; fn is called as fn.template operator()<scalar_t, index_t, acc_t>().
template <typename Fn>
void dispatch(const at::Tensor& indices, const at::Tensor& weight, Fn&& fn) {
  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "embedding_update", [&] {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weight.scalar_type(), "embedding_update", [&] {
      fn.template operator()<scalar_t, index_t, at::opmath_type<scalar_t>>();
    });
  });
}

}  // namespace

void embedding_update_sgd(const at::Tensor& grad_out, const at::Tensor& indices, const at::Tensor& field_offsets,
                          const at::Tensor& weight, double lr) {
  const char* op = "embedding_update_sgd";
  check_update(op, grad_out, indices, field_offsets, weight);
  const int64_t D = weight.size(1);
  dispatch(indices, weight, [&]<typename scalar_t, typename index_t, typename acc_t>() {
    scalar_t* w = weight.data_ptr<scalar_t>();
    const acc_t step = static_cast<acc_t>(lr);
    for_each_touched_row<scalar_t, index_t, acc_t>(grad_out, indices, field_offsets, D,
                                                   [&](int64_t row, const acc_t* g) {
      scalar_t* wr = w + row * D;
      for (int64_t j = 0; j < D; ++j) wr[j] = static_cast<scalar_t>(static_cast<acc_t>(wr[j]) - step * g[j]);
    }, [&](int64_t row) { __builtin_prefetch(w + row * D, 1); });
  });
}

void embedding_update_rowwise_adagrad(const at::Tensor& grad_out, const at::Tensor& indices,
                                      const at::Tensor& field_offsets, const at::Tensor& weight,
                                      const at::Tensor& state_sum, double lr, double eps) {
  const char* op = "embedding_update_rowwise_adagrad";
  check_update(op, grad_out, indices, field_offsets, weight);
  check_state(op, "state_sum", state_sum, weight, /*per_element=*/false);
  const int64_t D = weight.size(1);
  dispatch(indices, weight, [&]<typename scalar_t, typename index_t, typename acc_t>() {
    scalar_t* w = weight.data_ptr<scalar_t>();
    acc_t* G = state_sum.data_ptr<acc_t>();
    for_each_touched_row<scalar_t, index_t, acc_t>(grad_out, indices, field_offsets, D,
                                                   [&](int64_t row, const acc_t* g) {
      acc_t sq = 0;
      for (int64_t j = 0; j < D; ++j) sq += g[j] * g[j];
      G[row] += sq / static_cast<acc_t>(D);
      const acc_t scale = static_cast<acc_t>(lr) / (std::sqrt(G[row]) + static_cast<acc_t>(eps));
      scalar_t* wr = w + row * D;
      for (int64_t j = 0; j < D; ++j) wr[j] = static_cast<scalar_t>(static_cast<acc_t>(wr[j]) - scale * g[j]);
    }, [&](int64_t row) {
      __builtin_prefetch(w + row * D, 1);
      __builtin_prefetch(G + row, 1);
    });
  });
}

void embedding_update_adam(const at::Tensor& grad_out, const at::Tensor& indices, const at::Tensor& field_offsets,
                           const at::Tensor& weight, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                           const at::Tensor& step, double lr, double beta1, double beta2, double eps) {
  const char* op = "embedding_update_adam";
  check_update(op, grad_out, indices, field_offsets, weight);
  check_state(op, "exp_avg", exp_avg, weight, /*per_element=*/true);
  check_state(op, "exp_avg_sq", exp_avg_sq, weight, /*per_element=*/true);
  TORCH_CHECK_VALUE(step.dim() == 0 && step.scalar_type() == at::kLong && step.device().is_cpu(), op,
                    ": step must be a 0-dim int64 CPU tensor");
  const int64_t t = ++*step.data_ptr<int64_t>();  // one counter for the table, as torch.optim.SparseAdam
  const double step_size = lr * std::sqrt(1 - std::pow(beta2, t)) / (1 - std::pow(beta1, t));
  const int64_t D = weight.size(1);
  dispatch(indices, weight, [&]<typename scalar_t, typename index_t, typename acc_t>() {
    scalar_t* w = weight.data_ptr<scalar_t>();
    acc_t *m = exp_avg.data_ptr<acc_t>(), *v = exp_avg_sq.data_ptr<acc_t>();
    // 1 - beta in double first: 1 - float(0.999) is off by 1e-5 relative
    const acc_t b1 = static_cast<acc_t>(1.0 - beta1), b2 = static_cast<acc_t>(1.0 - beta2);
    const acc_t size = static_cast<acc_t>(step_size), e = static_cast<acc_t>(eps);
    for_each_touched_row<scalar_t, index_t, acc_t>(grad_out, indices, field_offsets, D,
                                                   [&](int64_t row, const acc_t* g) {
      for (int64_t j = 0; j < D; ++j) {
        const int64_t k = row * D + j;
        m[k] += (g[j] - m[k]) * b1;
        v[k] += (g[j] * g[j] - v[k]) * b2;
        w[k] = static_cast<scalar_t>(static_cast<acc_t>(w[k]) - size * m[k] / (std::sqrt(v[k]) + e));
      }
    }, [&](int64_t row) {
      __builtin_prefetch(w + row * D, 1);
      __builtin_prefetch(m + row * D, 1);
      __builtin_prefetch(v + row * D, 1);
    });
  });
}

}  // namespace pimm_fast::cpu
