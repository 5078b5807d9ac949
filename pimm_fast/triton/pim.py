"""The PIM module in Triton: one program per block of samples, fused from the draw to U.

Same algebra as the C++ kernels (csrc/pim_common.h): the score of token a is 0.5 a^T S a + c.a with
S = (Wq^T Wk + Wk^T Wq)/sqrt(d), c = (Wq^T bk + Wk^T bq)/sqrt(d), and U = v + Wv m + bv with
m = w0 v + w1 Zm. The backward recomputes the forward per block and writes per-block partial sums of the
weight gradients, which are then reduced with torch (deterministic: no atomics).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from .. import _checks

BLOCK_B = 32


@triton.jit
def _prior_and_mix(v_ptr, h_ptr, label_ptr, pred_ptr, sel_ptr, wp_ptr, S_ptr, c_ptr, p_ptr, seed_ptr, B, d,
                   DRAW: tl.constexpr, HAS_LABEL: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """Loads a block and recomputes y*, z, Zm, S v, S Zm, the softmax weight w0 and m = w0 v + (1-w0) Zm.

    DRAW: draw select from (seed, sample index); else read it from sel_ptr (the backward).
    Padded rows and columns are zero in every [BLOCK_B, BLOCK_D] tile that is returned.
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < B
    cmask = cols < d
    mask = rmask[:, None] & cmask[None, :]
    tile = rows[:, None] * d + cols[None, :]
    v = tl.load(v_ptr + tile, mask=mask, other=0.0)
    ct = v.dtype
    h = tl.load(h_ptr + tile, mask=mask, other=0.0)
    ystar = tl.load(pred_ptr + rows, mask=rmask, other=0.0).to(ct)
    sel = rows < 0  # all False
    if HAS_LABEL:
        if DRAW:
            sel = (tl.rand(tl.load(seed_ptr), rows) < tl.load(p_ptr)) & rmask
        else:
            sel = tl.load(sel_ptr + rows, mask=rmask, other=0) != 0
        label = tl.load(label_ptr + rows, mask=rmask, other=0).to(ct)
        ystar = tl.where(sel, label, ystar)
    wp = tl.load(wp_ptr + cols, mask=cmask, other=0.0)
    z = tl.where(mask, tl.sigmoid(ystar[:, None] * wp[None, :]), 0.0)
    zm = z + h
    S = tl.load(S_ptr + cols[:, None] * d + cols[None, :], mask=cmask[:, None] & cmask[None, :], other=0.0)
    c = tl.load(c_ptr + cols, mask=cmask, other=0.0)
    Sv = tl.dot(v, S, input_precision="ieee")
    Szm = tl.dot(zm, S, input_precision="ieee")
    s0 = 0.5 * tl.sum(v * Sv, 1) + tl.sum(v * c[None, :], 1)
    s1 = 0.5 * tl.sum(zm * Szm, 1) + tl.sum(zm * c[None, :], 1)
    w0 = tl.sigmoid(s0 - s1)
    m = w0[:, None] * v + (1.0 - w0)[:, None] * zm
    return rows, cols, rmask, cmask, mask, tile, v, z, zm, ystar, sel, Sv, Szm, c, w0, m


@triton.jit
def _forward_kernel(v_ptr, h_ptr, label_ptr, pred_ptr, wp_ptr, S_ptr, c_ptr, wv_ptr, bv_ptr, p_ptr, seed_ptr,
                    u_ptr, sel_ptr, B, d, HAS_LABEL: tl.constexpr, HAS_BV: tl.constexpr, BLOCK_B: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    rows, cols, rmask, cmask, mask, tile, v, z, zm, ystar, sel, Sv, Szm, c, w0, m = _prior_and_mix(
        v_ptr, h_ptr, label_ptr, pred_ptr, sel_ptr, wp_ptr, S_ptr, c_ptr, p_ptr, seed_ptr, B, d, True, HAS_LABEL,
        BLOCK_B, BLOCK_D)
    # Wv^T as a [d_in, d_out] tile: element (i, j) = Wv[j, i]
    wvT = tl.load(wv_ptr + cols[None, :] * d + cols[:, None], mask=cmask[:, None] & cmask[None, :], other=0.0)
    u = v + tl.dot(m, wvT, input_precision="ieee")
    if HAS_BV:
        u += tl.load(bv_ptr + cols, mask=cmask, other=0.0)[None, :]
    tl.store(u_ptr + tile, u.to(u_ptr.dtype.element_ty), mask=mask)
    tl.store(sel_ptr + rows, sel, mask=rmask)


@triton.jit
def _backward_kernel(g_ptr, v_ptr, h_ptr, label_ptr, pred_ptr, sel_ptr, wp_ptr, S_ptr, c_ptr, wv_ptr,
                     gv_ptr, gzm_ptr, part_vec_ptr, part_mat_ptr, B, d, HAS_LABEL: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    rows, cols, rmask, cmask, mask, tile, v, z, zm, ystar, sel, Sv, Szm, c, w0, m = _prior_and_mix(
        v_ptr, h_ptr, label_ptr, pred_ptr, sel_ptr, wp_ptr, S_ptr, c_ptr, sel_ptr, sel_ptr, B, d, False, HAS_LABEL,
        BLOCK_B, BLOCK_D)
    g = tl.load(g_ptr + tile, mask=mask, other=0.0).to(v.dtype)
    wv = tl.load(wv_ptr + cols[:, None] * d + cols[None, :], mask=cmask[:, None] & cmask[None, :], other=0.0)
    gm = tl.dot(g, wv, input_precision="ieee")  # dL/dm = Wv^T g (row form)
    w1 = 1.0 - w0
    gs = w0 * w1 * (tl.sum(gm * v, 1) - tl.sum(gm * zm, 1))  # dL/ds(v) = -dL/ds(Zm)
    gv = g + w0[:, None] * gm + gs[:, None] * (Sv + c[None, :])
    gzm = w1[:, None] * gm - gs[:, None] * (Szm + c[None, :])
    gv = tl.where(mask, gv, 0.0)
    gzm = tl.where(mask, gzm, 0.0)
    tl.store(gv_ptr + tile, gv.to(gv_ptr.dtype.element_ty), mask=mask)
    tl.store(gzm_ptr + tile, gzm.to(gzm_ptr.dtype.element_ty), mask=mask)
    # per-block partial sums: [w_prior grad, r, bv grad] and [G, Wv grad]
    pid = tl.program_id(0)
    vec = part_vec_ptr + pid * 3 * BLOCK_D + cols
    tl.store(vec, tl.sum(gzm * z * (1.0 - z) * ystar[:, None], 0))
    P = gs[:, None] * (v - zm)  # sum gs (v v^T - zm zm^T) = sym(P^T Q) with Q = v + zm: one product
    tl.store(vec + BLOCK_D, tl.sum(P, 0))
    tl.store(vec + 2 * BLOCK_D, tl.sum(g, 0))
    G = tl.dot(tl.trans(P), v + zm, input_precision="ieee")
    gwv = tl.dot(tl.trans(g), m, input_precision="ieee")
    mat = part_mat_ptr + pid * 2 * BLOCK_D * BLOCK_D + cols[:, None] * BLOCK_D + cols[None, :]
    tl.store(mat, G)
    tl.store(mat + BLOCK_D * BLOCK_D, gwv)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _score_form(w_q, w_k, b_q, b_k, ct):
    d = w_q.shape[0]
    q, k = w_q.to(ct), w_k.to(ct)
    qk = q.t() @ k
    c = torch.zeros(d, dtype=ct, device=q.device)
    if b_k is not None:
        c = c + q.t() @ b_k.to(ct)
    if b_q is not None:
        c = c + k.t() @ b_q.to(ct)
    return ((qk + qk.t()) / math.sqrt(d)).contiguous(), (c / math.sqrt(d)).contiguous()


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))  # tl.dot needs tiles of at least 16


