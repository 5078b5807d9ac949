"""What every cascade model shares: the forward contract, label checks and the loss."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..errors import TrainingDiverged
from ..modules import FieldEmbedding
from .dense import DenseInput


def make_embedding(field_dims: Sequence[int], embed_dim: int, backend: str,
                   embedding: Optional[nn.Module] = None) -> nn.Module:
    """The shared embedding of a model: ``embedding`` when given (any module mapping ids [B, F] to
    [B, output_dim] with ``field_dims`` and ``output_dim`` attributes, e.g. a fused-optimizer
    embedding), else a ``FieldEmbedding(field_dims, embed_dim, backend)``."""
    if embedding is None:
        return FieldEmbedding(field_dims, embed_dim, backend=backend)
    for attr in ("field_dims", "output_dim"):
        if not hasattr(embedding, attr):
            raise TypeError(f"embedding must have a {attr!r} attribute (see pimm_fast.FieldEmbedding)")
    if tuple(embedding.field_dims) != tuple(field_dims):
        raise ValueError(f"embedding.field_dims {tuple(embedding.field_dims)} differ from field_dims "
                         f"{tuple(field_dims)}")
    return embedding


def check_num_tasks(num_tasks: int) -> int:
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 2:
        raise ValueError(f"num_tasks must be an int >= 2 (a cascade has at least two stages), got {num_tasks!r}")
    return num_tasks


class CascadeModel(nn.Module):
    """ids [B, F] (and dense features [B, K] when built with ``num_dense=K``) -> probabilities [B, T] of the
    T funnel stages, in funnel order.

    Subclasses implement ``_forward(x, labels, dense)`` where labels are the validated float32 labels or
    None. ``requires_cascade``: whether the model assumes y_t = 1 implies y_{t-1} = 1 (its label feeding,
    product or calibrator); a model that does not may train on labels that break the cascade.
    """

    num_tasks: int
    calibrator_weight: float = 0.0
    requires_cascade: bool = True

    def __init__(self, num_tasks: int, task_names: Optional[Sequence[str]] = None, calibrator_weight: float = 0.0,
                 num_dense: int = 0, dense_names: Optional[Sequence[str]] = None):
        super().__init__()
        if isinstance(num_dense, bool) or not isinstance(num_dense, int) or num_dense < 0:
            raise ValueError(f"num_dense must be an int >= 0, got {num_dense!r}")
        self.num_dense = num_dense
        self.dense_input = DenseInput(num_dense, dense_names) if num_dense else None
        self.num_tasks = check_num_tasks(num_tasks)
        names = tuple(task_names) if task_names is not None else tuple(f"task{t}" for t in range(num_tasks))
        if len(names) != num_tasks:
            raise ValueError(f"task_names has {len(names)} names for {num_tasks} tasks")
        self.task_names = names
        if calibrator_weight < 0:
            raise ValueError(f"calibrator_weight must be >= 0, got {calibrator_weight}")
        self.calibrator_weight = float(calibrator_weight)

    def validate_labels(self, labels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if labels.device != like.device:
            raise ValueError(f"labels are on {labels.device} but the model input is on {like.device}")
        if labels.shape[:1] != like.shape[:1]:
            raise ValueError(f"labels have {labels.shape[0] if labels.dim() else 0} rows but the batch has "
                             f"{like.shape[0]}")
        return ops.validate_labels(labels, self.num_tasks, cascade=self.requires_cascade)

    def dense_features(self, dense: Optional[torch.Tensor], like) -> Optional[torch.Tensor]:
        """The standardised dense block [B, 2K] appended to the embeddings (None without dense features)."""
        if self.dense_input is None:
            if dense is not None:
                raise ValueError("dense features were passed, but the model was built with num_dense=0")
            return None
        if dense is None:
            raise ValueError(f"the model was built with num_dense={self.num_dense}: pass dense=[B, "
                             f"{self.num_dense}] floats")
        if dense.dim() == 2 and dense.shape[0] != like.shape[0]:
            raise ValueError(f"dense has {dense.shape[0]} rows but the batch has {like.shape[0]}")
        return self.dense_input(dense)

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None,
                dense: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = self.validate_labels(labels, x) if labels is not None else None
        return self._forward(x, y, self.dense_features(dense, x))

    def _forward(self, x: torch.Tensor, labels: Optional[torch.Tensor],
                 dense: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """sum_t BCE(yhat_t, y_t), plus the label-constraint calibrator
        calibrator_weight * mean_i sum_t relu(yhat_t - yhat_{t-1}) when its weight is > 0."""
        if probs.dim() != 2 or probs.shape[1] != self.num_tasks:
            raise ValueError(f"probs must be [B, {self.num_tasks}], got {list(probs.shape)}")
        check_finite(probs)
        y = self.validate_labels(labels, probs)
        p = probs.float()
        loss = F.binary_cross_entropy(p, y, reduction="none").mean(0).sum()
        if self.calibrator_weight > 0:
            loss = loss + self.calibrator_weight * calibrator(p)
        return loss


def check_finite(probs: torch.Tensor) -> None:
    """Stop with :class:`TrainingDiverged` when the model's output is not finite (before the BCE sees it)."""
    if torch.compiler.is_compiling():
        torch._assert_async(torch.isfinite(probs).all(), "the model's output is not finite: training diverged")
        return
    bad = ~torch.isfinite(probs)
    if bool(bad.any()):
        raise TrainingDiverged(f"training diverged: the model's output holds {int(bad.sum())} non-finite "
                               f"value(s) (NaN or inf); lower the learning rate (--lr)")


def calibrator(probs: torch.Tensor) -> torch.Tensor:
    """AITM's label constraint: batch mean of sum_t relu(yhat_t - yhat_{t-1})."""
    return torch.relu(probs[:, 1:] - probs[:, :-1]).sum(1).mean()
