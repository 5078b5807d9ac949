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
_ALL = KERNEL_BACKENDS

_UPDATE_ARGS = "Tensor grad_values, Tensor values, Tensor value_offsets, Tensor field_offsets, Tensor(a!) weight"

# name -> (schema, backends that implement it)
FUSED_OPS = {
    "embedding_concat": ("(Tensor indices, Tensor weight, Tensor field_offsets) -> Tensor", _ALL),
    "embedding_concat_backward": (
        "(Tensor grad_out, Tensor indices, Tensor field_offsets, SymInt num_rows) -> Tensor", _ALL),
    "pim_attention": (
        "(Tensor v, Tensor h_prev, Tensor? label_prev, Tensor pred_prev, Tensor w_prior, Tensor w_q, "
        "Tensor w_k, Tensor w_v, Tensor p, Tensor seed, Tensor? b_q, Tensor? b_k, Tensor? b_v) "
        "-> (Tensor u, Tensor select)", _ALL),
    "pim_attention_backward": (
        "(Tensor grad_u, Tensor v, Tensor h_prev, Tensor? label_prev, Tensor pred_prev, Tensor w_prior, "
        "Tensor w_q, Tensor w_k, Tensor w_v, Tensor select, Tensor? b_q, Tensor? b_k, Tensor? b_v) "
        "-> (Tensor grad_v, Tensor grad_h_prev, Tensor grad_w_prior, Tensor grad_w_q, Tensor grad_w_k, "
        "Tensor grad_w_v, Tensor grad_b_q, Tensor grad_b_k, Tensor grad_b_v)", _ALL),
    # Multi-hot fields: field-major bags of ids pooled by sum (0) or mean (1) per field.
    "embedding_bags_concat": (
        "(Tensor values, Tensor bag_offsets, Tensor weight, Tensor field_offsets, int[] pooling) -> Tensor",
        _ALL),
    "embedding_bags_concat_backward": (
        "(Tensor grad_out, Tensor values, Tensor bag_offsets, Tensor field_offsets, int[] pooling, "
        "SymInt num_rows) -> Tensor", _ALL),
    # Fused optimizer steps: update the rows of `weight` (and their state) that the batch touched,
    # given field-major values and the gradient of each value's row.
    "embedding_update_sgd": (f"({_UPDATE_ARGS}, float lr) -> ()", _ALL),
    "embedding_update_rowwise_adagrad": (
        f"({_UPDATE_ARGS}, Tensor(b!) state_sum, float lr, float eps) -> ()", _ALL),
    "embedding_update_adam": (
        f"({_UPDATE_ARGS}, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor(d!) step, float lr, float beta1, "
        "float beta2, float eps) -> ()", _ALL),
}

# Ops with a single implementation for every device (plain PyTorch run eagerly behind the op).
PLAIN_OPS = {
    "validate_labels": "(Tensor labels, int num_tasks) -> Tensor",
}

lib = torch.library.Library(NAMESPACE, "DEF")
for _name, (_schema, _backends) in FUSED_OPS.items():
    for _backend in _backends:
        lib.define(f"{_name}.{_backend}{_schema}")
for _name, _schema in PLAIN_OPS.items():
    lib.define(f"{_name}{_schema}")


def has_op(name: str, backend: str) -> bool:
    return backend in FUSED_OPS[name][1]


def op(name: str, backend: str) -> torch._ops.OpOverload:
    """The overload of fused op ``name`` for kernel ``backend``."""
    return getattr(getattr(torch.ops.pimm_fast, name), backend)


def qualname(name: str, backend: str | None = None) -> str:
    return f"{NAMESPACE}::{name}" + (f".{backend}" if backend else "")
