"""pimm_fast's fused ops, callable with a ``backend=`` choice.

How a call travels: ``pimm_fast.ops.pim_attention(..., backend="auto")`` resolves the backend for the
tensors' device; "reference" runs ``pimm_fast.reference`` (plain PyTorch, native autograd), any other
backend calls the torch.library overload ``torch.ops.pimm_fast.pim_attention.<backend>``, whose
autograd formula calls ``torch.ops.pimm_fast.pim_attention_backward.<backend>``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .. import _extension  # noqa: F401  (loads the C++/CUDA kernels and, with them, the op schemas)
from . import schemas, registration  # noqa: F401  (the schemas if the library is not loaded; fakes, autograd)
from . import triton_impl  # noqa: F401  (Python-launched Triton kernels)
from .. import reference
from .backends import BACKENDS, available_backends, is_available, resolve_backend
from .schemas import KERNEL_BACKENDS, op

__all__ = [
    "BACKENDS", "KERNEL_BACKENDS", "available_backends", "is_available", "resolve_backend", "op",
    "embedding_concat", "embedding_bags_concat", "pim_attention", "validate_labels", "as_p", "as_seed",
]


def as_p(p: Union[float, torch.Tensor]) -> torch.Tensor:
    """p as the 0-dim float32 tensor the ops take (a tensor keeps torch.compile from recompiling)."""
    return p if isinstance(p, torch.Tensor) else torch.tensor(float(p), dtype=torch.float32)


def as_seed(seed: Union[int, torch.Tensor]) -> torch.Tensor:
    return seed if isinstance(seed, torch.Tensor) else torch.tensor(int(seed), dtype=torch.int64)


def embedding_concat(indices: torch.Tensor, weight: torch.Tensor, field_offsets: torch.Tensor,
                     backend: str = "auto") -> torch.Tensor:
    """Gather one row per field from the flat table and concatenate: [B, F] ids -> [B, F*D]."""
    chosen = resolve_backend(backend, weight.device)
    if chosen == "reference":
        return reference.embedding_concat(indices, weight, field_offsets)
    return op("embedding_concat", chosen)(indices, weight, field_offsets)


def embedding_bags_concat(values: torch.Tensor, bag_offsets: torch.Tensor, weight: torch.Tensor,
                          field_offsets: torch.Tensor, pooling: Sequence[int], backend: str = "auto") -> torch.Tensor:
    """Pool each field's bag of ids (sum or mean) and concatenate: field-major bags -> [B, F*D]."""
    chosen = resolve_backend(backend, weight.device)
    if chosen == "reference":
        return reference.embedding_bags_concat(values, bag_offsets, weight, field_offsets, pooling)
    if not schemas.has_op("embedding_bags_concat", chosen):
        raise RuntimeError(f"backend {chosen!r} has no multi-hot (bags) kernel; use 'cpp', 'cuda', 'triton' or 'reference'")
    return op("embedding_bags_concat", chosen)(values, bag_offsets, weight, field_offsets, list(pooling))


def pim_attention(v: torch.Tensor, h_prev: torch.Tensor, label_prev: Optional[torch.Tensor],
                  pred_prev: torch.Tensor, w_prior: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor,
                  w_v: torch.Tensor, p: Union[float, torch.Tensor], seed: Union[int, torch.Tensor],
                  b_q: Optional[torch.Tensor] = None, b_k: Optional[torch.Tensor] = None,
                  b_v: Optional[torch.Tensor] = None, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The PIM module of one task (see ``pimm_fast.reference.pim_attention``): returns (U, select)."""
    chosen = resolve_backend(backend, v.device)
    args = (v, h_prev, label_prev, pred_prev, w_prior, w_q, w_k, w_v, as_p(p), as_seed(seed))
    if chosen == "reference":
        return reference.pim_attention(*args, b_q=b_q, b_k=b_k, b_v=b_v)
    return op("pim_attention", chosen)(*args, b_q, b_k, b_v)


def validate_labels(labels: torch.Tensor, num_tasks: int, cascade: bool = True) -> torch.Tensor:
    """Check labels [B, T] (0/1 and, with ``cascade``, y_t = 1 implies y_{t-1} = 1); return them as float32.

    An op with a C++ kernel and a side effect, so that the data-dependent checks run (with their
    detailed messages) under torch.compile and in exported programs, even where the output is unused.
    """
    return torch.ops.pimm_fast.validate_labels(labels, num_tasks, cascade)
