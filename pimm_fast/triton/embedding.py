"""Embedding lookups in Triton: dense ids [B, F] and multi-hot bags, forward and backward.

Grids are 1-D (axis 0 allows 2^31 - 1 programs; axes 1 and 2 only 65535). Every offset that can pass
2^31 (sample * F * D, row * D) is computed in int64. Kernels loop over D in steps of at most
MAX_BLOCK_D columns, so any width compiles to the same small tile.

The backward kernels scatter with atomic adds (fast, order-dependent). Under
``torch.use_deterministic_algorithms(True)`` the backward uses ``index_add_`` instead, which PyTorch
makes deterministic on CUDA in that mode.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _checks
from ._common import (block_d, check_embedding_bags_backward, check_embedding_concat_backward, compute_dtype,
                      device_guard)

BLOCK_B = 32  # samples (or bags) per program


@triton.jit
def _gather_kernel(ids_ptr, w_ptr, off_ptr, out_ptr, B, F, D, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    f = pid % F
    samples = (pid // F).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    smask = samples < B
    rows = tl.load(off_ptr + f) + tl.load(ids_ptr + samples * F + f, mask=smask, other=0).to(tl.int64)
    src = w_ptr + rows[:, None] * D
    dst = out_ptr + samples[:, None] * F * D + f.to(tl.int64) * D
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = smask[:, None] & (cols < D)[None, :]
        tl.store(dst + cols[None, :], tl.load(src + cols[None, :], mask=mask), mask=mask)


@triton.jit
def _scatter_add_kernel(grad_ptr, ids_ptr, off_ptr, acc_ptr, B, F, D, BLOCK_B: tl.constexpr,
                        BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    f = pid % F
    samples = (pid // F).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    smask = samples < B
    rows = tl.load(off_ptr + f) + tl.load(ids_ptr + samples * F + f, mask=smask, other=0).to(tl.int64)
    src = grad_ptr + samples[:, None] * F * D + f.to(tl.int64) * D
    dst = acc_ptr + rows[:, None] * D
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = smask[:, None] & (cols < D)[None, :]
        g = tl.load(src + cols[None, :], mask=mask)
        tl.atomic_add(dst + cols[None, :], g.to(acc_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bags_kernel(values_ptr, bag_off_ptr, w_ptr, off_ptr, mean_ptr, out_ptr, grad_ptr, acc_ptr, B, F, D,
                 BACKWARD: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """BLOCK_B bags k = f*B + b per program. Forward: out[b, f*D + j] = pool_v weight[off_f + v, j].
    Backward: acc[off_f + v, j] += scale_k * grad[b, f*D + j] for every value v of bag k."""
    k = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    kmask = k < F * B
    f = tl.where(kmask, k // B, 0)
    b = k - f * B
    start = tl.load(bag_off_ptr + k, mask=kmask, other=0)
    length = tl.load(bag_off_ptr + k + 1, mask=kmask, other=0) - start
    is_mean = tl.load(mean_ptr + f, mask=kmask, other=0) != 0
    ct = acc_ptr.dtype.element_ty  # the compute type (fp32, or fp64 for fp64 tables)
    scale = tl.where(is_mean, 1.0 / tl.maximum(length, 1).to(ct), 1.0)
    base = tl.load(off_ptr + f, mask=kmask, other=0)
    out_row = b[:, None] * F * D + f[:, None] * D
    max_len = tl.max(length, 0)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        cmask = (cols < D)[None, :]
        if BACKWARD:
            g = tl.load(grad_ptr + out_row + cols[None, :], mask=kmask[:, None] & cmask, other=0.0).to(ct)
            g = g * scale[:, None]
            for j in range(0, max_len):
                vmask = kmask & (j < length)
                row = base + tl.load(values_ptr + start + j, mask=vmask, other=0).to(tl.int64)
                tl.atomic_add(acc_ptr + row[:, None] * D + cols[None, :], g, mask=vmask[:, None] & cmask)
        else:
            pooled = tl.zeros((BLOCK_B, BLOCK_D), dtype=ct)
            for j in range(0, max_len):
                vmask = kmask & (j < length)
                row = base + tl.load(values_ptr + start + j, mask=vmask, other=0).to(tl.int64)
                pooled += tl.load(w_ptr + row[:, None] * D + cols[None, :], mask=vmask[:, None] & cmask,
                                  other=0.0).to(ct)
            pooled = pooled * scale[:, None]
            tl.store(out_ptr + out_row + cols[None, :], pooled.to(out_ptr.dtype.element_ty),
                     mask=kmask[:, None] & cmask)


def _programs(B: int, F: int) -> tuple[int]:
    return (triton.cdiv(B, BLOCK_B) * F,)


def _rows(indices: torch.Tensor, field_offsets: torch.Tensor) -> torch.Tensor:
    return (indices.long() + field_offsets).reshape(-1)


def embedding_concat(indices: torch.Tensor, weight: torch.Tensor, field_offsets: torch.Tensor) -> torch.Tensor:
    _checks.check_embedding_concat(indices, weight, field_offsets)
    _checks.check_ids_in_range(indices, field_offsets, weight.shape[0])  # the kernel then never reads out of bounds
    ids, table = indices.contiguous(), weight.contiguous()
    B, F = ids.shape
    D = table.shape[1]
    out = table.new_empty(B, F * D)
    if out.numel():
        with device_guard(table):
            _gather_kernel[_programs(B, F)](ids, table, field_offsets.contiguous(), out, B, F, D, BLOCK_B=BLOCK_B,
                                            BLOCK_D=block_d(D))
    return out


def embedding_concat_backward(grad_out: torch.Tensor, indices: torch.Tensor, field_offsets: torch.Tensor,
                              num_rows: int) -> torch.Tensor:
    check_embedding_concat_backward(grad_out, indices)
    # A direct call (not through autograd, whose forward checked them) may carry any ids: check them
    # so that the scatter never writes out of bounds.
    _checks.check_ids_in_range(indices, field_offsets, num_rows)
    ids, grad = indices.contiguous(), grad_out.contiguous()
    B, F = ids.shape
    D = grad.shape[1] // F if F else 0
    acc = torch.zeros(num_rows, D, dtype=compute_dtype(grad.dtype), device=grad.device)
    if grad.numel() == 0:
        return acc.to(grad.dtype)
    if torch.are_deterministic_algorithms_enabled():
        acc.index_add_(0, _rows(ids, field_offsets), grad.reshape(B * F, D).to(acc.dtype))
    else:
        with device_guard(grad):
            _scatter_add_kernel[_programs(B, F)](grad, ids, field_offsets.contiguous(), acc, B, F, D,
                                                 BLOCK_B=BLOCK_B, BLOCK_D=block_d(D))
    return acc.to(grad.dtype)


def _mean_codes(pooling, device) -> torch.Tensor:
    return torch.tensor(list(pooling), dtype=torch.int32).to(device, non_blocking=True)


def _check_bag_ids(values, bag_offsets, field_offsets, num_rows) -> None:
    from .. import reference  # noqa: PLC0415  (reference imports nothing from here)

    op = "embedding_bags_concat"
    n = values.numel()
    ok = (bag_offsets[0] == 0) & (bag_offsets[-1] == n) & (bag_offsets[1:] >= bag_offsets[:-1]).all()
    _checks.require(ok, ValueError, f"{op}: bag_offsets must run from 0 to the number of values without decreasing",
                    lambda: f"{op}: bag_offsets must run from 0 to the number of values ({n}) without decreasing")
    _checks.check_values_in_range(values, reference.bag_value_offsets(bag_offsets, field_offsets.numel()),
                                  field_offsets, num_rows)


def embedding_bags_concat(values: torch.Tensor, bag_offsets: torch.Tensor, weight: torch.Tensor,
                          field_offsets: torch.Tensor, pooling) -> torch.Tensor:
    _checks.check_embedding_bags(values, bag_offsets, weight, field_offsets, pooling)
    _check_bag_ids(values, bag_offsets, field_offsets, weight.shape[0])
    F = field_offsets.numel()
    B = (bag_offsets.numel() - 1) // F if F else 0
    D = weight.shape[1]
    table = weight.contiguous()
    out = table.new_empty(B, F * D)
    if out.numel():
        scratch = torch.empty(0, dtype=compute_dtype(table.dtype), device=table.device)  # carries the compute type
        with device_guard(table):
            _bags_kernel[(triton.cdiv(F * B, BLOCK_B),)](
                values.contiguous(), bag_offsets.contiguous(), table, field_offsets.contiguous(),
                _mean_codes(pooling, table.device), out, out, scratch, B, F, D, BACKWARD=False, BLOCK_B=BLOCK_B,
                BLOCK_D=block_d(D))
    return out


def embedding_bags_concat_backward(grad_out: torch.Tensor, values: torch.Tensor, bag_offsets: torch.Tensor,
                                   field_offsets: torch.Tensor, pooling, num_rows: int) -> torch.Tensor:
    check_embedding_bags_backward(grad_out, bag_offsets, field_offsets)
    _check_bag_ids(values, bag_offsets, field_offsets, num_rows)
    F = field_offsets.numel()
    B = (bag_offsets.numel() - 1) // F
    D = grad_out.shape[1] // F
    grad = grad_out.contiguous()
    acc = torch.zeros(num_rows, D, dtype=compute_dtype(grad.dtype), device=grad.device)
    if grad.numel() == 0 or values.numel() == 0:
        return acc.to(grad.dtype)
    if torch.are_deterministic_algorithms_enabled():
        from .. import reference  # noqa: PLC0415

        return reference.embedding_bags_concat_backward(grad, values, bag_offsets, field_offsets, pooling, num_rows)
    with device_guard(grad):
        _bags_kernel[(triton.cdiv(F * B, BLOCK_B),)](
            values.contiguous(), bag_offsets.contiguous(), grad, field_offsets.contiguous(),
            _mean_codes(pooling, grad.device), grad, grad, acc, B, F, D, BACKWARD=True, BLOCK_B=BLOCK_B,
            BLOCK_D=block_d(D))
    return acc.to(grad.dtype)
