"""Categorical fields embedded from one flat table with per-field row offsets."""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from .. import ops, reference
from .jagged import JaggedIds

Ids = Union[torch.Tensor, JaggedIds]
POOLING = {"sum": reference.POOL_SUM, "mean": reference.POOL_MEAN}


def check_field_dims(field_dims: Sequence[int]) -> tuple[int, ...]:
    dims = tuple(field_dims)
    if not dims:
        raise ValueError("field_dims must name at least one field")
    for f, n in enumerate(dims):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"field_dims[{f}] must be a positive int (the field's vocabulary size), got {n!r}")
    return dims


def check_embed_dim(embed_dim: int) -> int:
    if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
        raise ValueError(f"embed_dim must be a positive int, got {embed_dim!r}")
    return embed_dim


def check_pooling(pooling: Union[str, Sequence[str]], num_fields: int) -> tuple[str, ...]:
    """One pooling mode ("sum" or "mean") per field, from one for all or a sequence of them."""
    modes = [pooling] * num_fields if isinstance(pooling, str) else list(pooling)
    if len(modes) != num_fields or any(m not in POOLING for m in modes):
        raise ValueError(f"pooling must be 'sum' or 'mean', once or per field ({num_fields}), got {pooling!r}")
    return tuple(modes)


class FieldLayout:
    """What every field embedding shows a model (FieldEmbedding, FusedEmbedding, TorchRecEmbedding):
    ``field_dims``, ``embed_dim``, ``pooling`` per field, and the width of its output."""

    field_dims: tuple[int, ...]
    embed_dim: int
    pooling: tuple[str, ...]

    def _set_layout(self, field_dims: Sequence[int], embed_dim: int, pooling: Union[str, Sequence[str]]) -> None:
        self.field_dims = check_field_dims(field_dims)
        self.embed_dim = check_embed_dim(embed_dim)
        self.pooling = check_pooling(pooling, len(self.field_dims))

    @property
    def num_fields(self) -> int:
        return len(self.field_dims)

    @property
    def output_dim(self) -> int:
        return self.num_fields * self.embed_dim


class FieldEmbedding(FieldLayout, nn.Module):
    """x [B, F] int ids, x[:, f] in [0, field_dims[f]) -> concat_f E[offset_f + x_f]  [B, F * embed_dim].

    One parameter ``weight`` of shape [sum(field_dims), embed_dim]; field f owns rows
    [offset_f, offset_f + field_dims[f]). An id outside its field raises IndexError (naming the field,
    id and sample) before any row is read.

    Multi-hot fields: pass ``JaggedIds`` instead of a [B, F] tensor; each field's bag of ids is pooled by
    ``pooling`` ("sum" or "mean", one for all fields or one per field; an empty bag gives zeros).
    """

    def __init__(self, field_dims: Sequence[int], embed_dim: int, backend: str = "auto", init_std: float = 0.01,
                 pooling: Union[str, Sequence[str]] = "sum", device=None, dtype=None):
        super().__init__()
        self._set_layout(field_dims, embed_dim, pooling)
        if backend not in ops.BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {ops.BACKENDS}")
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(sum(self.field_dims), embed_dim, device=device, dtype=dtype))
        offsets = torch.tensor((0,) + self.field_dims[:-1], dtype=torch.int64, device=device).cumsum(0)
        self.register_buffer("field_offsets", offsets, persistent=False)
        self.init_std = init_std
        self.pooling_codes = tuple(POOLING[m] for m in self.pooling)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.init_std)

    def _check_ids_shape(self, x: Ids) -> None:
        if len(x.shape) != 2 or x.shape[1] != self.num_fields:
            raise ValueError(f"expected ids of shape [B, {self.num_fields}] (one column per field), "
                             f"got {list(x.shape)}")
        if x.device != self.weight.device:
            raise ValueError(f"ids are on {x.device} but the embedding table is on {self.weight.device}")

    def forward(self, x: Ids) -> torch.Tensor:
        self._check_ids_shape(x)
        if isinstance(x, JaggedIds):
            return ops.embedding_bags_concat(x.values, x.bag_offsets, self.weight, self.field_offsets,
                                             self.pooling_codes, backend=self.backend)
        return ops.embedding_concat(x, self.weight, self.field_offsets, backend=self.backend)

    def extra_repr(self) -> str:
        return f"fields={self.num_fields}, rows={self.weight.shape[0]}, embed_dim={self.embed_dim}, backend={self.backend!r}"


# ----------------------------------------------------------------------------------------------
# fused optimizer
# ----------------------------------------------------------------------------------------------
FUSED_OPTIMIZERS = ("sgd", "rowwise_adagrad", "adam")
_DEFAULT_EPS = {"sgd": 0.0, "rowwise_adagrad": 1e-10, "adam": 1e-8}


