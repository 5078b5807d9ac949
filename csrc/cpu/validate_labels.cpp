// validate_labels: the label checks of pimm_fast/_checks.py (check_labels_meta, check_labels_values)
// with the same exception types and messages, in C++ so that a package served without Python, and
// compiled graphs, run them. Written with ATen ops, so CUDA tensors are checked on the device (one
// synchronisation for the verdict, more only to name the first bad entry).
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <sstream>
#include <string>

#include "../ops.h"

namespace pimm_fast {
namespace {

std::string shape_of(const at::Tensor& t) {
  std::ostringstream out;
  out << "[";
  for (int64_t i = 0; i < t.dim(); ++i) out << (i ? ", " : "") << t.size(i);
  out << "]";
  return out.str();
}

// The dtype as Python prints it (torch.float32), so that messages match the Python checks.
std::string python_dtype(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    case at::kComplexHalf: return "torch.complex32";
    case at::kBool: return "torch.bool";
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    default: return std::string("torch.") + c10::toString(type);
  }
}

bool label_dtype(at::ScalarType type) {
  switch (type) {
    case at::kFloat: case at::kDouble: case at::kHalf: case at::kBFloat16:
    case at::kBool: case at::kByte: case at::kChar: case at::kShort: case at::kInt: case at::kLong:
      return true;
    default:
      return false;
  }
}

// A label value as Python's f-string prints the .item() of that dtype: 0.5, 2.0, nan, 2, True.
std::string python_value(const at::Tensor& element) {
  std::ostringstream out;
  if (at::isFloatingType(element.scalar_type())) {
    const double v = element.item<double>();
    if (std::isnan(v)) return "nan";
    if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
    out.precision(17);
    out << v;
    std::string text = out.str();
    if (text.find_first_of(".e") == std::string::npos) text += ".0";
    return text;
  }
  if (element.scalar_type() == at::kBool) return element.item<bool>() ? "True" : "False";
  out << element.item<int64_t>();
  return out.str();
}

}  // namespace

at::Tensor validate_labels(const at::Tensor& labels, int64_t num_tasks, bool cascade) {
  TORCH_CHECK_VALUE(labels.dim() == 2 && labels.size(1) == num_tasks, "labels must be [B, T] with T = ", num_tasks,
                    " tasks in funnel order, got shape ", shape_of(labels));
  TORCH_CHECK_TYPE(label_dtype(labels.scalar_type()), "labels must be a float, integer or bool tensor, got ",
                   python_dtype(labels.scalar_type()));
  if (labels.scalar_type() != at::kBool) {  // bool labels are 0/1 by construction
    const at::Tensor bad = labels.ne(0).logical_and_(labels.ne(1));
    if (bad.any().item<bool>()) {
      const at::Tensor where = bad.nonzero()[0].cpu();
      const int64_t r = where[0].item<int64_t>(), t = where[1].item<int64_t>();
      TORCH_CHECK_VALUE(false, "labels must be 0 or 1: got ", python_value(labels.index({r, t}).cpu()), " at row ", r,
                        ", task ", t);
    }
  }
  if (cascade && labels.size(1) >= 2) {
    using at::indexing::Slice;
    const at::Tensor later = labels.index({Slice(), Slice(1, at::indexing::None)});
    const at::Tensor earlier = labels.index({Slice(), Slice(at::indexing::None, -1)});
    const at::Tensor broken = later.gt(earlier);
    if (broken.any().item<bool>()) {
      const at::Tensor where = broken.nonzero()[0].cpu();
      const int64_t r = where[0].item<int64_t>(), t = where[1].item<int64_t>();
      TORCH_CHECK_VALUE(false, "labels break the cascade at row ", r, ": task ", t + 1, " is 1 but task ", t,
                        " is 0 (a later funnel stage needs the earlier one)");
    }
  }
  // A new tensor even when the labels already are float32: an op's output may not alias its input.
  return labels.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true);
}

}  // namespace pimm_fast
