// Metadata checks shared by the CPU and CUDA kernels. They mirror pimm_fast/_checks.py: same
// conditions, same exception types (TORCH_CHECK_TYPE -> TypeError, TORCH_CHECK_VALUE -> ValueError,
// TORCH_CHECK_INDEX -> IndexError), so every backend fails a bad call the same way.
#pragma once
#include <ATen/core/Formatting.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>
#include <vector>

namespace pimm_fast {

// dtype names as Python prints them, so that messages match the reference backend's.
inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kHalf: return "torch.float16";
    case at::kLong: return "torch.int64";
    case at::kInt: return "torch.int32";
    case at::kShort: return "torch.int16";
    case at::kChar: return "torch.int8";
    case at::kByte: return "torch.uint8";
    case at::kBool: return "torch.bool";
    default: return std::string("torch.") + c10::toString(t);
  }
}

inline bool is_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

inline bool is_label_type(at::ScalarType t) {
  return is_float(t) || t == at::kBool || t == at::kByte || t == at::kChar || t == at::kShort ||
         t == at::kInt || t == at::kLong;
}

// Floating inputs of 16 bits are computed in fp32, others in their own type.
inline at::ScalarType compute_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

inline void check_same_device(const char* op, const at::Tensor& ref, const char* ref_name, const at::Tensor& t,
                              const char* name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": device mismatch: ", ref_name, " on ", ref.device(), ", ",
                    name, " on ", t.device());
}

inline void check_embedding_concat(const at::Tensor& indices, const at::Tensor& weight,
                                   const at::Tensor& field_offsets) {
  const char* op = "embedding_concat";
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kInt || indices.scalar_type() == at::kLong, op,
                   ": indices must be int32 or int64, got ", dtype_name(indices.scalar_type()));
  TORCH_CHECK_TYPE(is_float(weight.scalar_type()), op, ": weight must be a floating tensor, got ",
                   dtype_name(weight.scalar_type()));
  TORCH_CHECK_TYPE(field_offsets.scalar_type() == at::kLong, op, ": field_offsets must be int64, got ",
                   dtype_name(field_offsets.scalar_type()));
  TORCH_CHECK_VALUE(indices.dim() == 2, op, ": indices must be [B, F], got shape ", indices.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 2, op, ": weight must be [num_rows, D], got shape ", weight.sizes());
  TORCH_CHECK_VALUE(field_offsets.dim() == 1 && field_offsets.size(0) == indices.size(1), op,
                    ": field_offsets must be [F] with F = indices.shape[1] = ", indices.size(1), ", got shape ",
                    field_offsets.sizes());
  check_same_device(op, indices, "indices", weight, "weight");
  check_same_device(op, indices, "indices", field_offsets, "field_offsets");
}

inline void check_embedding_concat_backward(const at::Tensor& grad_out, const at::Tensor& indices) {
  TORCH_CHECK_VALUE(indices.dim() == 2 && grad_out.dim() == 2 && grad_out.size(0) == indices.size(0) &&
                        (indices.size(1) == 0 || grad_out.size(1) % indices.size(1) == 0),
                    "embedding_concat_backward: grad_out must be [B, F*D] for indices ", indices.sizes(), ", got ",
                    grad_out.sizes());
}

// Rows owned by each field (host copy of the offsets); checks that they tile the table.
inline std::vector<int64_t> field_sizes(const at::Tensor& field_offsets, int64_t num_rows) {
  const at::Tensor off = field_offsets.to(at::kCPU).contiguous();
  const int64_t F = off.numel();
  const int64_t* o = off.data_ptr<int64_t>();
  std::vector<int64_t> sizes(F);
  for (int64_t f = 0; f < F; ++f) {
    sizes[f] = (f + 1 < F ? o[f + 1] : num_rows) - o[f];
    TORCH_CHECK_VALUE(o[0] == 0 && sizes[f] >= 0, "embedding_concat: field_offsets must start at 0, be "
                      "non-decreasing and <= num_rows=", num_rows, ", got ", field_offsets);
  }
  return sizes;
}