class _LookupWithUpdate(torch.autograd.Function):
    """Forward: the lookup (dense ids, or bags when bag_offsets is given). Backward: the optimizer step
    on the touched rows, and no gradient.

    ``trigger`` is the only input that requires grad: it makes autograd call the backward. The table
    does not require grad, because it is written in place during the backward, and torch.compile on
    torch 2.11 cannot trace an in-place write to a grad-requiring input there (see FusedEmbedding).
    The table and the state are kept on ctx as attributes, not saved tensors: they are updated in
    place, and a saved tensor would fail autograd's version check when the table is used twice
    before one backward.
    """

    @staticmethod
    def forward(ctx, trigger, ids, bag_offsets, weight, field_offsets, pooling, backend, update, hparams, *state):
        ctx.save_for_backward(ids, bag_offsets, field_offsets)
        ctx.weight, ctx.state, ctx.update, ctx.hparams, ctx.pooling = weight, state, update, hparams, pooling
        if bag_offsets is not None:
            return ops.embedding_bags_concat(ids, bag_offsets, weight, field_offsets, pooling, backend=backend)
        return ops.embedding_concat(ids, weight, field_offsets, backend=backend)

    @staticmethod
    def backward(ctx, grad_out):
        ids, bag_offsets, field_offsets = ctx.saved_tensors
        if grad_out.shape[0] == 0 or ids.numel() == 0:  # an empty batch touches no row: nothing to update
            return (None,) * (9 + len(ctx.state))
        if bag_offsets is None:
            values, value_offsets, grad_values = reference.dense_as_values(ids, grad_out)
        else:
            values = ids
            value_offsets = reference.bag_value_offsets(bag_offsets, field_offsets.numel())
            grad_values = reference.bag_value_grads(grad_out, bag_offsets, ctx.pooling)
        ctx.update(grad_values, values, value_offsets, field_offsets, ctx.weight, *ctx.state, *ctx.hparams)
        return (None,) * (9 + len(ctx.state))


def _add_step_trigger(module, state_dict, prefix, *_):
    """Checkpoints written before step_trigger existed load as before: it holds no value."""
    state_dict.setdefault(prefix + "step_trigger", module.step_trigger.detach())


class FusedEmbedding(FieldEmbedding):
    """A ``FieldEmbedding`` whose backward applies the optimizer step to the rows the batch touched.

    FBGEMM's fused-optimizer idea: no table-sized gradient is formed, only the touched rows (and
    their optimizer state) are read and written, so the cost of a step follows the batch, not the
    vocabulary. ``weight.grad`` stays None, so a dense optimizer built over ``model.parameters()``
    skips the table while it trains the towers. The update happens during ``backward()``.

    The table is a parameter with ``requires_grad=False``: autograd never differentiates it. What
    makes autograd call the update is ``step_trigger``, a parameter with no elements (its gradient
    stays None). ``emb.requires_grad_(False)`` freezes the table; leave ``weight.requires_grad`` False
    (torch.compile on torch 2.11 refuses an in-place update of a grad-requiring input in the backward).

    optimizer:
      - "sgd": w_r -= lr g_r
      - "rowwise_adagrad": one accumulator per row, G_r += mean(g_r^2), w_r -= lr g_r / (sqrt(G_r) + eps)
      - "adam": lazy Adam with torch.optim.SparseAdam's semantics (moments of touched rows only,
        one step counter for the table)
    A row hit by several samples of a batch gets one update with their summed gradient. The state
    lives in buffers (saved in the state_dict). Weight decay is not supported.
    """

    def __init__(self, field_dims: Sequence[int], embed_dim: int, optimizer: str = "adam", lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float | None = None, backend: str = "auto",
                 init_std: float = 0.01, pooling: Union[str, Sequence[str]] = "sum", device=None, dtype=None):
        super().__init__(field_dims, embed_dim, backend=backend, init_std=init_std, pooling=pooling, device=device,
                         dtype=dtype)
        if optimizer not in FUSED_OPTIMIZERS:
            raise ValueError(f"unknown fused optimizer {optimizer!r}; choose one of {FUSED_OPTIMIZERS}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        eps = _DEFAULT_EPS[optimizer] if eps is None else eps
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.optimizer, self.lr, self.betas, self.eps = optimizer, float(lr), tuple(map(float, betas)), float(eps)
        self.weight.requires_grad_(False)
        self.step_trigger = nn.Parameter(torch.empty(0, device=self.weight.device, dtype=self.weight.dtype))
        self.register_load_state_dict_pre_hook(_add_step_trigger)
        state_dtype = torch.float64 if self.weight.dtype == torch.float64 else torch.float32
        factory = {"device": self.weight.device, "dtype": state_dtype}
        if optimizer == "rowwise_adagrad":
            self.register_buffer("state_sum", torch.zeros(self.weight.shape[0], **factory))
        elif optimizer == "adam":
            self.register_buffer("exp_avg", torch.zeros(self.weight.shape, **factory))
            self.register_buffer("exp_avg_sq", torch.zeros(self.weight.shape, **factory))
            self.register_buffer("step", torch.zeros((), dtype=torch.int64, device=self.weight.device))

    def _state(self) -> tuple[torch.Tensor, ...]:
        if self.optimizer == "adam":
            return (self.exp_avg, self.exp_avg_sq, self.step)
        return (self.state_sum,) if self.optimizer == "rowwise_adagrad" else ()

    def _hparams(self) -> tuple[float, ...]:
        if self.optimizer == "adam":
            return (self.lr, *self.betas, self.eps)
        return (self.lr, self.eps) if self.optimizer == "rowwise_adagrad" else (self.lr,)

    def _update_fn(self, backend: str):
        name = f"embedding_update_{self.optimizer}"
        if backend == "reference":
            return getattr(reference, name)
        if not ops.schemas.has_op(name, backend):
            raise RuntimeError(f"FusedEmbedding: backend {backend!r} has no fused {self.optimizer} kernel; "
                               f"use backend='cpp' (CPU), 'cuda', 'triton' or 'reference'")
        return ops.op(name, backend)

    def forward(self, x: Ids) -> torch.Tensor:
        self._check_ids_shape(x)
        backend = ops.resolve_backend(self.backend, self.weight.device)
        ids, bags = (x.values, x.bag_offsets) if isinstance(x, JaggedIds) else (x, None)
        return _LookupWithUpdate.apply(self.step_trigger, ids, bags, self.weight, self.field_offsets,
                                       self.pooling_codes, backend, self._update_fn(backend), self._hparams(),
                                       *self._state())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, optimizer={self.optimizer!r}, lr={self.lr}"
