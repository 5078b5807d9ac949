"""The specification of every pimm_fast op, in plain PyTorch.

Each fused kernel (C++, CUDA, Triton) is tested against these functions. They are written for
clarity, not speed, but stay traceable by ``torch.compile`` (the "compile" benchmark provider).
Equations follow ARCHITECTURE.md section 2 and the PIMM paper (eqs. 1-6).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from . import _checks

__all__ = [
    "philox4x32_10",
    "philox_uniform",
    "embedding_concat",
    "embedding_concat_backward",
    "POOL_SUM",
    "POOL_MEAN",
    "embedding_bags_concat",
    "embedding_bags_concat_backward",
    "bag_value_grads",
    "bag_value_offsets",
    "dense_as_values",
    "coalesce_rows",
    "embedding_update_sgd",
    "embedding_update_rowwise_adagrad",
    "embedding_update_adam",
    "pim_attention",
    "pim_attention_backward",
    "validate_labels",
]

ScalarOrTensor = Union[float, int, torch.Tensor]

# ----------------------------------------------------------------------------------------------
# Philox4x32-10, bit-identical to Triton's tl.rand(seed, offset) for int32 offsets
# ----------------------------------------------------------------------------------------------
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUNDS = 10
# Triton's uint_to_uniform_float scale for 32-bit ints: the largest float with INT32_MAX * s < 1.
UNIFORM_SCALE = 4.6566127342e-10
_MASK32 = 0xFFFFFFFF


def _mul_hi_lo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of the 64-bit product a * b (a a constant, b an int64 tensor < 2**32).

    Split a in 16-bit halves so that no partial product overflows int64.
    """
    a_hi, a_lo = a >> 16, a & 0xFFFF
    hi_part = b * a_hi  # < 2**48
    lo_part = b * a_lo  # < 2**48
    hi = (hi_part + (lo_part >> 16)) >> 16
    lo = (((hi_part & 0xFFFF) << 16) + lo_part) & _MASK32
    return hi, lo


def _as_seed(seed: ScalarOrTensor, device: torch.device) -> torch.Tensor:
    if isinstance(seed, torch.Tensor):
        return seed  # validated by the caller: 0-dim int64
    return torch.tensor(int(seed), dtype=torch.int64, device=device)