// Field-major values (multi-hot bags and the fused updates; see pimm_fast/reference.py).
inline void check_values(const char* op, const at::Tensor& values) {
  TORCH_CHECK_TYPE((values.scalar_type() == at::kInt || values.scalar_type() == at::kLong) && values.dim() == 1, op,
                   ": values must be a 1-D int32 or int64 tensor, got ", dtype_name(values.scalar_type()), " ",
                   values.sizes());
}

inline void check_embedding_bags(const at::Tensor& values, const at::Tensor& bag_offsets, const at::Tensor& weight,
                                 const at::Tensor& field_offsets, at::IntArrayRef pooling) {
  const char* op = "embedding_bags_concat";
  check_values(op, values);
  TORCH_CHECK_TYPE(bag_offsets.scalar_type() == at::kLong && bag_offsets.dim() == 1 && bag_offsets.numel() >= 1, op,
                   ": bag_offsets must be a non-empty 1-D int64 tensor, got ", dtype_name(bag_offsets.scalar_type()),
                   " ", bag_offsets.sizes());
  TORCH_CHECK_TYPE(is_float(weight.scalar_type()) && weight.dim() == 2, op,
                   ": weight must be a 2-D floating tensor, got ", dtype_name(weight.scalar_type()), " ",
                   weight.sizes());
  TORCH_CHECK_TYPE(field_offsets.scalar_type() == at::kLong && field_offsets.dim() == 1, op,
                   ": field_offsets must be a 1-D int64 tensor, got ", dtype_name(field_offsets.scalar_type()));
  const int64_t F = field_offsets.numel();
  bool codes_ok = static_cast<int64_t>(pooling.size()) == F;
  for (const int64_t code : pooling) codes_ok = codes_ok && (code == 0 || code == 1);
  TORCH_CHECK_VALUE(codes_ok, op, ": pooling must hold one code per field (0 = sum, 1 = mean) for ", F,
                    " fields, got ", pooling);
  TORCH_CHECK_VALUE(F == 0 || (bag_offsets.numel() - 1) % F == 0, op,
                    ": bag_offsets must have F*B + 1 entries for F = ", F, " fields, got ", bag_offsets.numel());
  check_same_device(op, weight, "weight", values, "values");
  check_same_device(op, weight, "weight", bag_offsets, "bag_offsets");
  check_same_device(op, weight, "weight", field_offsets, "field_offsets");
}

// Returns D, the embedding width. grad_out must be [B, F*D] with B the batch of the bags.
inline int64_t check_embedding_bags_backward(const at::Tensor& grad_out, const at::Tensor& field_offsets,
                                             const at::Tensor& bag_offsets) {
  const int64_t F = field_offsets.numel();
  const int64_t B = F ? (bag_offsets.numel() - 1) / F : 0;
  TORCH_CHECK_VALUE(grad_out.dim() == 2 && F > 0 && grad_out.size(1) % F == 0 && grad_out.size(0) == B,
                    "embedding_bags_concat_backward: grad_out must be [B, F*D] with B = ", B,
                    " bags per field and F = ", F, ", got ", grad_out.sizes());
  check_same_device("embedding_bags_concat_backward", grad_out, "grad_out", bag_offsets, "bag_offsets");
  return grad_out.size(1) / F;
}