def pim_attention(v, h_prev, label_prev, pred_prev, w_prior, w_q, w_k, w_v, p, seed, b_q=None, b_k=None,
                  b_v=None):
    _checks.check_pim_attention(v, h_prev, label_prev, pred_prev, w_prior, w_q, w_k, w_v, p, seed, b_q, b_k, b_v)
    _checks.check_pim_values(label_prev, pred_prev, p, seed)
    B, d = v.shape
    ct = _compute_dtype(v.dtype)
    S, c = _score_form(w_q, w_k, b_q, b_k, ct)
    u = torch.empty_like(v)
    select = torch.zeros(B, dtype=torch.bool, device=v.device)
    if B == 0:
        return u, select
    cast = lambda t: t.to(ct).contiguous()  # noqa: E731
    label = label_prev.contiguous() if label_prev is not None else pred_prev
    _forward_kernel[(triton.cdiv(B, BLOCK_B),)](
        cast(v), cast(h_prev), label, pred_prev.contiguous(), cast(w_prior), S, c, cast(w_v),
        cast(b_v) if b_v is not None else S, p.to(device=v.device, dtype=torch.float32),
        seed.to(v.device), u, select, B, d, HAS_LABEL=label_prev is not None, HAS_BV=b_v is not None,
        BLOCK_B=BLOCK_B, BLOCK_D=_block_d(d))
    return u, select


def pim_attention_backward(grad_u, v, h_prev, label_prev, pred_prev, w_prior, w_q, w_k, w_v, select,
                           b_q=None, b_k=None, b_v=None):
    B, d = v.shape
    ct = _compute_dtype(v.dtype)
    S, c = _score_form(w_q, w_k, b_q, b_k, ct)
    bd = _block_d(d)
    blocks = triton.cdiv(B, BLOCK_B)
    cast = lambda t: t.to(ct).contiguous()  # noqa: E731
    grad_v = torch.empty(B, d, dtype=ct, device=v.device)
    grad_zm = torch.empty(B, d, dtype=ct, device=v.device)
    part_vec = torch.zeros(blocks, 3, bd, dtype=ct, device=v.device)
    part_mat = torch.zeros(blocks, 2, bd, bd, dtype=ct, device=v.device)
    label = label_prev.contiguous() if label_prev is not None else pred_prev
    if B:
        _backward_kernel[(blocks,)](
            cast(grad_u), cast(v), cast(h_prev), label, pred_prev.contiguous(), select.contiguous(),
            cast(w_prior), S, c, cast(w_v), grad_v, grad_zm, part_vec, part_mat, B, d,
            HAS_LABEL=label_prev is not None, BLOCK_B=BLOCK_B, BLOCK_D=bd)
    # one reduction per output, so that no two outputs share storage
    g_wp, r, g_bv = (part_vec[:, i, :d].sum(0) for i in range(3))
    PQ, g_wv = (part_mat[:, i, :d, :d].sum(0) for i in range(2))
    G = (PQ + PQ.t()) * 0.5
    scale = 1.0 / math.sqrt(d)
    q, k = w_q.to(ct), w_k.to(ct)
    g_wq = k @ G
    g_wk = q @ G
    if b_k is not None:
        g_wq = g_wq + torch.outer(b_k.to(ct), r)
    if b_q is not None:
        g_wk = g_wk + torch.outer(b_q.to(ct), r)
    out = (grad_v, grad_zm, g_wp, g_wq * scale, g_wk * scale, g_wv, (k @ r) * scale, (q @ r) * scale, g_bv)
    return tuple(t.to(v.dtype) for t in out)
