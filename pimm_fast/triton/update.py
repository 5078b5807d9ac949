"""Fused optimizer steps for the embedding table in Triton (SGD, row-wise Adagrad, lazy Adam).

The touched rows are sorted (a stable ``torch.sort``, no host synchronisation); the first position of
each run of equal rows (its head) sums the gradients of the run in value order and updates the row and
its optimizer state once. Each row is written by exactly one program, in a fixed order: the result is
deterministic and needs no atomics, so ``torch.use_deterministic_algorithms`` changes nothing here.

Hyperparameters travel as a small tensor in the compute type (fp64 for fp64 tables), so that no
precision is lost to Triton's fp32 scalar arguments, and Adam's bias correction is computed in fp64
on the step counter's device (no host read of a GPU step).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import _checks
from ._common import block_d, check_state, check_step, compute_dtype, device_guard

BLOCK_N = 16  # sorted positions per program (32 spills in fp64 Adagrad)
SGD, ADAGRAD, ADAM = 0, 1, 2
# hyperparameter slots
LR, EPS, ONE_MINUS_B1, ONE_MINUS_B2, STEP_SIZE = range(5)


@triton.jit
def _segment_grad(grad_ptr, perm_ptr, i, head, length, max_len, cols, cmask, D, BLOCK_N: tl.constexpr,
                  BLOCK_D: tl.constexpr):
    """Sum of the gradients of each head's run of equal rows, columns `cols`: [BLOCK_N, BLOCK_D]."""
    g = tl.zeros((BLOCK_N, BLOCK_D), dtype=grad_ptr.dtype.element_ty)
    for j in range(0, max_len):
        vmask = head & (j < length)
        src = tl.load(perm_ptr + i + j, mask=vmask, other=0)
        g += tl.load(grad_ptr + src[:, None] * D + cols[None, :], mask=vmask[:, None] & cmask[None, :], other=0.0)
    return g


