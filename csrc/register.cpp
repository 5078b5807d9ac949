// The one place where kernels meet the dispatcher.
//
// TORCH_LIBRARY defines pimm_fast's op schemas from pimm_fast/ops/schemas.def (the single list, also
// read by Python when this library is not loaded), so that a program that loads this library - Python
// or a C++ program running an AOTInductor package - finds them. Each backend's kernels register for
// the overload that carries the backend's name; Python adds the fakes, autograd formulas and Triton
// kernels. A C++ signature that does not match its schema fails when the library loads.
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(pimm_fast, m) {
#define PIMM_FAST_FUSED_OP(name, schema) \
  m.def(#name ".cpp" schema);            \
  m.def(#name ".cuda" schema);           \
  m.def(#name ".triton" schema);
#define PIMM_FAST_PLAIN_OP(name, schema) m.def(#name schema);
#include "../pimm_fast/ops/schemas.def"
#undef PIMM_FAST_FUSED_OP
#undef PIMM_FAST_PLAIN_OP
}

TORCH_LIBRARY_IMPL(pimm_fast, CPU, m) {
  m.impl("embedding_concat.cpp", &pimm_fast::cpu::embedding_concat);
  m.impl("embedding_concat_backward.cpp", &pimm_fast::cpu::embedding_concat_backward);
  m.impl("pim_attention.cpp", &pimm_fast::cpu::pim_attention);
  m.impl("pim_attention_backward.cpp", &pimm_fast::cpu::pim_attention_backward);
  m.impl("embedding_bags_concat.cpp", &pimm_fast::cpu::embedding_bags_concat);
  m.impl("embedding_bags_concat_backward.cpp", &pimm_fast::cpu::embedding_bags_concat_backward);
  m.impl("embedding_update_sgd.cpp", &pimm_fast::cpu::embedding_update_sgd);
  m.impl("embedding_update_rowwise_adagrad.cpp", &pimm_fast::cpu::embedding_update_rowwise_adagrad);
  m.impl("embedding_update_adam.cpp", &pimm_fast::cpu::embedding_update_adam);
}

// Written with ATen ops only, so the same code serves CPU and CUDA tensors (and any other device).
TORCH_LIBRARY_IMPL(pimm_fast, CompositeExplicitAutograd, m) {
  m.impl("validate_labels", &pimm_fast::validate_labels);
}

#ifdef PIMM_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(pimm_fast, CUDA, m) {
  m.impl("embedding_concat.cuda", &pimm_fast::cuda::embedding_concat);
  m.impl("embedding_concat_backward.cuda", &pimm_fast::cuda::embedding_concat_backward);
  m.impl("pim_attention.cuda", &pimm_fast::cuda::pim_attention);
  m.impl("pim_attention_backward.cuda", &pimm_fast::cuda::pim_attention_backward);
  m.impl("embedding_bags_concat.cuda", &pimm_fast::cuda::embedding_bags_concat);
  m.impl("embedding_bags_concat_backward.cuda", &pimm_fast::cuda::embedding_bags_concat_backward);
  m.impl("embedding_update_sgd.cuda", &pimm_fast::cuda::embedding_update_sgd);
  m.impl("embedding_update_rowwise_adagrad.cuda", &pimm_fast::cuda::embedding_update_rowwise_adagrad);
  m.impl("embedding_update_adam.cuda", &pimm_fast::cuda::embedding_update_adam);
}
#endif