inline void check_update(const at::Tensor& grad_values, const at::Tensor& values, const at::Tensor& value_offsets,
                         const at::Tensor& field_offsets, const at::Tensor& weight) {
  const char* op = "embedding_update";
  check_values(op, values);
  TORCH_CHECK_TYPE(is_float(weight.scalar_type()) && weight.dim() == 2, op,
                   ": weight must be a 2-D floating tensor, got ", dtype_name(weight.scalar_type()), " ",
                   weight.sizes());
  TORCH_CHECK_TYPE(is_float(grad_values.scalar_type()), op, ": grad_values must be a floating tensor, got ",
                   dtype_name(grad_values.scalar_type()));
  TORCH_CHECK_VALUE(grad_values.dim() == 2 && grad_values.size(0) == values.numel() &&
                        grad_values.size(1) == weight.size(1),
                    op, ": grad_values must be [n, D] = [", values.numel(), ", ", weight.size(1), "], got ",
                    grad_values.sizes());
  TORCH_CHECK_TYPE(field_offsets.scalar_type() == at::kLong && value_offsets.scalar_type() == at::kLong, op,
                   ": value_offsets and field_offsets must be int64");
  TORCH_CHECK_VALUE(value_offsets.dim() == 1 && value_offsets.numel() == field_offsets.numel() + 1, op,
                    ": value_offsets must be [F + 1] = [", field_offsets.numel() + 1, "], got ",
                    value_offsets.sizes());
  TORCH_CHECK_VALUE(weight.is_contiguous(), op, ": weight must be contiguous (it is updated in place)");
  check_same_device(op, weight, "weight", grad_values, "grad_values");
  check_same_device(op, weight, "weight", values, "values");
  check_same_device(op, weight, "weight", value_offsets, "value_offsets");
  check_same_device(op, weight, "weight", field_offsets, "field_offsets");
}

