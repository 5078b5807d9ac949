"""Data containers: :class:`CascadeData` (one split), :class:`BagTable` (multi-valued fields), :class:`Splits`."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from ..metrics import auc
from .vocab import Vocabulary


@dataclass
class BagTable:
    """Multi-valued fields stored once per owner row (CSR), shared by the samples that point at the row.

    ``index[i]`` is the owner row of sample i: the impression itself for item-side bags, the user context
    (common_features row) for user-side bags, so the hundreds of user-history ids are never copied per
    impression. Field j of owner row r holds ``values[j][offsets[j][r]:offsets[j][r + 1]]`` (codes, 0 = rare).
    """

    names: tuple[str, ...]
    dims: tuple[int, ...]
    offsets: tuple[torch.Tensor, ...]  # int64 [R + 1] per field
    values: tuple[torch.Tensor, ...]  # int32 [nnz] per field
    index: torch.Tensor  # int64 [N]: owner row of each sample

    def __post_init__(self):
        if not (len(self.names) == len(self.dims) == len(self.offsets) == len(self.values)):
            raise ValueError("BagTable: names, dims, offsets and values must have one entry per field")

    def subset(self, index) -> "BagTable":
        return replace(self, index=self.index[index])

    def gather(self, rows: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """For samples ``rows``: {field: (ids [nnz], offsets [B + 1])}, the input of
        ``torch.nn.EmbeddingBag(..., include_last_offset=True)``; vectorized, no per-sample Python."""
        owner = self.index[rows]
        out = {}
        for name, off, val in zip(self.names, self.offsets, self.values):
            start = off[owner]
            length = off[owner + 1] - start
            new_off = torch.zeros(len(owner) + 1, dtype=torch.int64)
            torch.cumsum(length, 0, out=new_off[1:])
            total = int(new_off[-1])
            shift = torch.repeat_interleave(start - new_off[:-1], length, output_size=total)
            flat = shift + torch.arange(total, dtype=torch.int64)
            out[name] = (val[flat], new_off)
        return out


@dataclass
class CascadeData:
    """ids x [N, F] (int32, or int64), labels y [N, T] float32 obeying the cascade unless kept on purpose,
    true marginals probs [N, T] where known (synthetic data), optional multi-valued fields in ``bags``,
    optional numerical features ``dense`` [N, K] float32 (raw values, NaN = missing) named ``dense_names``.
    """

    x: torch.Tensor
    y: torch.Tensor
    field_dims: tuple[int, ...]
    task_names: tuple[str, ...]
    probs: Optional[torch.Tensor] = None
    meta: dict = field(default_factory=dict)
    bags: tuple[BagTable, ...] = ()
    dense: Optional[torch.Tensor] = None
    dense_names: tuple[str, ...] = ()

    def __post_init__(self):
        if self.x.dim() != 2 or self.y.dim() != 2 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x must be [N, F] and y [N, T], got {tuple(self.x.shape)} and {tuple(self.y.shape)}")
        if self.x.shape[1] != len(self.field_dims):
            raise ValueError(f"x has {self.x.shape[1]} fields but field_dims names {len(self.field_dims)}")
        if self.y.shape[1] != len(self.task_names):
            raise ValueError(f"y has {self.y.shape[1]} tasks but task_names names {len(self.task_names)}")
        if self.x.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"x must hold int32 or int64 ids, got {self.x.dtype}")
        self.dense_names = tuple(str(n) for n in self.dense_names)
        if self.dense is not None:
            if self.dense.dim() != 2 or self.dense.shape[0] != self.x.shape[0]:
                raise ValueError(f"dense must be [N, K] with N = {self.x.shape[0]}, got {tuple(self.dense.shape)}")
            if self.dense.dtype != torch.float32:
                raise TypeError(f"dense must hold float32 values (NaN = missing), got {self.dense.dtype}")
            if len(self.dense_names) != self.dense.shape[1]:
                raise ValueError(f"dense has {self.dense.shape[1]} columns but dense_names names "
                                 f"{len(self.dense_names)}")
        elif self.dense_names:
            raise ValueError("dense_names given without dense values")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def num_tasks(self) -> int:
        return self.y.shape[1]

    @property
    def num_dense(self) -> int:
        """Number of numerical (dense) features: the models' ``num_dense``."""
        return 0 if self.dense is None else self.dense.shape[1]

    @property
    def bag_names(self) -> tuple[str, ...]:
        return tuple(n for table in self.bags for n in table.names)

    @property
    def model_field_dims(self) -> tuple[int, ...]:
        """The vocabulary sizes a model sees: the single-valued fields, then the multi-valued ones."""
        return tuple(self.field_dims) + tuple(d for table in self.bags for d in table.dims)

    def subset(self, index: torch.Tensor | slice) -> "CascadeData":
        return replace(self, x=self.x[index], y=self.y[index],
                       probs=None if self.probs is None else self.probs[index],
                       bags=tuple(table.subset(index) for table in self.bags),
                       dense=None if self.dense is None else self.dense[index])

    def oracle_auc(self) -> list[float]:
        """AUC of ranking by the true marginal P(y_t = 1 | x), per task (nan without ground truth)."""
        if self.probs is None:
            return [math.nan] * self.num_tasks
        return [auc(self.probs[:, t], self.y[:, t]) for t in range(self.num_tasks)]

    def rates(self) -> list[float]:
        """Positive rate of each task over all rows."""
        return [float(self.y[:, t].double().mean()) if len(self) else math.nan for t in range(self.num_tasks)]