def philox4x32_10(counter: tuple[torch.Tensor, ...], key: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The Philox4x32-10 block cipher (Salmon et al., SC'11) on uint32 words held in int64 tensors."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(PHILOX_ROUNDS):
        hi_b, lo_b = _mul_hi_lo(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & _MASK32
        k1 = (k1 + PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def philox_uniform(seed: ScalarOrTensor, n: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """Uniform floats u_i in [0, 1), i = 0..n-1, with u_i = tl.rand(seed, i) bit for bit.

    The counter is (i, 0, 0, 0), the key (seed & 0xffffffff, seed >> 32); the first Philox output
    word is read as int32, folded to non-negative (x < 0 -> ~x) and scaled by 4.6566127342e-10 in fp32.
    ``seed`` must lie in [0, 2**63); n < 2**31.
    """
    if n >= 2**31:
        raise ValueError(f"philox_uniform: n must be < 2**31 (int32 counters), got {n}")
    if device is None:
        device = seed.device if isinstance(seed, torch.Tensor) else torch.device("cpu")
    seed_t = _as_seed(seed, device).to(device)
    _checks.check_scalar("philox_uniform", "seed", seed_t, (torch.int64,))
    _checks.require(seed_t >= 0, ValueError, "philox_uniform: seed must be non-negative",
                    lambda: f"philox_uniform: seed must be non-negative, got {int(seed_t)}")
    counter = torch.arange(n, dtype=torch.int64, device=device)
    zero = torch.zeros_like(counter)
    c0 = philox4x32_10((counter, zero, zero, zero), (seed_t & _MASK32, (seed_t >> 32) & _MASK32))[0]
    folded = torch.where(c0 >= 2**31, _MASK32 - c0, c0)  # int32 view x, then x < 0 ? ~x : x
    scale = torch.tensor(UNIFORM_SCALE, dtype=torch.float32, device=device)
    return folded.to(torch.float32) * scale


# ----------------------------------------------------------------------------------------------
# embedding lookup + concat
# ----------------------------------------------------------------------------------------------
def embedding_concat(indices: torch.Tensor, weight: torch.Tensor, field_offsets: torch.Tensor) -> torch.Tensor:
    """out[b, f*D:(f+1)*D] = weight[field_offsets[f] + indices[b, f]]  ->  [B, F*D].

    Field f owns rows [field_offsets[f], field_offsets[f+1]) of the flat table (the last field up
    to weight.shape[0]); an id outside its field raises IndexError naming the field, id and sample.
    """
    _checks.check_embedding_concat(indices, weight, field_offsets)
    _checks.check_ids_in_range(indices, field_offsets, weight.shape[0])
    rows = indices.long() + field_offsets
    return F.embedding(rows, weight).flatten(1)


def embedding_concat_backward(grad_out: torch.Tensor, indices: torch.Tensor, field_offsets: torch.Tensor,
                              num_rows: int) -> torch.Tensor:
    """Dense gradient of the table: rows hit several times accumulate (in fp32 for 16-bit tables)."""
    B, F_ = indices.shape
    D = grad_out.shape[1] // max(F_, 1)
    acc_dtype = torch.promote_types(grad_out.dtype, torch.float32)
    rows = (indices.long() + field_offsets).reshape(-1)
    grad = torch.zeros(num_rows, D, dtype=acc_dtype, device=grad_out.device)
    grad.index_add_(0, rows, grad_out.reshape(B * F_, D).to(acc_dtype))
    return grad.to(grad_out.dtype)


# ----------------------------------------------------------------------------------------------
# multi-hot fields: field-major bags (torchrec's KeyedJaggedTensor idea, kept simple)
# ----------------------------------------------------------------------------------------------
# The ids of F fields for B samples as one flat ``values`` tensor (field-local ids) in field-major
# order: bag (f, b) is values[bag_offsets[f*B + b] : bag_offsets[f*B + b + 1]]. A single-valued field
# is a field of bags of length 1. ``pooling`` has one code per field: 0 = sum, 1 = mean (of an empty
# bag: zeros).
POOL_SUM, POOL_MEAN = 0, 1


def _bag_layout(bag_offsets: torch.Tensor, num_fields: int) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(B, lengths [F*B], bag index of each value)."""
    nb = bag_offsets.numel() - 1
    B = nb // num_fields if num_fields else 0
    lengths = bag_offsets[1:] - bag_offsets[:-1]
    bag_of_value = torch.repeat_interleave(torch.arange(nb, device=bag_offsets.device), lengths)
    return B, lengths, bag_of_value


def _bag_scale(lengths: torch.Tensor, pooling: Sequence[int], B: int, dtype: torch.dtype) -> torch.Tensor:
    """Per-bag factor of each value's row: 1 for sum, 1 / length for mean."""
    mean = torch.tensor([p == POOL_MEAN for p in pooling], device=lengths.device).repeat_interleave(B)
    return torch.where(mean, 1.0 / lengths.clamp(min=1).to(dtype), torch.ones((), dtype=dtype, device=lengths.device))


def bag_value_offsets(bag_offsets: torch.Tensor, num_fields: int) -> torch.Tensor:
    """[F + 1]: where the values of each field start in ``values``."""
    B = (bag_offsets.numel() - 1) // num_fields if num_fields else 0
    return bag_offsets[torch.arange(num_fields + 1, device=bag_offsets.device) * B]


def embedding_bags_concat(values: torch.Tensor, bag_offsets: torch.Tensor, weight: torch.Tensor,
                          field_offsets: torch.Tensor, pooling: Sequence[int]) -> torch.Tensor:
    """out[b, f*D:(f+1)*D] = pool_{v in bag (f, b)} weight[field_offsets[f] + v]  ->  [B, F*D]."""
    _checks.check_embedding_bags(values, bag_offsets, weight, field_offsets, pooling)
    F_ = field_offsets.numel()
    _checks.check_values_in_range(values, bag_value_offsets(bag_offsets, F_), field_offsets, weight.shape[0])
    B, lengths, bag_of_value = _bag_layout(bag_offsets, F_)
    ct = torch.promote_types(weight.dtype, torch.float32)
    rows = values.long() + field_offsets[bag_of_value // max(B, 1)]
    scale = _bag_scale(lengths, pooling, B, ct)
    pooled = torch.zeros(F_ * B, weight.shape[1], dtype=ct, device=weight.device)
    pooled.index_add_(0, bag_of_value, F.embedding(rows, weight).to(ct) * scale[bag_of_value, None])
    return pooled.view(F_, B, -1).transpose(0, 1).reshape(B, -1).to(weight.dtype)


def bag_value_grads(grad_out: torch.Tensor, bag_offsets: torch.Tensor, pooling: Sequence[int]) -> torch.Tensor:
    """The gradient of the row of every value [n, D]: its bag's output gradient times the pooling factor."""
    F_ = len(pooling)
    B, lengths, bag_of_value = _bag_layout(bag_offsets, F_)
    ct = torch.promote_types(grad_out.dtype, torch.float32)
    per_bag = grad_out.reshape(B, F_, -1).transpose(0, 1).reshape(F_ * B, -1).to(ct)
    return per_bag[bag_of_value] * _bag_scale(lengths, pooling, B, ct)[bag_of_value, None]


def embedding_bags_concat_backward(grad_out: torch.Tensor, values: torch.Tensor, bag_offsets: torch.Tensor,
                                   field_offsets: torch.Tensor, pooling: Sequence[int], num_rows: int) -> torch.Tensor:
    """Dense gradient of the table for embedding_bags_concat."""
    F_ = field_offsets.numel()
    grads = bag_value_grads(grad_out, bag_offsets, pooling)
    rows = values.long() + field_offsets.repeat_interleave(torch.diff(bag_value_offsets(bag_offsets, F_)))
    acc = torch.zeros(num_rows, grads.shape[1], dtype=grads.dtype, device=grad_out.device)
    return acc.index_add_(0, rows, grads).to(grad_out.dtype)


def dense_as_values(indices: torch.Tensor, grad_out: torch.Tensor | None = None):
    """Single-valued ids [B, F] in the field-major value layout: (values [F*B], value_offsets [F+1]) and,
    given the output gradient [B, F*D], the gradient of each value's row [F*B, D]."""
    B, F_ = indices.shape
    values = indices.t().reshape(-1)
    value_offsets = torch.arange(F_ + 1, device=indices.device) * B
    if grad_out is None:
        return values, value_offsets
    D = grad_out.shape[1] // max(F_, 1)  # explicit: a -1 cannot be inferred from 0 elements (B = 0)
    return values, value_offsets, grad_out.reshape(B, F_, D).transpose(0, 1).reshape(F_ * B, D)


# ----------------------------------------------------------------------------------------------
# fused optimizers: the backward of the lookup applies the update to the rows it touched
# ----------------------------------------------------------------------------------------------
# The update ops take the touched ids in the field-major layout above: ``values`` [n] field-local
# ids, ``value_offsets`` [F + 1] where each field's values start, and ``grad_values`` [n, D] the
# gradient of each value's row (from dense_as_values or bag_value_grads).
def coalesce_rows(grad_values: torch.Tensor, values: torch.Tensor, value_offsets: torch.Tensor,
                  field_offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, grads): the table rows touched (sorted, unique) and their summed gradient (in fp32,
    fp64 for fp64 tables).

    A row hit several times in a batch gets one update with the sum of its gradients, as a coalesced
    sparse gradient would (torch.optim.SparseAdam coalesces first).
    """
    rows = values.long() + field_offsets.repeat_interleave(torch.diff(value_offsets))
    unique, inverse = torch.unique(rows, sorted=True, return_inverse=True)
    acc_dtype = torch.promote_types(grad_values.dtype, torch.float32)
    grads = torch.zeros(unique.numel(), grad_values.shape[1], dtype=acc_dtype, device=grad_values.device)
    grads.index_add_(0, inverse, grad_values.to(acc_dtype))
    return unique, grads


def _touched(grad_values, values, value_offsets, field_offsets, weight):
    _checks.check_update(grad_values, values, value_offsets, field_offsets, weight)
    _checks.check_values_in_range(values, value_offsets, field_offsets, weight.shape[0])
    return coalesce_rows(grad_values, values, value_offsets, field_offsets)


def _write_rows(weight: torch.Tensor, rows: torch.Tensor, new_rows: torch.Tensor) -> None:
    weight[rows] = new_rows.to(weight.dtype)


@torch.no_grad()
def embedding_update_sgd(grad_values, values, value_offsets, field_offsets, weight, lr: float) -> None:
    """w_r -= lr * g_r for every touched row r (in place)."""
    rows, g = _touched(grad_values, values, value_offsets, field_offsets, weight)
    _write_rows(weight, rows, weight[rows].to(g.dtype) - lr * g)


@torch.no_grad()
def embedding_update_rowwise_adagrad(grad_values, values, value_offsets, field_offsets, weight, state_sum,
                                     lr: float, eps: float) -> None:
    """Row-wise Adagrad (one accumulator per row, as FBGEMM's EXACT_ROWWISE_ADAGRAD):
    G_r += mean(g_r^2);  w_r -= lr * g_r / (sqrt(G_r) + eps)."""
    rows, g = _touched(grad_values, values, value_offsets, field_offsets, weight)
    acc = state_sum[rows] + (g * g).mean(1)
    state_sum[rows] = acc
    _write_rows(weight, rows, weight[rows].to(g.dtype) - lr * g / (acc.sqrt() + eps)[:, None])


@torch.no_grad()
def embedding_update_adam(grad_values, values, value_offsets, field_offsets, weight, exp_avg, exp_avg_sq, step,
                          lr: float, beta1: float, beta2: float, eps: float) -> None:
    """Lazy Adam with torch.optim.SparseAdam's semantics: one step counter for the table (incremented
    here), moments updated only for the touched rows,
    w_r -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m_r / (sqrt(v_r) + eps)."""
    rows, g = _touched(grad_values, values, value_offsets, field_offsets, weight)
    step += 1
    t = float(step)
    m = exp_avg[rows] + (g - exp_avg[rows]) * (1 - beta1)
    v = exp_avg_sq[rows] + (g * g - exp_avg_sq[rows]) * (1 - beta2)
    exp_avg[rows], exp_avg_sq[rows] = m, v
    step_size = lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
    _write_rows(weight, rows, weight[rows].to(g.dtype) - step_size * m / (v.sqrt() + eps))


# ----------------------------------------------------------------------------------------------
# PIM module: curriculum sampling + sigmoid projection + two-token attention + residual
# ----------------------------------------------------------------------------------------------
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def draw_select(label_prev: Optional[torch.Tensor], p: torch.Tensor, seed: torch.Tensor, batch: int,
                device: torch.device) -> torch.Tensor:
    """select_i = (u_i < p) with u_i = philox_uniform(seed)[i]; all False without labels."""
    if label_prev is None:
        return torch.zeros(batch, dtype=torch.bool, device=device)
    u = philox_uniform(seed.to(device), batch)
    return u < p.to(device=device, dtype=torch.float32)


def _as_p(p: ScalarOrTensor, device: torch.device) -> torch.Tensor:
    if isinstance(p, torch.Tensor):
        return p
    return torch.tensor(float(p), dtype=torch.float32, device=device)


def _prior_inputs(v, h_prev, label_prev, pred_prev, w_prior, select):
    """y* (no gradient), Z = sigmoid(y* W) and Zm = Z + H, in the compute dtype."""
    ct = _compute_dtype(v.dtype)
    pred = pred_prev.detach().to(ct)
    y_star = pred if label_prev is None else torch.where(select, label_prev.detach().to(ct), pred)
    z = torch.sigmoid(y_star[:, None] * w_prior.to(ct)[None, :])
    return y_star, z, z + h_prev.to(ct)


def _attention(v, zm, w_q, w_k, w_v, b_q, b_k, b_v):
    """Tokens [v, Zm]; per-token score <Q a, K a>/sqrt(d); softmax over the two; U = v + sum w V a."""
    ct = zm.dtype
    d = v.shape[1]
    cast = lambda t: None if t is None else t.to(ct)  # noqa: E731
    tokens = torch.stack([v.to(ct), zm], dim=1)  # [B, 2, d]
    q = F.linear(tokens, w_q.to(ct), cast(b_q))
    k = F.linear(tokens, w_k.to(ct), cast(b_k))
    val = F.linear(tokens, w_v.to(ct), cast(b_v))
    scores = (q * k).sum(-1) / math.sqrt(d)  # [B, 2]
    weights = torch.softmax(scores, dim=1)
    u = tokens[:, 0] + (weights[..., None] * val).sum(1)
    return u, tokens, q, k, val, weights


def pim_attention(v: torch.Tensor, h_prev: torch.Tensor, label_prev: Optional[torch.Tensor],
                  pred_prev: torch.Tensor, w_prior: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor,
                  w_v: torch.Tensor, p: ScalarOrTensor, seed: ScalarOrTensor,
                  b_q: Optional[torch.Tensor] = None, b_k: Optional[torch.Tensor] = None,
                  b_v: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The PIM module of task t >= 1 for a batch: returns (U_t [B, d], select [B] bool).

    v: tower output v_t; h_prev: H_{t-1} (carries gradient back to task t-1); label_prev: y_{t-1}
    (None at inference: then select is all False and p is ignored); pred_prev: yhat_{t-1} (never
    differentiated); w_prior: W^{t-1} [d]; w_q/w_k/w_v: [d, d] linear maps shared by both tokens
    (applied as a @ W^T + b). p: probability of taking the label; seed: Philox key of this call.
    """
    p = _as_p(p, v.device)
    seed = _as_seed(seed, seed.device if isinstance(seed, torch.Tensor) else v.device)
    _checks.check_pim_attention(v, h_prev, label_prev, pred_prev, w_prior, w_q, w_k, w_v, p, seed,
                                b_q, b_k, b_v)
    _checks.check_pim_values(label_prev, pred_prev, p, seed)
    select = draw_select(label_prev, p, seed, v.shape[0], v.device)
    _, _, zm = _prior_inputs(v, h_prev, label_prev, pred_prev, w_prior, select)
    u = _attention(v, zm, w_q, w_k, w_v, b_q, b_k, b_v)[0]
    return u.to(v.dtype), select


def pim_attention_backward(grad_u: torch.Tensor, v: torch.Tensor, h_prev: torch.Tensor,
                           label_prev: Optional[torch.Tensor], pred_prev: torch.Tensor, w_prior: torch.Tensor,
                           w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor, select: torch.Tensor,
                           b_q: Optional[torch.Tensor] = None, b_k: Optional[torch.Tensor] = None,
                           b_v: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, ...]:
    """Hand-derived gradients of ``pim_attention`` given the forward's ``select``.

    Returns (grad_v, grad_h_prev, grad_w_prior, grad_w_q, grad_w_k, grad_w_v, grad_b_q, grad_b_k,
    grad_b_v); the bias gradients are returned (as the sums they are) even when a bias is None.
    Nothing flows to label_prev or pred_prev: y* is a constant of the attention (gradient truncation).
    """
    d = v.shape[1]
    scale = 1.0 / math.sqrt(d)
    y_star, z, zm = _prior_inputs(v, h_prev, label_prev, pred_prev, w_prior, select)
    ct = zm.dtype
    _, tokens, q, k, val, w = _attention(v, zm, w_q, w_k, w_v, b_q, b_k, b_v)
    g = grad_u.to(ct)
    g_w = (g[:, None, :] * val).sum(-1)  # dL/dw_a = <g, V a>            [B, 2]
    g_val = w[..., None] * g[:, None, :]  # dL/d(V a) = w_a g              [B, 2, d]
    g_s = w * (g_w - (w * g_w).sum(1, keepdim=True))  # softmax backward   [B, 2]
    g_q = g_s[..., None] * k * scale  # d s_a / d q_a = k_a / sqrt(d)
    g_k = g_s[..., None] * q * scale
    g_tok = g_q @ w_q.to(ct) + g_k @ w_k.to(ct) + g_val @ w_v.to(ct)  # [B, 2, d]
    flat = tokens.reshape(-1, d)

    def wgrad(gt: torch.Tensor) -> torch.Tensor:
        return gt.reshape(-1, d).t() @ flat

    grad_v = g + g_tok[:, 0]
    grad_zm = g_tok[:, 1]
    grad_w_prior = (grad_zm * z * (1 - z) * y_star[:, None]).sum(0)
    out = (grad_v, grad_zm, grad_w_prior, wgrad(g_q), wgrad(g_k), wgrad(g_val),
           g_q.sum((0, 1)), g_k.sum((0, 1)), g_val.sum((0, 1)))
    return tuple(t.to(v.dtype) for t in out)


# ----------------------------------------------------------------------------------------------
# labels
# ----------------------------------------------------------------------------------------------
def validate_labels(labels: torch.Tensor, num_tasks: int, cascade: bool = True) -> torch.Tensor:
    """Check [B, T] labels (0/1 and, with ``cascade``, y_t <= y_{t-1}) and return them as float32."""
    _checks.check_labels_meta(labels, num_tasks)
    _checks.check_labels_values(labels, cascade)
    return labels.to(torch.float32)
