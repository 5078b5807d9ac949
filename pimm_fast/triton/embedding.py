"""Embedding lookup + concat in Triton: one program per (block of samples, field)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _checks

BLOCK_B = 64


@triton.jit
def _gather_kernel(ids_ptr, w_ptr, off_ptr, out_ptr, B, F, D, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    f = tl.program_id(1)
    samples = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_D)
    mask = (samples < B)[:, None] & (cols < D)[None, :]
    rows = tl.load(off_ptr + f) + tl.load(ids_ptr + samples * F + f, mask=samples < B, other=0).to(tl.int64)
    vals = tl.load(w_ptr + rows[:, None] * D + cols[None, :], mask=mask)
    tl.store(out_ptr + samples[:, None] * (F * D) + f * D + cols[None, :], vals, mask=mask)


@triton.jit
def _scatter_add_kernel(grad_ptr, ids_ptr, off_ptr, acc_ptr, B, F, D, BLOCK_B: tl.constexpr,
                        BLOCK_D: tl.constexpr):
    f = tl.program_id(1)
    samples = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_D)
    mask = (samples < B)[:, None] & (cols < D)[None, :]
    rows = tl.load(off_ptr + f) + tl.load(ids_ptr + samples * F + f, mask=samples < B, other=0).to(tl.int64)
    g = tl.load(grad_ptr + samples[:, None] * (F * D) + f * D + cols[None, :], mask=mask)
    tl.atomic_add(acc_ptr + rows[:, None] * D + cols[None, :], g.to(acc_ptr.dtype.element_ty), mask=mask)


def _grid(B: int, F: int):
    return (triton.cdiv(B, BLOCK_B), F)


def embedding_concat(indices: torch.Tensor, weight: torch.Tensor, field_offsets: torch.Tensor) -> torch.Tensor:
    _checks.check_embedding_concat(indices, weight, field_offsets)
    _checks.check_ids_in_range(indices, field_offsets, weight.shape[0])  # the kernel then never reads out of bounds
    ids, table = indices.contiguous(), weight.contiguous()
    B, F = ids.shape
    D = table.shape[1]
    out = table.new_empty(B, F * D)
    if out.numel():
        _gather_kernel[_grid(B, F)](ids, table, field_offsets.contiguous(), out, B, F, D, BLOCK_B=BLOCK_B,
                                    BLOCK_D=triton.next_power_of_2(D))
    return out


def embedding_concat_backward(grad_out: torch.Tensor, indices: torch.Tensor, field_offsets: torch.Tensor,
                              num_rows: int) -> torch.Tensor:
    ids, grad = indices.contiguous(), grad_out.contiguous()
    B, F = ids.shape
    D = grad.shape[1] // F if F else 0
    acc = torch.zeros(num_rows, D, dtype=torch.promote_types(grad.dtype, torch.float32), device=grad.device)
    if grad.numel():
        _scatter_add_kernel[_grid(B, F)](grad, ids, field_offsets.contiguous(), acc, B, F, D, BLOCK_B=BLOCK_B,
                                         BLOCK_D=triton.next_power_of_2(D))
    return acc.to(grad.dtype)
