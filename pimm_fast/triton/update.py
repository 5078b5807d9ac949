"""Fused optimizer steps for the embedding table in Triton (SGD, row-wise Adagrad, lazy Adam).

The touched rows are sorted (a stable ``torch.sort``, no host synchronisation) and the gradients of each
run of equal rows are summed by a two-level segmented reduction, so that no program walks a long run:

1. ``_chunk_kernel``, one program per chunk of CHUNK sorted positions. The chunk boundaries cut the runs
   into segments of at most CHUNK positions; a program sums its chunk's segments side by side, each in
   value order (one position per step). A run that lies within its chunk is finished there: its row and
   optimizer state are updated once. A run that crosses a chunk boundary leaves its segments' sums:
   ``heads[c]`` for the chunk c where it starts, ``tails[k]`` for every later chunk k it reaches (a chunk
   holds at most one segment of each kind).
2. ``_combine_kernel``, one program per BOUNDS chunk ends. For each chunk end crossed by a run that
   starts in that chunk (in position order), it adds the run's partials, ``heads[c]`` then ``tails[c+1..]``
   in chunk order, BLOCK_C at a time (each block reduced by ``tl.sum``), and updates the row and its state
   once.

A run of L positions takes at most CHUNK steps in each of its L / CHUNK stage-1 programs (in parallel) and
L / (CHUNK * BLOCK_C) steps in stage 2, against L steps in one program before: a hot row (a field with a
handful of values makes runs as long as the batch / values) no longer serialises the launch. Each row is
written by exactly one program, and each sum has a fixed order (value order within a segment, then chunk
order, with the fixed tree of ``tl.sum`` within a block of partials) that depends on the positions only,
not on launch timing: no atomics, bit-identical runs, and ``torch.use_deterministic_algorithms`` changes
nothing here.

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

CHUNK = 16  # sorted positions per stage-1 program: its longest serial sum (at 32 fp64 Adagrad spills)
BOUNDS = 16  # chunk ends checked per stage-2 program (it updates the runs crossing them one after the other)
BLOCK_C = 64  # partials of one run added per stage-2 step
SGD, ADAGRAD, ADAM = 0, 1, 2
# hyperparameter slots (the kernels index hp_ptr with these numbers)
LR, EPS, ONE_MINUS_B1, ONE_MINUS_B2, STEP_SIZE = range(5)


@triton.jit
def _segment_grad(grad_ptr, perm_ptr, i, start, length, max_len, cols, cmask, D, CHUNK: tl.constexpr,
                  BLOCK_D: tl.constexpr):
    """Sum of the gradients of each segment starting at `start`, in value order, columns `cols`: [CHUNK, BLOCK_D]."""
    g = tl.zeros((CHUNK, BLOCK_D), dtype=grad_ptr.dtype.element_ty)
    for j in range(0, max_len):
        vmask = start & (j < length)
        src = tl.load(perm_ptr + i + j, mask=vmask, other=0)
        g += tl.load(grad_ptr + src[:, None] * D + cols[None, :], mask=vmask[:, None] & cmask[None, :], other=0.0)
    return g


@triton.jit
def _adagrad_denominator(hp_ptr, s1_ptr, row, sq, mask, D):
    """Row-wise Adagrad's accumulator G_r += mean(g_r^2), stored; returns sqrt(G_r) + eps."""
    acc = tl.load(s1_ptr + row, mask=mask, other=0.0) + sq / D
    tl.store(s1_ptr + row, acc, mask=mask)
    return tl.sqrt(acc) + tl.load(hp_ptr + 1)


