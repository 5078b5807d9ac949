"""The embedding of a pimm_fast model as a TorchRec collection: one FBGEMM table per field, optimizer fused.

``TorchRecEmbedding`` has the contract of ``pimm_fast.FieldEmbedding`` (ids [B, F] or ``JaggedIds`` ->
[B, F * embed_dim], attributes ``field_dims`` / ``output_dim``), so any model takes it as ``embedding=``.

* ``sharded=False`` (one process): a ``FusedEmbeddingBagCollection``, FBGEMM's table-batched embedding with
  the optimizer applied in the backward, on CPU or GPU; no process group needed.
* ``sharded=True``: an ``EmbeddingBagCollection`` on the meta device with the optimizer attached by
  ``_apply_optimizer_in_backward``, for ``DistributedModelParallel`` to shard (``pimm_fast.distributed.shard_model``).

Two limits of FBGEMM, and how they are served here (docs/distributed.md):

* the fused kernels need the row width to be a multiple of 4: a table of width D is stored as
  ``padded_dim(D)`` columns whose extra columns are zero and stay zero (they get no gradient), and the
  lookup returns the first D columns. Row-wise Adagrad averages g^2 over the stored columns, so its lr and
  eps are scaled by sqrt(D / D_pad): the update is then exactly the one on D columns.
* on CPU FBGEMM fuses SGD, Adagrad and row-wise Adagrad, not Adam: ``optimizer="adam"`` on CPU raises
  (use ``rowwise_adagrad``, the usual choice for recommendation tables, or a GPU).

Initialisation: N(0, init_std^2) like ``FieldEmbedding``, drawn in blocks of ``INIT_BLOCK`` rows from a
generator seeded by (seed, field, block): the same table whatever the number of ranks and the sharding,
and each rank draws only the blocks it holds.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..modules.embedding import FieldLayout
from ..modules.jagged import JaggedIds
from . import require_torchrec

require_torchrec()

import fbgemm_gpu  # noqa: E402,F401  (registers torch.ops.fbgemm)
import torchrec.optim as trec_optim  # noqa: E402
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType  # noqa: E402
from torchrec.modules.embedding_modules import EmbeddingBagCollection  # noqa: E402
from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection  # noqa: E402
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor  # noqa: E402

Ids = Union[torch.Tensor, JaggedIds]
OPTIMIZERS = ("sgd", "rowwise_adagrad", "adam")
CPU_OPTIMIZERS = ("sgd", "rowwise_adagrad")
DEFAULT_EPS = {"sgd": 0.0, "rowwise_adagrad": 1e-10, "adam": 1e-8}
INIT_BLOCK = 1 << 16
_POOLING = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}


def padded_dim(embed_dim: int) -> int:
    """The stored row width: embed_dim rounded up to a multiple of 4 (FBGEMM's fused kernels need it)."""
    return -(-embed_dim // 4) * 4


def table_name(field: int) -> str:
    return f"t{field}"


def feature_name(field: int) -> str:
    return f"f{field}"


def table_init(field: int, rows: int, embed_dim: int, table_dim: int, std: float, seed: int,
               row_start: int = 0, row_end: Optional[int] = None, dtype=torch.float32) -> torch.Tensor:
    """Rows [row_start, row_end) of field ``field``'s initial table, [row_end - row_start, table_dim]:
    N(0, std^2) in the first embed_dim columns, zeros in the padding. Block b of INIT_BLOCK rows comes from
    its own generator, so any range of rows is drawn without drawing the rest of the table."""
    row_end = rows if row_end is None else row_end
    if not 0 <= row_start <= row_end <= rows:
        raise ValueError(f"rows [{row_start}, {row_end}) outside the table of {rows} rows")
    out = torch.zeros(row_end - row_start, table_dim, dtype=dtype)
    for block in range(row_start // INIT_BLOCK, -(-row_end // INIT_BLOCK)):
        lo, hi = block * INIT_BLOCK, min((block + 1) * INIT_BLOCK, rows)
        gen = torch.Generator().manual_seed((seed * 1_000_003 + field) * 1_000_033 + block)
        values = torch.randn(hi - lo, embed_dim, generator=gen, dtype=torch.float64).mul_(std).to(dtype)
        a, b = max(lo, row_start), min(hi, row_end)
        if a < b:
            out[a - row_start:b - row_start, :embed_dim] = values[a - lo:b - lo]
    return out


def optimizer_spec(optimizer: str, lr: float, betas: Sequence[float], eps: Optional[float], embed_dim: int,
                   table_dim: int) -> tuple[type, dict]:
    """(optimizer class TorchRec maps to an FBGEMM fused optimizer, FBGEMM's keyword arguments)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown fused optimizer {optimizer!r}; choose one of {OPTIMIZERS}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    eps = DEFAULT_EPS[optimizer] if eps is None else float(eps)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if optimizer == "sgd":
        return trec_optim.SGD, {"lr": float(lr)}
    if optimizer == "rowwise_adagrad":
        # FBGEMM averages g^2 over the table_dim stored columns, embed_dim of which get a gradient:
        # G_pad = G * D / D_pad, and lr, eps scaled by s = sqrt(D / D_pad) give lr g / (sqrt(G) + eps).
        s = math.sqrt(embed_dim / table_dim)
        return trec_optim.RowWiseAdagrad, {"lr": float(lr) * s, "eps": eps * s}
    b1, b2 = (float(b) for b in betas)
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
    return trec_optim.Adam, {"lr": float(lr), "beta1": b1, "beta2": b2, "eps": eps}


def check_optimizer_device(optimizer: str, device: torch.device) -> None:
    if device.type == "cpu" and optimizer not in CPU_OPTIMIZERS:
        raise ValueError(f"FBGEMM fuses {optimizer!r} only on GPU; on CPU choose one of {CPU_OPTIMIZERS} "
                         f"(rowwise_adagrad is the usual choice for embedding tables)")


class TorchRecEmbedding(FieldLayout, nn.Module):
    """ids [B, F] (or ``JaggedIds``) -> concat_f pool(E_f[bag_f]) [B, F * embed_dim], E_f one TorchRec table.

    The optimizer (``sgd``, ``rowwise_adagrad``, ``adam``: FusedEmbedding's options and defaults) runs in
    the backward; the tables get no ``.grad``, so a dense optimizer over the model's other parameters
    trains the rest. An id outside its field raises IndexError before the lookup (FBGEMM's own bounds check
    would log and read row 0).
    """

    def __init__(self, field_dims: Sequence[int], embed_dim: int, optimizer: str = "rowwise_adagrad",
                 lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: Optional[float] = None,
                 pooling: Union[str, Sequence[str]] = "sum", init_std: float = 0.01, seed: int = 0,
                 sharded: bool = False, device=None):
        super().__init__()
        self._set_layout(field_dims, embed_dim, pooling)
        self.table_dim = padded_dim(embed_dim)
        self.optimizer, self.lr, self.init_std, self.seed = optimizer, float(lr), float(init_std), int(seed)
        self.sharded = bool(sharded)
        device = torch.device(device if device is not None else "cpu")
        self.optimizer_class, self.optimizer_kwargs = optimizer_spec(optimizer, lr, betas, eps, embed_dim,
                                                                     self.table_dim)
        check_optimizer_device(optimizer, device)
        self.keys = [feature_name(f) for f in range(len(self.field_dims))]
        self.tables = [EmbeddingBagConfig(name=table_name(f), embedding_dim=self.table_dim, num_embeddings=n,
                                          feature_names=[feature_name(f)], pooling=_POOLING[self.pooling[f]])
                       for f, n in enumerate(self.field_dims)]
        self.register_buffer("_dims", torch.tensor(self.field_dims, dtype=torch.int64, device=device),
                             persistent=False)
        if self.sharded:
            from torch.distributed.optim import _apply_optimizer_in_backward

            self.ebc = EmbeddingBagCollection(self.tables, device=torch.device("meta"))
            _apply_optimizer_in_backward(self.optimizer_class, self.ebc.parameters(), self.optimizer_kwargs)
        else:
            cls, kwargs = self.optimizer_class, self.optimizer_kwargs
            if cls is trec_optim.SGD:  # FusedEmbeddingBagCollection names the torch classes
                cls = torch.optim.SGD
            elif cls is trec_optim.Adam:
                cls = torch.optim.Adam
            self.ebc = FusedEmbeddingBagCollection(self.tables, optimizer_type=cls, optimizer_kwargs=kwargs,
                                                   device=device)
            # its output is grouped by pooling (first-seen order), whatever the order of its keys
            groups = list(dict.fromkeys(self.pooling))
            self._local_order = [f for g in groups for f in range(len(self.field_dims)) if self.pooling[f] == g]
            self._base_lrs = [g["lr"] for g in self.ebc.fused_optimizer().param_groups]
            self.reset_parameters()

    # ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The deterministic initial tables (and fresh optimizer state is not touched: call before training)."""
        if self.sharded:
            raise RuntimeError("a sharded TorchRecEmbedding is initialised by shard_model, after sharding")
        for f, weight in enumerate(self.ebc.embedding_bags[table_name(f)].weight for f in range(self.num_fields)):
            weight.copy_(table_init(f, self.field_dims[f], self.embed_dim, self.table_dim, self.init_std,
                                    self.seed, dtype=weight.dtype))

    def scale_lr(self, factor: float) -> None:
        """One process: the fused optimizer's lr at ``factor`` times its lr as built (the lr schedule of
        ``pimm_fast.train.Trainer``), pushed into FBGEMM now, so the next backward uses it. A sharded
        collection's lr is set through ``ShardedModel.set_lr``."""
        if self.sharded:
            raise RuntimeError("a sharded TorchRecEmbedding's lr is set by ShardedModel.set_lr")
        optimizer = self.ebc.fused_optimizer()
        for group, base in zip(optimizer.param_groups, self._base_lrs):
            group["lr"] = base * factor
        optimizer.step()  # FBGEMM's fused optimizer: step() only sets the lr (the update ran in the backward)

    def table(self, field: int) -> torch.Tensor:
        """Field ``field``'s table [field_dims[field], embed_dim] (one process only; a copy)."""
        if self.sharded:
            raise RuntimeError("a sharded table lives on several ranks: read it from the checkpoint")
        return self.ebc.embedding_bags[table_name(field)].weight.detach()[:, :self.embed_dim].clone()

    # ------------------------------------------------------------------------------------------------
    def bad_ids(self, x: Ids) -> Optional[str]:
        """None when every id lies in its field's vocabulary, else a message naming the first bad one."""
        if len(x.shape) != 2 or x.shape[1] != self.num_fields:
            return f"expected ids of shape [B, {self.num_fields}] (one column per field), got {list(x.shape)}"
        dims = self._dims.to(x.device)
        if isinstance(x, JaggedIds):
            B = x.batch_size
            per_field = x.bag_offsets[::B].diff() if B else torch.zeros(self.num_fields, dtype=torch.int64)
            limit = torch.repeat_interleave(dims, per_field.to(dims.device), output_size=x.values.numel())
            bad = (x.values < 0) | (x.values >= limit)
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                field = int(torch.searchsorted(x.bag_offsets[::B][1:], torch.tensor(i), right=True))
                return (f"id {int(x.values[i])} of field {field} (value {i} of the bags) is outside "
                        f"[0, {self.field_dims[field]})")
            return None
        bad = (x < 0) | (x >= dims)
        if bool(bad.any()):
            row, field = (int(v) for v in bad.nonzero()[0])
            return f"id {int(x[row, field])} of field {field} in sample {row} is outside [0, {self.field_dims[field]})"
        return None

    def features(self, x: Ids) -> KeyedJaggedTensor:
        """The ids as TorchRec's KeyedJaggedTensor (field-major, as JaggedIds already is)."""
        if isinstance(x, JaggedIds):
            return KeyedJaggedTensor(keys=self.keys, values=x.values.long(), offsets=x.bag_offsets)
        B, F = x.shape
        return KeyedJaggedTensor(keys=self.keys, values=x.t().reshape(-1).long(),
                                 lengths=torch.ones(F * B, dtype=torch.int32, device=x.device))

    def forward(self, x: Ids) -> torch.Tensor:
        if not isinstance(x, JaggedIds) and (not isinstance(x, torch.Tensor) or x.dtype not in (torch.int32, torch.int64)):
            raise TypeError(f"ids must be an int32/int64 tensor [B, F] or JaggedIds, got {getattr(x, 'dtype', type(x))}")
        problem = self.bad_ids(x)
        if problem is not None:
            raise (ValueError if problem.startswith("expected") else IndexError)(problem)
        pooled = self.ebc(self.features(x))
        D = self.embed_dim
        if self.sharded:  # a sharded collection groups its output by sharding type: regroup by key
            by_key = pooled.to_dict()
            parts = [by_key[k] for k in self.keys]
        else:
            chunks = pooled.values().split(self.table_dim, dim=1)
            parts = [None] * self.num_fields
            for chunk, f in zip(chunks, self._local_order):
                parts[f] = chunk
        if self.table_dim != D:
            parts = [p[:, :D] for p in parts]
        return torch.cat(parts, dim=1)

    def extra_repr(self) -> str:
        pad = f" (stored {self.table_dim})" if self.table_dim != self.embed_dim else ""
        return (f"fields={self.num_fields}, embed_dim={self.embed_dim}{pad}, optimizer={self.optimizer!r}, "
                f"lr={self.lr}, sharded={self.sharded}")


def torchrec_embedding(field_dims: Sequence[int], embed_dim: int, **kwargs) -> TorchRecEmbedding:
    """``TorchRecEmbedding(field_dims, embed_dim, **kwargs)`` in one process: a FBGEMM table-batched
    embedding with its optimizer fused, to compare with ``pimm_fast.FusedEmbedding``."""
    return TorchRecEmbedding(field_dims, embed_dim, sharded=False, **kwargs)
