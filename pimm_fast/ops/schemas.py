"""The one place where pimm_fast's operator schemas are written.

Every fused op is defined once per kernel backend, as an overload named after the backend:
``torch.ops.pimm_fast.pim_attention.cpp``, ``...pim_attention.cuda``, ``...pim_attention.triton``.
The overloads share one schema, so the C++/CUDA/Triton kernels, the fake kernels and the autograd
formulas are registered against identical contracts, and a caller (or a test) names the backend it
wants explicitly. The C++ library registers its kernels for these schemas with TORCH_LIBRARY_IMPL
(csrc/register.cpp); a signature mismatch fails loudly when the library loads.

The backward of each forward op is an op of its own, so torch.compile traces it as one node.
The "reference" backend is not an op: it is the plain PyTorch code of ``pimm_fast.reference``.
"""
from __future__ import annotations

import torch

NAMESPACE = "pimm_fast"
KERNEL_BACKENDS = ("cpp", "cuda", "triton")

FUSED_OPS = {
    "embedding_concat": "(Tensor indices, Tensor weight, Tensor field_offsets) -> Tensor",
    "embedding_concat_backward": (
        "(Tensor grad_out, Tensor indices, Tensor field_offsets, SymInt num_rows) -> Tensor"),
    "pim_attention": (
        "(Tensor v, Tensor h_prev, Tensor? label_prev, Tensor pred_prev, Tensor w_prior, Tensor w_q, "
        "Tensor w_k, Tensor w_v, Tensor p, Tensor seed, Tensor? b_q, Tensor? b_k, Tensor? b_v) "
        "-> (Tensor u, Tensor select)"),
    "pim_attention_backward": (
        "(Tensor grad_u, Tensor v, Tensor h_prev, Tensor? label_prev, Tensor pred_prev, Tensor w_prior, "
        "Tensor w_q, Tensor w_k, Tensor w_v, Tensor select, Tensor? b_q, Tensor? b_k, Tensor? b_v) "
        "-> (Tensor grad_v, Tensor grad_h_prev, Tensor grad_w_prior, Tensor grad_w_q, Tensor grad_w_k, "
        "Tensor grad_w_v, Tensor grad_b_q, Tensor grad_b_k, Tensor grad_b_v)"),
}

# Ops with a single implementation for every device (plain PyTorch run eagerly behind the op).
PLAIN_OPS = {
    "validate_labels": "(Tensor labels, int num_tasks) -> Tensor",
}

lib = torch.library.Library(NAMESPACE, "DEF")
for _name, _schema in FUSED_OPS.items():
    for _backend in KERNEL_BACKENDS:
        lib.define(f"{_name}.{_backend}{_schema}")
for _name, _schema in PLAIN_OPS.items():
    lib.define(f"{_name}{_schema}")


def op(name: str, backend: str) -> torch._ops.OpOverload:
    """The overload of fused op ``name`` for kernel ``backend``."""
    return getattr(getattr(torch.ops.pimm_fast, name), backend)


def qualname(name: str, backend: str | None = None) -> str:
    return f"{NAMESPACE}::{name}" + (f".{backend}" if backend else "")