@dataclass
class Splits:
    """What :func:`pimm_fast.data.load` returns: the splits ready for the batcher, and what was done to them.

    ``vocabulary``: how the raw ids became codes (:class:`~.vocab.Vocabulary`): a model trained on these
    splits keeps it to encode new raw files the same way."""

    train: CascadeData
    valid: Optional[CascadeData]
    test: CascadeData
    field_dims: tuple[int, ...]
    task_names: tuple[str, ...]
    stats: dict = field(default_factory=dict)
    vocabulary: Optional[Vocabulary] = None

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(self.train.meta.get("field_names", ()))

    def summary(self) -> str:
        parts = [f"train {len(self.train):,}"]
        if self.valid is not None:
            parts.append(f"valid {len(self.valid):,}")
        parts.append(f"test {len(self.test):,}")
        return (f"{', '.join(parts)} rows; {len(self.field_dims)} fields; tasks {' -> '.join(self.task_names)}"
                + (f"; bags {', '.join(self.train.bag_names)}" if self.train.bags else "")
                + (f"; {self.train.num_dense} dense" if self.train.num_dense else ""))

    @property
    def report(self) -> dict:
        """What loading did to rows: {"dropped": {split: {reason: rows}}, "altered": {...}, "kept": {...} (rows
        that break the cascade, kept by policy 'keep'), "warnings": [...], "ignored_columns": [...] (columns of
        the files that were read past: neither label, feature nor dense)}."""
        return {"dropped": self.stats.get("dropped", {}), "altered": self.stats.get("altered", {}),
                "kept": self.stats.get("kept", {}), "warnings": list(self.stats.get("warnings", [])),
                "ignored_columns": list(self.stats.get("ignored_columns", []))}

    def report_lines(self) -> list[str]:
        """The drop report as lines for a run summary (every dropped or altered row, by reason and split)."""
        return format_report(self.report)


def format_report(report: dict) -> list[str]:
    lines = []
    for what in ("dropped", "altered"):
        before = len(lines)
        for split, reasons in report.get(what, {}).items():
            for reason, count in reasons.items():
                if count:
                    lines.append(f"{what} {count:,} {split} row(s): {reason}")
        if len(lines) == before:
            lines.append(f"no row {what}")
    for split, reasons in report.get("kept", {}).items():
        lines.extend(f"kept {count:,} {split} row(s): {reason}" for reason, count in reasons.items() if count)
    ignored = report.get("ignored_columns", [])
    if ignored:
        lines.append(f"{len(ignored)} column(s) not used (neither label, feature nor dense): {', '.join(ignored)}")
    lines.extend(f"warning: {w}" for w in report.get("warnings", []))
    return lines
