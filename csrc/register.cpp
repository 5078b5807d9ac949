// The one place where kernels meet the dispatcher. The schemas are defined in Python
// (pimm_fast/ops/schemas.py) before this library is loaded; each backend's kernels register for the
// overload that carries the backend's name. A C++ signature that does not match its schema fails
// when the library loads.
#include <torch/library.h>

#include "ops.h"

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
