// Fused optimizer steps for the embedding table on the CPU (FBGEMM's idea, kept simple): the
// backward of a lookup sums the gradient of every row the batch touched and updates that row and its
// optimizer state in place. No table-sized gradient is ever formed.
//
// The touched ids come field-major (values, value_offsets; see pimm_fast/reference.py). Fields own
// disjoint row ranges, so fields are processed in parallel without atomics. Inside a field an
// open-addressing map gathers the values of each row; the rows are then updated in the order of
// their first occurrence, and gradients are summed in value order (deterministic).
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

// Checks every input and every id before anything is written (a failing call leaves the table as it
// was); returns the host copies of value_offsets and field_offsets.
struct Layout {
  std::vector<int64_t> value_offsets, field_offsets, sizes;
};

Layout check_and_layout(const at::Tensor& grad_values, const at::Tensor& values, const at::Tensor& value_offsets,
                        const at::Tensor& field_offsets, const at::Tensor& weight) {
  check_update(grad_values, values, value_offsets, field_offsets, weight);
  Layout layout{host_value_offsets(value_offsets, values.numel()), {}, field_sizes(field_offsets, weight.size(0))};
  const at::Tensor off = field_offsets.contiguous();
  layout.field_offsets.assign(off.data_ptr<int64_t>(), off.data_ptr<int64_t>() + off.numel());
  const at::Tensor vals = values.contiguous();
  const int64_t F = field_offsets.numel();
  AT_DISPATCH_INDEX_TYPES(vals.scalar_type(), "embedding_update_check", [&] {
    const index_t* v = vals.data_ptr<index_t>();
    at::parallel_for(0, F, 1, [&](int64_t f0, int64_t f1) {
      for (int64_t f = f0; f < f1; ++f) {
        for (int64_t i = layout.value_offsets[f]; i < layout.value_offsets[f + 1]; ++i) {
          TORCH_CHECK_INDEX(v[i] >= 0 && v[i] < layout.sizes[f], "embedding_update: id ", static_cast<int64_t>(v[i]),
                            " out of range for field ", f, " (size ", layout.sizes[f], ") at position ",
                            i - layout.value_offsets[f], " of the field's values");
        }
      }
    });
  });
  return layout;
}

// Rows are scattered over tables of hundreds of MB; fetching the rows of a later slot while this one
// is updated hides most of the memory latency.
constexpr int64_t kPrefetchDistance = 8;

// Sums the gradient of every touched row and calls update(row, grad_sum) once per row; prefetch(row)
// is called kPrefetchDistance rows ahead. Fields own disjoint rows, so they run in parallel.
template <typename index_t, typename acc_t, typename Update, typename Prefetch>
void for_each_touched_row(const at::Tensor& grad_values, const at::Tensor& values, const Layout& layout, int64_t D,
                          const Update& update, const Prefetch& prefetch) {
  const at::Tensor grad = grad_values.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  const at::Tensor vals = values.contiguous();
  const acc_t* g = grad.data_ptr<acc_t>();
  const index_t* v = vals.data_ptr<index_t>();
  const int64_t F = static_cast<int64_t>(layout.field_offsets.size());
  at::parallel_for(0, F, 1, [&](int64_t f0, int64_t f1) {
    RowSums<acc_t> sums;
    for (int64_t f = f0; f < f1; ++f) {
      const int64_t begin = layout.value_offsets[f], end = layout.value_offsets[f + 1];
      sums.reset(end - begin, D);
      for (int64_t i = begin; i < end; ++i) {
        acc_t* s = sums[layout.field_offsets[f] + v[i]];
        for (int64_t j = 0; j < D; ++j) s[j] += g[i * D + j];
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
void dispatch(const at::Tensor& values, const at::Tensor& weight, Fn&& fn) {
  AT_DISPATCH_INDEX_TYPES(values.scalar_type(), "embedding_update", [&] {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weight.scalar_type(), "embedding_update", [&] {
      fn.template operator()<scalar_t, index_t, at::opmath_type<scalar_t>>();
    });
  });
}

}  // namespace

void embedding_update_sgd(const at::Tensor& grad_values, const at::Tensor& values, const at::Tensor& value_offsets,
                          const at::Tensor& field_offsets, const at::Tensor& weight, double lr) {
  const Layout layout = check_and_layout(grad_values, values, value_offsets, field_offsets, weight);
  const int64_t D = weight.size(1);
  dispatch(values, weight, [&]<typename scalar_t, typename index_t, typename acc_t>() {
    scalar_t* w = weight.data_ptr<scalar_t>();
    const acc_t step = static_cast<acc_t>(lr);
    for_each_touched_row<index_t, acc_t>(grad_values, values, layout, D, [&](int64_t row, const acc_t* g) {
      scalar_t* wr = w + row * D;
      for (int64_t j = 0; j < D; ++j) wr[j] = static_cast<scalar_t>(static_cast<acc_t>(wr[j]) - step * g[j]);
    }, [&](int64_t row) { __builtin_prefetch(w + row * D, 1); });
  });
}

void embedding_update_rowwise_adagrad(const at::Tensor& grad_values, const at::Tensor& values,
                                      const at::Tensor& value_offsets, const at::Tensor& field_offsets,
                                      const at::Tensor& weight, const at::Tensor& state_sum, double lr, double eps) {
  const Layout layout = check_and_layout(grad_values, values, value_offsets, field_offsets, weight);
  check_state("embedding_update_rowwise_adagrad", "state_sum", state_sum, weight, /*per_element=*/false);
  const int64_t D = weight.size(1);
  dispatch(values, weight, [&]<typename scalar_t, typename index_t, typename acc_t>() {
    scalar_t* w = weight.data_ptr<scalar_t>();
    acc_t* G = state_sum.data_ptr<acc_t>();
    for_each_touched_row<index_t, acc_t>(grad_values, values, layout, D, [&](int64_t row, const acc_t* g) {
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

void embedding_update_adam(const at::Tensor& grad_values, const at::Tensor& values, const at::Tensor& value_offsets,
                           const at::Tensor& field_offsets, const at::Tensor& weight, const at::Tensor& exp_avg,
                           const at::Tensor& exp_avg_sq, const at::Tensor& step, double lr, double beta1,
                           double beta2, double eps) {
  const char* op = "embedding_update_adam";
  const Layout layout = check_and_layout(grad_values, values, value_offsets, field_offsets, weight);
  check_state(op, "exp_avg", exp_avg, weight, /*per_element=*/true);
  check_state(op, "exp_avg_sq", exp_avg_sq, weight, /*per_element=*/true);
  check_step(op, step, weight);
  const int64_t t = ++*step.data_ptr<int64_t>();  // one counter for the table, as torch.optim.SparseAdam
  const double step_size = lr * std::sqrt(1 - std::pow(beta2, t)) / (1 - std::pow(beta1, t));
  const int64_t D = weight.size(1);
  dispatch(values, weight, [&]<typename scalar_t, typename index_t, typename acc_t>() {
    scalar_t* w = weight.data_ptr<scalar_t>();
    acc_t *m = exp_avg.data_ptr<acc_t>(), *v = exp_avg_sq.data_ptr<acc_t>();
    // 1 - beta in double first: 1 - float(0.999) is off by 1e-5 relative
    const acc_t b1 = static_cast<acc_t>(1.0 - beta1), b2 = static_cast<acc_t>(1.0 - beta2);
    const acc_t size = static_cast<acc_t>(step_size), e = static_cast<acc_t>(eps);
    for_each_touched_row<index_t, acc_t>(grad_values, values, layout, D, [&](int64_t row, const acc_t* g) {
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
