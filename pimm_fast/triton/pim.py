"""The PIM module in Triton, the same algorithm as the CUDA kernels (csrc/cuda/pim_attention.cu).

Same algebra as every backend (csrc/pim_common.h): the score of token a is 0.5 a^T S a + c.a with
S = (Wq^T Wk + Wk^T Wq)/sqrt(d), c = (Wq^T bk + Wk^T bq)/sqrt(d), and U = v + Wv m + bv with
m = w0 v + w1 Zm.

The per-sample work (draw, prior, softmax weight, mix, input gradients) is fused in Triton kernels
that take BLOCK_B samples per program and loop over d in steps of at most MAX_BLOCK_D columns, so that
any d compiles to the same small tile without spilling (d up to 256 and beyond). The d x d products
(S v, S Zm, Wv m, Wv^T g, P^T Q, g^T m) go through torch.mm (cuBLAS), which also serves fp64 (Triton's
fp64 tl.dot does not compile for sm_90 at the tile sizes needed). Reductions over samples are
torch.sum on per-sample rows: deterministic, no atomics.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import _checks
from ._common import block_d, compute_dtype, device_guard

BLOCK_B = 32


@triton.jit
def _prior_kernel(h_ptr, label_ptr, pred_ptr, sel_ptr, p_ptr, seed_ptr, wp_ptr, ystar_ptr, zm_ptr, B, d,
                  DRAW: tl.constexpr, HAS_LABEL: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """select (drawn from (seed, sample) or read), y* = select ? label : pred, Zm = sigmoid(y* w_prior) + h."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    ct = zm_ptr.dtype.element_ty
    ystar = tl.load(pred_ptr + rows, mask=rmask, other=0.0).to(ct)
    if HAS_LABEL:
        if DRAW:
            # tl.rand counts in int32: the same draw as every backend (B < 2^31 is checked on the host)
            sel = (tl.rand(tl.load(seed_ptr), rows.to(tl.int32)) < tl.load(p_ptr)) & rmask
            tl.store(sel_ptr + rows, sel, mask=rmask)
        else:
            sel = tl.load(sel_ptr + rows, mask=rmask, other=0) != 0
        label = tl.load(label_ptr + rows, mask=rmask, other=0).to(ct)
        ystar = tl.where(sel, label, ystar)
    elif DRAW:
        tl.store(sel_ptr + rows, rows < 0, mask=rmask)  # no labels: never select
    tl.store(ystar_ptr + rows, ystar, mask=rmask)
    for d0 in range(0, d, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        cmask = cols < d
        mask = rmask[:, None] & cmask[None, :]
        tile = rows[:, None] * d + cols[None, :]
        wp = tl.load(wp_ptr + cols, mask=cmask, other=0.0)
        h = tl.load(h_ptr + tile, mask=mask, other=0.0)
        tl.store(zm_ptr + tile, tl.sigmoid(ystar[:, None] * wp[None, :]) + h, mask=mask)


@triton.jit
def _mix_kernel(v_ptr, zm_ptr, Sv_ptr, Szm_ptr, c_ptr, w0_ptr, m_ptr, B, d, BLOCK_B: tl.constexpr,
                BLOCK_D: tl.constexpr):
    """Scores of both tokens, the softmax weight w0 of v, and m = w0 v + (1 - w0) Zm."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    ct = m_ptr.dtype.element_ty
    s = tl.zeros((BLOCK_B,), dtype=ct)  # score(v) - score(Zm)
    for d0 in range(0, d, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        cmask = cols < d
        mask = rmask[:, None] & cmask[None, :]
        tile = rows[:, None] * d + cols[None, :]
        c = tl.load(c_ptr + cols, mask=cmask, other=0.0)[None, :]
        v = tl.load(v_ptr + tile, mask=mask, other=0.0)
        zm = tl.load(zm_ptr + tile, mask=mask, other=0.0)
        sv = tl.load(Sv_ptr + tile, mask=mask, other=0.0)
        szm = tl.load(Szm_ptr + tile, mask=mask, other=0.0)
        s += tl.sum(v * (0.5 * sv + c), 1) - tl.sum(zm * (0.5 * szm + c), 1)
    w0 = tl.sigmoid(s)
    tl.store(w0_ptr + rows, w0, mask=rmask)
    for d0 in range(0, d, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < d)[None, :]
        tile = rows[:, None] * d + cols[None, :]
        v = tl.load(v_ptr + tile, mask=mask, other=0.0)
        zm = tl.load(zm_ptr + tile, mask=mask, other=0.0)
        tl.store(m_ptr + tile, w0[:, None] * v + (1.0 - w0)[:, None] * zm, mask=mask)


@triton.jit
def _grad_kernel(g_ptr, gm_ptr, v_ptr, zm_ptr, Sv_ptr, Szm_ptr, c_ptr, w0_ptr, ystar_ptr, wp_ptr, gv_ptr,
                 gzm_ptr, p_ptr, q_ptr, wprow_ptr, B, d, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """Input gradients and the per-sample rows that the weight gradients sum (see csrc/pim_common.h)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    ct = gv_ptr.dtype.element_ty
    dvz = tl.zeros((BLOCK_B,), dtype=ct)  # gm . (v - Zm)
    for d0 in range(0, d, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < d)[None, :]
        tile = rows[:, None] * d + cols[None, :]
        gm = tl.load(gm_ptr + tile, mask=mask, other=0.0)
        v = tl.load(v_ptr + tile, mask=mask, other=0.0)
        zm = tl.load(zm_ptr + tile, mask=mask, other=0.0)
        dvz += tl.sum(gm * (v - zm), 1)
    a0 = tl.load(w0_ptr + rows, mask=rmask, other=0.0)
    a1 = 1.0 - a0
    gs = a0 * a1 * dvz  # dL/ds(v) = -dL/ds(Zm)
    ystar = tl.load(ystar_ptr + rows, mask=rmask, other=0.0)
    for d0 in range(0, d, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        cmask = cols < d
        mask = rmask[:, None] & cmask[None, :]
        tile = rows[:, None] * d + cols[None, :]
        c = tl.load(c_ptr + cols, mask=cmask, other=0.0)[None, :]
        wp = tl.load(wp_ptr + cols, mask=cmask, other=0.0)[None, :]
        g = tl.load(g_ptr + tile, mask=mask, other=0.0)
        gm = tl.load(gm_ptr + tile, mask=mask, other=0.0)
        v = tl.load(v_ptr + tile, mask=mask, other=0.0)
        zm = tl.load(zm_ptr + tile, mask=mask, other=0.0)
        sv = tl.load(Sv_ptr + tile, mask=mask, other=0.0)
        szm = tl.load(Szm_ptr + tile, mask=mask, other=0.0)
        tl.store(gv_ptr + tile, g + a0[:, None] * gm + gs[:, None] * (sv + c), mask=mask)
        gzm = a1[:, None] * gm - gs[:, None] * (szm + c)
        tl.store(gzm_ptr + tile, gzm, mask=mask)
        z = tl.sigmoid(ystar[:, None] * wp)
        tl.store(wprow_ptr + tile, gzm * z * (1.0 - z) * ystar[:, None], mask=mask)
        # sum gs (v v^T - zm zm^T) = sym(P^T Q), P = gs (v - zm), Q = v + zm: one d x d product
        tl.store(p_ptr + tile, gs[:, None] * (v - zm), mask=mask)
        tl.store(q_ptr + tile, v + zm, mask=mask)


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


def _cast(t: torch.Tensor, ct: torch.dtype) -> torch.Tensor:
    return t.to(ct).contiguous()


def _check_batch(B: int) -> None:
    if B >= 2 ** 31:
        raise ValueError(f"pim_attention: the batch must have fewer than 2^31 samples (the draw counts in int32), "
                         f"got {B}")


def _forward_core(v, h, label_prev, pred_prev, w_prior, S, c, select, p, seed, draw: bool):
    """(ystar, zm, Sv, Szm, w0, m) for contiguous v, h in the compute type."""
    B, d = v.shape
    ct = v.dtype
    ystar = torch.empty(B, dtype=ct, device=v.device)
    zm, m = torch.empty_like(v), torch.empty_like(v)
    w0 = torch.empty(B, dtype=ct, device=v.device)
    grid = (triton.cdiv(B, BLOCK_B),)
    bd = block_d(d)
    label = label_prev.contiguous() if label_prev is not None else pred_prev
    _prior_kernel[grid](h, label, pred_prev.contiguous(), select, p, seed, _cast(w_prior, ct), ystar, zm, B, d,
                        DRAW=draw, HAS_LABEL=label_prev is not None, BLOCK_B=BLOCK_B, BLOCK_D=bd)
    Sv, Szm = v @ S, zm @ S
    _mix_kernel[grid](v, zm, Sv, Szm, c, w0, m, B, d, BLOCK_B=BLOCK_B, BLOCK_D=bd)
    return ystar, zm, Sv, Szm, w0, m


def pim_attention(v, h_prev, label_prev, pred_prev, w_prior, w_q, w_k, w_v, p, seed, b_q=None, b_k=None,
                  b_v=None):
    _checks.check_pim_attention(v, h_prev, label_prev, pred_prev, w_prior, w_q, w_k, w_v, p, seed, b_q, b_k, b_v)
    _checks.check_pim_values(label_prev, pred_prev, p, seed)
    B, d = v.shape
    _check_batch(B)
    select = torch.zeros(B, dtype=torch.bool, device=v.device)
    if B == 0:
        return torch.empty(B, d, dtype=v.dtype, device=v.device), select  # contiguous whatever v's strides
    ct = compute_dtype(v.dtype)
    S, c = _score_form(w_q, w_k, b_q, b_k, ct)
    vc = _cast(v, ct)
    with device_guard(v):
        *_, m = _forward_core(vc, _cast(h_prev, ct), label_prev, pred_prev, w_prior, S, c, select,
                              p.to(device=v.device, dtype=torch.float32), seed.to(v.device), draw=True)
    u = torch.addmm(vc, m, _cast(w_v, ct).t())
    if b_v is not None:
        u += b_v.to(ct)
    return u.to(v.dtype), select


def check_backward(grad_u, v, select) -> None:
    """csrc/checks.h check_pim_attention_backward."""
    if tuple(grad_u.shape) != tuple(v.shape):
        raise ValueError(f"pim_attention_backward: grad_u must have the shape of v {list(v.shape)}, "
                         f"got {list(grad_u.shape)}")
    if select.dtype != torch.bool or tuple(select.shape) != (v.shape[0],):
        raise ValueError("pim_attention_backward: select must be bool [B]")
    _checks.check_same_device("pim_attention_backward", v=v, grad_u=grad_u, select=select)


def pim_attention_backward(grad_u, v, h_prev, label_prev, pred_prev, w_prior, w_q, w_k, w_v, select,
                           b_q=None, b_k=None, b_v=None):
    _checks.check_pim_attention(v, h_prev, label_prev, pred_prev, w_prior, w_q, w_k, w_v, select.new_zeros(
        (), dtype=torch.float32), select.new_zeros((), dtype=torch.int64), b_q, b_k, b_v)
    check_backward(grad_u, v, select)
    B, d = v.shape
    _check_batch(B)
    ct = compute_dtype(v.dtype)
    S, c = _score_form(w_q, w_k, b_q, b_k, ct)
    vc, g, wv = _cast(v, ct), _cast(grad_u, ct), _cast(w_v, ct)
    grad_v, grad_zm = torch.empty_like(vc), torch.empty_like(vc)
    P, Q, wp_rows = torch.empty_like(vc), torch.empty_like(vc), torch.empty_like(vc)
    if B:
        with device_guard(v):
            ystar, zm, Sv, Szm, w0, m = _forward_core(vc, _cast(h_prev, ct), label_prev, pred_prev, w_prior, S, c,
                                                      select.contiguous(), select, select, draw=False)
            gm = g @ wv  # dL/dm = Wv^T g (row form)
            _grad_kernel[(triton.cdiv(B, BLOCK_B),)](
                g, gm, vc, zm, Sv, Szm, c, w0, ystar, _cast(w_prior, ct), grad_v, grad_zm, P, Q, wp_rows, B, d,
                BLOCK_B=BLOCK_B, BLOCK_D=block_d(d))
    else:
        m = torch.zeros_like(vc)
    PQ = P.t() @ Q
    G = (PQ + PQ.t()) * 0.5
    r = P.sum(0)
    scale = 1.0 / math.sqrt(d)
    q, k = w_q.to(ct), w_k.to(ct)
    g_wq = k @ G
    g_wk = q @ G
    if b_k is not None:
        g_wq = g_wq + torch.outer(b_k.to(ct), r)
    if b_q is not None:
        g_wk = g_wk + torch.outer(b_q.to(ct), r)
    out = (grad_v, grad_zm, wp_rows.sum(0), g_wq * scale, g_wk * scale, g.t() @ m, (k @ r) * scale,
           (q @ r) * scale, g.sum(0))
    return tuple(t.to(v.dtype) for t in out)