@triton.jit
def _apply(hp_ptr, w_ptr, s1_ptr, s2_ptr, offs, mask, g, denom, OPT: tl.constexpr):
    """One optimizer step on the elements `offs` (row * D + column) where `mask`, with the summed gradient g."""
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(hp_ptr.dtype.element_ty)
    if OPT == 0:  # SGD: w_r -= lr g_r
        w = w - tl.load(hp_ptr + 0) * g
    elif OPT == 1:  # row-wise Adagrad: w_r -= lr g_r / (sqrt(G_r) + eps), the denominator from _adagrad_denominator
        w = w - tl.load(hp_ptr + 0) * g / denom
    else:  # lazy Adam on the touched rows
        m = tl.load(s1_ptr + offs, mask=mask, other=0.0)
        v = tl.load(s2_ptr + offs, mask=mask, other=0.0)
        m += (g - m) * tl.load(hp_ptr + 2)
        v += (g * g - v) * tl.load(hp_ptr + 3)
        tl.store(s1_ptr + offs, m, mask=mask)
        tl.store(s2_ptr + offs, v, mask=mask)
        w = w - tl.load(hp_ptr + 4) * m / (tl.sqrt(v) + tl.load(hp_ptr + 1))
    tl.store(w_ptr + offs, w.to(w_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _chunk_kernel(rows_ptr, perm_ptr, end_ptr, grad_ptr, hp_ptr, w_ptr, s1_ptr, s2_ptr, tail_ptr, head_ptr, n, D,
                  OPT: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr):
    """Stage 1: the segments of one chunk; updates the runs that lie in it, stores the others' partials."""
    chunk = tl.program_id(0).to(tl.int64)
    first = chunk * CHUNK
    i = first + tl.arange(0, CHUNK)
    imask = i < n
    chunk_end = tl.minimum(first + CHUNK, n)
    row = tl.load(rows_ptr + i, mask=imask, other=-1)
    prev = tl.load(rows_ptr + i - 1, mask=imask & (i > 0), other=-1)
    head = imask & (row != prev)  # first position of a run
    start = head | (imask & (i == first))  # first position of a segment (a run cut at the chunk's start)
    end = tl.load(end_ptr + i, mask=start, other=0)  # end of the segment's run (exclusive)
    length = tl.where(start, tl.minimum(end, chunk_end) - i, 0)
    max_len = tl.max(length, 0)
    whole = head & (end <= chunk_end)  # the run lies in this chunk: updated here
    leaves = head & (end > chunk_end)  # the run starts here and goes on: its partial in `heads`
    enters = start & (row == prev)  # the run comes from an earlier chunk: its partial in `tails`
    any_leaves = tl.max(leaves.to(tl.int32), 0) > 0
    any_enters = tl.max(enters.to(tl.int32), 0) > 0
    dst = row[:, None] * D
    if OPT == 1:
        sq = tl.zeros((CHUNK,), dtype=hp_ptr.dtype.element_ty)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            g = _segment_grad(grad_ptr, perm_ptr, i, start, length, max_len, cols, cols < D, D, CHUNK, BLOCK_D)
            sq += tl.sum(g * g, 1)
        denom = _adagrad_denominator(hp_ptr, s1_ptr, row, sq, whole, D)[:, None]
    else:
        denom = tl.load(hp_ptr + 0)  # unused
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        cmask = cols < D
        g = _segment_grad(grad_ptr, perm_ptr, i, start, length, max_len, cols, cmask, D, CHUNK, BLOCK_D)
        # a chunk has at most one segment of each kind: picked out of the tile by a sum with zeros
        tl.store(head_ptr + chunk * D + cols, tl.sum(tl.where(leaves[:, None], g, 0.0), 0), mask=cmask & any_leaves)
        tl.store(tail_ptr + chunk * D + cols, tl.sum(tl.where(enters[:, None], g, 0.0), 0), mask=cmask & any_enters)
        _apply(hp_ptr, w_ptr, s1_ptr, s2_ptr, dst + cols[None, :], whole[:, None] & cmask[None, :], g, denom, OPT)


@triton.jit
def _run_grad(tail_ptr, head_ptr, chunk, tail, cols, cmask, D, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    """The gradient of the run that starts in `chunk` and reaches `tail` later chunks: its partials added in
    chunk order, BLOCK_C at a time (a fixed tree within a block), columns `cols`: [BLOCK_D]."""
    g = tl.load(head_ptr + chunk * D + cols, mask=cmask, other=0.0)
    k = tl.arange(0, BLOCK_C)
    for k0 in range(0, tail, BLOCK_C):
        block = tail_ptr + (chunk + 1 + k0) * D  # int64 offset of the block; k * D + cols within it
        tile = tl.load(block + k[:, None] * D + cols[None, :], mask=(k0 + k < tail)[:, None] & cmask[None, :],
                       other=0.0)
        g += tl.sum(tile, 0)
    return g


@triton.jit
def _update_run(hp_ptr, w_ptr, s1_ptr, s2_ptr, tail_ptr, head_ptr, chunk, row, tail, D, OPT: tl.constexpr,
                BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    """One optimizer step on `row`, whose run starts in `chunk` and reaches `tail` later chunks."""
    if OPT == 1:
        sq = tl.zeros((), dtype=hp_ptr.dtype.element_ty)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            g = _run_grad(tail_ptr, head_ptr, chunk, tail, cols, cols < D, D, BLOCK_C, BLOCK_D)
            sq += tl.sum(g * g, 0)
        denom = _adagrad_denominator(hp_ptr, s1_ptr, row, sq, True, D)
    else:
        denom = tl.load(hp_ptr + 0)  # unused
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        cmask = cols < D
        g = _run_grad(tail_ptr, head_ptr, chunk, tail, cols, cmask, D, BLOCK_C, BLOCK_D)
        _apply(hp_ptr, w_ptr, s1_ptr, s2_ptr, row * D + cols, cmask, g, denom, OPT)


@triton.jit
def _combine_kernel(rows_ptr, end_ptr, hp_ptr, w_ptr, s1_ptr, s2_ptr, tail_ptr, head_ptr, chunks, D,
                    OPT: tl.constexpr, CHUNK: tl.constexpr, BOUNDS: tl.constexpr, BLOCK_C: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    """Stage 2 for the ends of BOUNDS chunks: updates, one after the other, the runs that cross the end of
    one of these chunks and start in it."""
    c = tl.program_id(0).to(tl.int64) * BOUNDS + tl.arange(0, BOUNDS)
    valid = c < chunks - 1  # a later chunk exists
    last = c * CHUNK + CHUNK - 1  # the chunk's last position
    row = tl.load(rows_ptr + last, mask=valid, other=-1)
    goes_on = valid & (tl.load(rows_ptr + last + 1, mask=valid, other=-1) == row)
    before = tl.load(rows_ptr + c * CHUNK - 1, mask=valid & (c > 0), other=-1)
    mine = goes_on & (before != row)  # the run crosses the chunk's end and starts in the chunk
    end = tl.load(end_ptr + last, mask=mine, other=0)
    tail = tl.where(mine, (end - 1) // CHUNK - c, 0)  # later chunks the run reaches
    rank = tl.cumsum(mine.to(tl.int32), 0)
    for r in range(1, tl.sum(mine.to(tl.int32), 0) + 1):  # the crossing runs, in position order
        pick = mine & (rank == r)
        _update_run(hp_ptr, w_ptr, s1_ptr, s2_ptr, tail_ptr, head_ptr, tl.sum(tl.where(pick, c, 0), 0),
                    tl.sum(tl.where(pick, row, 0), 0), tl.sum(tl.where(pick, tail, 0), 0), D, OPT, BLOCK_C,
                    BLOCK_D)


def _prepare(op: str, grad_values, values, value_offsets, field_offsets, weight):
    """Checks everything before anything is written; returns (sorted rows, permutation, run ends, grads)."""
    _checks.check_update(grad_values, values, value_offsets, field_offsets, weight)
    if not weight.is_contiguous():
        raise ValueError(f"{op}: weight must be contiguous (it is updated in place)")
    _checks.check_values_in_range(values, value_offsets, field_offsets, weight.shape[0])
    if weight.shape[1] * BLOCK_C >= 2**31:  # stage 2 addresses a block of partials with int32 offsets
        raise ValueError(f"{op}: rows of {weight.shape[1]} columns are too wide for the Triton kernels "
                         f"(at most {(2**31 - 1) // BLOCK_C})")
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
    chunks = triton.cdiv(n, CHUNK)
    tails, heads = torch.empty(2, chunks, D, dtype=grad.dtype, device=grad.device)  # only read where written
    s1 = s1 if s1 is not None else grad
    s2 = s2 if s2 is not None else grad
    with device_guard(weight):
        _chunk_kernel[(chunks,)](sorted_rows, perm, ends, grad, hp, weight, s1, s2, tails, heads, n, D, OPT=opt,
                                 CHUNK=CHUNK, BLOCK_D=block_d(D))
        if chunks > 1:  # after stage 1 on the same stream: every partial is written
            _combine_kernel[(triton.cdiv(chunks - 1, BOUNDS),)](
                sorted_rows, ends, hp, weight, s1, s2, tails, heads, chunks, D, OPT=opt, CHUNK=CHUNK, BOUNDS=BOUNDS,
                BLOCK_C=BLOCK_C, BLOCK_D=block_d(D))


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