@triton.jit
def _update_kernel(rows_ptr, perm_ptr, end_ptr, grad_ptr, hp_ptr, w_ptr, s1_ptr, s2_ptr, n, D, OPT: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    imask = i < n
    row = tl.load(rows_ptr + i, mask=imask, other=-1)
    prev = tl.load(rows_ptr + i - 1, mask=imask & (i > 0), other=-1)
    head = imask & (row != prev)
    length = tl.where(head, tl.load(end_ptr + i, mask=head, other=0) - i, 0)
    max_len = tl.max(length, 0)
    ct = grad_ptr.dtype.element_ty
    lr = tl.load(hp_ptr + 0)
    eps = tl.load(hp_ptr + 1)
    dst = row[:, None] * D
    if OPT == 1:  # row-wise Adagrad: G_r += mean(g_r^2); w_r -= lr g_r / (sqrt(G_r) + eps)
        sq = tl.zeros((BLOCK_N,), dtype=ct)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            g = _segment_grad(grad_ptr, perm_ptr, i, head, length, max_len, cols, cols < D, D, BLOCK_N, BLOCK_D)
            sq += tl.sum(g * g, 1)
        acc = tl.load(s1_ptr + row, mask=head, other=0.0) + sq / D
        tl.store(s1_ptr + row, acc, mask=head)
        scale = lr / (tl.sqrt(acc) + eps)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        cmask = cols < D
        mask = head[:, None] & cmask[None, :]
        g = _segment_grad(grad_ptr, perm_ptr, i, head, length, max_len, cols, cmask, D, BLOCK_N, BLOCK_D)
        w = tl.load(w_ptr + dst + cols[None, :], mask=mask, other=0.0).to(ct)
        if OPT == 0:
            w = w - lr * g
        elif OPT == 1:
            w = w - scale[:, None] * g
        else:  # lazy Adam on the touched rows
            m = tl.load(s1_ptr + dst + cols[None, :], mask=mask, other=0.0)
            v = tl.load(s2_ptr + dst + cols[None, :], mask=mask, other=0.0)
            m += (g - m) * tl.load(hp_ptr + 2)
            v += (g * g - v) * tl.load(hp_ptr + 3)
            tl.store(s1_ptr + dst + cols[None, :], m, mask=mask)
            tl.store(s2_ptr + dst + cols[None, :], v, mask=mask)
            w = w - tl.load(hp_ptr + 4) * m / (tl.sqrt(v) + eps)
        tl.store(w_ptr + dst + cols[None, :], w.to(w_ptr.dtype.element_ty), mask=mask)


def _prepare(op: str, grad_values, values, value_offsets, field_offsets, weight):
    """Checks everything before anything is written; returns (sorted rows, permutation, run ends, grads)."""
    _checks.check_update(grad_values, values, value_offsets, field_offsets, weight)
    if not weight.is_contiguous():
        raise ValueError(f"{op}: weight must be contiguous (it is updated in place)")
    _checks.check_values_in_range(values, value_offsets, field_offsets, weight.shape[0])
    n = values.numel()
    rows = values.long() + field_offsets.repeat_interleave(torch.diff(value_offsets), output_size=n)
    sorted_rows, perm = torch.sort(rows, stable=True)
    ends = torch.searchsorted(sorted_rows, sorted_rows, right=True)
    return sorted_rows, perm, ends, grad_values.to(compute_dtype(weight.dtype)).contiguous()


def _launch(opt: int, prepared, weight, hp, s1=None, s2=None) -> None:
    sorted_rows, perm, ends, grad = prepared
    n, D = grad.shape
    if n == 0 or D == 0:
        return
    with device_guard(weight):
        _update_kernel[(triton.cdiv(n, BLOCK_N),)](
            sorted_rows, perm, ends, grad, hp, weight, s1 if s1 is not None else grad,
            s2 if s2 is not None else grad, n, D, OPT=opt, BLOCK_N=BLOCK_N, BLOCK_D=block_d(D))


def _hparams(weight: torch.Tensor, lr: float, eps: float = 0.0, beta1: float = 0.0, beta2: float = 0.0,
             step_size=0.0) -> torch.Tensor:
    # 1 - beta in double first: 1 - float(0.999) is off by 1e-5 relative
    hp = torch.tensor([lr, eps, 1.0 - beta1, 1.0 - beta2, 0.0], dtype=torch.float64).to(weight.device)
    if isinstance(step_size, torch.Tensor):
        hp[STEP_SIZE] = step_size.to(weight.device)
    else:
        hp[STEP_SIZE] = step_size
    return hp.to(compute_dtype(weight.dtype))


@torch.no_grad()
def embedding_update_sgd(grad_values, values, value_offsets, field_offsets, weight, lr: float) -> None:
    prepared = _prepare("embedding_update_sgd", grad_values, values, value_offsets, field_offsets, weight)
    _launch(SGD, prepared, weight, _hparams(weight, lr))


@torch.no_grad()
def embedding_update_rowwise_adagrad(grad_values, values, value_offsets, field_offsets, weight, state_sum,
                                     lr: float, eps: float) -> None:
    op = "embedding_update_rowwise_adagrad"
    _checks.check_update(grad_values, values, value_offsets, field_offsets, weight)
    check_state(op, "state_sum", state_sum, weight, per_element=False)
    prepared = _prepare(op, grad_values, values, value_offsets, field_offsets, weight)
    _launch(ADAGRAD, prepared, weight, _hparams(weight, lr, eps), state_sum)


@torch.no_grad()
def embedding_update_adam(grad_values, values, value_offsets, field_offsets, weight, exp_avg, exp_avg_sq, step,
                          lr: float, beta1: float, beta2: float, eps: float) -> None:
    op = "embedding_update_adam"
    _checks.check_update(grad_values, values, value_offsets, field_offsets, weight)
    check_state(op, "exp_avg", exp_avg, weight, per_element=True)
    check_state(op, "exp_avg_sq", exp_avg_sq, weight, per_element=True)
    check_step(op, step, weight)
    prepared = _prepare(op, grad_values, values, value_offsets, field_offsets, weight)
    step.add_(1)  # one counter for the table, as torch.optim.SparseAdam
    if step.device.type == "cpu":
        t = int(step)
        step_size = lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
    else:  # bias correction in fp64 on the device: no host read of the counter
        t = step.to(torch.float64)
        step_size = lr * torch.sqrt(1 - torch.pow(beta2, t)) / (1 - torch.pow(beta1, t))
    _launch(ADAM, prepared, weight, _hparams(weight, lr, eps, beta1, beta2, step_size), exp_avg, exp_avg_sq)