// Optimizer state of the fused updates: compute type of the table (fp32, fp64 for fp64 tables), one
// value per row (row-wise Adagrad) or per element (Adam), contiguous, on the table's device.
inline void check_state(const char* op, const char* name, const at::Tensor& state, const at::Tensor& weight,
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

// Adam's step counter: one int64 for the table, on the CPU or on the table's device.
inline void check_step(const char* op, const at::Tensor& step, const at::Tensor& weight) {
  TORCH_CHECK_VALUE(step.dim() == 0 && step.scalar_type() == at::kLong &&
                        (step.device().is_cpu() || step.device() == weight.device()),
                    op, ": step must be a 0-dim int64 tensor on the CPU or on the device of weight");
}

// Host copy of value_offsets, checked to run from 0 to n without decreasing.
inline std::vector<int64_t> host_value_offsets(const at::Tensor& value_offsets, int64_t n) {
  const at::Tensor vo = value_offsets.to(at::kCPU).contiguous();
  const int64_t* p = vo.data_ptr<int64_t>();
  std::vector<int64_t> out(p, p + vo.numel());
  bool ok = !out.empty() && out.front() == 0 && out.back() == n;
  for (size_t f = 1; f < out.size(); ++f) ok = ok && out[f] >= out[f - 1];
  TORCH_CHECK_VALUE(ok, "embedding: value offsets must run from 0 to the number of values (", n,
                    ") without decreasing, got ", value_offsets);
  return out;
}

inline void check_pim_attention(const at::Tensor& v, const at::Tensor& h_prev,
                                const std::optional<at::Tensor>& label_prev, const at::Tensor& pred_prev,
                                const at::Tensor& w_prior, const at::Tensor& w_q, const at::Tensor& w_k,
                                const at::Tensor& w_v, const std::optional<at::Tensor>& b_q,
                                const std::optional<at::Tensor>& b_k, const std::optional<at::Tensor>& b_v) {
  const char* op = "pim_attention";
  TORCH_CHECK_VALUE(v.dim() == 2, op, ": v must be [B, d], got shape ", v.sizes());
  TORCH_CHECK_TYPE(is_float(v.scalar_type()), op, ": v must be a floating tensor, got ", dtype_name(v.scalar_type()));
  const int64_t B = v.size(0), d = v.size(1);
  TORCH_CHECK_VALUE(B < (int64_t{1} << 31), op, ": the batch must have fewer than 2^31 samples (the draw counts in "
                    "32 bits), got ", B);
  auto check = [&](const at::Tensor& t, const char* name, at::IntArrayRef shape, bool same_dtype) {
    TORCH_CHECK_VALUE(t.sizes() == shape, op, ": ", name, " must have shape ", shape, " (B=", B, ", d=", d,
                      "), got ", t.sizes());
    if (same_dtype) {
      TORCH_CHECK_TYPE(t.scalar_type() == v.scalar_type(), op, ": ", name, " has dtype ", dtype_name(t.scalar_type()),
                       " but v has ", dtype_name(v.scalar_type()), "; they must match");
    }
    check_same_device(op, v, "v", t, name);
  };
  check(h_prev, "h_prev", {B, d}, true);
  check(pred_prev, "pred_prev", {B}, false);
  TORCH_CHECK_TYPE(is_float(pred_prev.scalar_type()), op, ": pred_prev must be a floating tensor, got ",
                   dtype_name(pred_prev.scalar_type()));
  if (label_prev) {
    check(*label_prev, "label_prev", {B}, false);
    TORCH_CHECK_TYPE(is_label_type(label_prev->scalar_type()), op,
                     ": label_prev must be a float, integer or bool tensor, got ", dtype_name(label_prev->scalar_type()));
  }
  check(w_prior, "w_prior", {d}, true);
  check(w_q, "w_q", {d, d}, true);
  check(w_k, "w_k", {d, d}, true);
  check(w_v, "w_v", {d, d}, true);
  if (b_q) check(*b_q, "b_q", {d}, true);
  if (b_k) check(*b_k, "b_k", {d}, true);
  if (b_v) check(*b_v, "b_v", {d}, true);
}

inline void check_pim_attention_backward(const at::Tensor& grad_u, const at::Tensor& v, const at::Tensor& select) {
  TORCH_CHECK_VALUE(grad_u.sizes() == v.sizes(), "pim_attention_backward: grad_u must have the shape of v ",
                    v.sizes(), ", got ", grad_u.sizes());
  TORCH_CHECK_VALUE(select.scalar_type() == at::kBool && select.sizes() == at::IntArrayRef{v.size(0)},
                    "pim_attention_backward: select must be bool [B]");
  check_same_device("pim_attention_backward", v, "v", grad_u, "grad_u");
  check_same_device("pim_attention_backward", v, "v", select, "select");
}

// p (0-dim float) and seed (0-dim int64): metadata only, nothing read. They may live on the CPU next to
// device data, or on the data's device.
inline void check_p_seed(const at::Tensor& p, const at::Tensor& seed, const at::Tensor& v) {
  const char* op = "pim_attention";
  TORCH_CHECK_VALUE(p.dim() == 0, op, ": p must be a 0-dim tensor, got shape ", p.sizes());
  TORCH_CHECK_TYPE(is_float(p.scalar_type()), op, ": p must be a floating tensor, got ", dtype_name(p.scalar_type()));
  TORCH_CHECK_VALUE(seed.dim() == 0, op, ": seed must be a 0-dim tensor, got shape ", seed.sizes());
  TORCH_CHECK_TYPE(seed.scalar_type() == at::kLong, op, ": seed must have dtype int64, got ",
                   dtype_name(seed.scalar_type()));
  if (!p.device().is_cpu()) check_same_device(op, v, "v", p, "p");
  if (!seed.device().is_cpu()) check_same_device(op, v, "v", seed, "seed");
}

// p (0-dim float) and seed (0-dim int64) are read on the host.
inline float read_p(const at::Tensor& p) {
  TORCH_CHECK_VALUE(p.dim() == 0, "pim_attention: p must be a 0-dim tensor, got shape ", p.sizes());
  TORCH_CHECK_TYPE(is_float(p.scalar_type()), "pim_attention: p must be a floating tensor, got ", dtype_name(p.scalar_type()));
  const float value = p.item<float>();
  TORCH_CHECK_VALUE(value >= 0.f && value <= 1.f, "pim_attention: p must lie in [0, 1], got ", value);
  return value;
}

inline uint64_t read_seed(const at::Tensor& seed) {
  TORCH_CHECK_VALUE(seed.dim() == 0, "pim_attention: seed must be a 0-dim tensor, got shape ", seed.sizes());
  TORCH_CHECK_TYPE(seed.scalar_type() == at::kLong, "pim_attention: seed must have dtype int64, got ",
                   dtype_name(seed.scalar_type()));
  const int64_t value = seed.item<int64_t>();
  TORCH_CHECK_VALUE(value >= 0, "pim_attention: seed must be non-negative, got ", value);
  return static_cast<uint64_t>(value);
}

}  // namespace pimm_fast
