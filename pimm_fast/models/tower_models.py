"""Models made of embedding -> bottom -> one tower per task -> one head per task:
Shared-Bottom, MMoE, PLE and (with its funnel product) ESMM. PIMM and AITM build on the same frame.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..modules import MLP
from .base import CascadeModel, make_embedding
from .experts import (DEFAULT_EXPERT_DIMS, DEFAULT_NUM_EXPERTS, DEFAULT_NUM_LEVELS, DEFAULT_NUM_SHARED_EXPERTS,
                      DEFAULT_NUM_SPECIFIC_EXPERTS, make_bottom)

EXPERT_TOWER_DIMS = (32,)  # towers on top of experts are short: the experts already are deep


class TowerModel(CascadeModel):
    """embedding -> bottom (one input per task) -> towers v_t = MLP_t -> heads w_t . z_t + b_t.

    ``bottom`` builds the bottom from the embedding's output width. Subclasses decide how the tower
    outputs become probabilities; by default yhat_t = sigmoid(head_t(v_t)), tasks independent.
    """

    def __init__(self, field_dims: Sequence[int], num_tasks: int, embed_dim: int, tower_dims: Sequence[int],
                 dropout: float, batch_norm: bool, calibrator_weight: float, backend: str,
                 task_names: Optional[Sequence[str]], embedding: Optional[nn.Module],
                 bottom: Callable[[int], nn.Module], num_dense: int = 0,
                 dense_names: Optional[Sequence[str]] = None):
        super().__init__(num_tasks, task_names, calibrator_weight, num_dense, dense_names)
        self.embedding = make_embedding(field_dims, embed_dim, backend, embedding)
        self.bottom = bottom(self.embedding.output_dim + (self.dense_input.out_dim if self.dense_input else 0))
        self.towers = nn.ModuleList(MLP(self.bottom.out_dim, tower_dims, dropout=dropout, batch_norm=batch_norm)
                                    for _ in range(num_tasks))
        self.heads = nn.ModuleList(nn.Linear(self.tower_dim, 1) for _ in range(num_tasks))

    @property
    def tower_dim(self) -> int:
        return self.towers[0].out_dim

    def bottom_input(self, x: torch.Tensor, dense: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The embeddings [B, F * D], followed by the standardised dense block [B, 2K] when there is one."""
        e = self.embedding(x)
        return e if dense is None else torch.cat([e, dense.to(e.dtype)], dim=1)

    def tower_outputs(self, x: torch.Tensor, dense: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
        """v_t [B, d] of every task (``dense``: the output of ``dense_features``, when the model has any)."""
        return [tower(v) for tower, v in zip(self.towers, self.bottom(self.bottom_input(x, dense)))]

    def head_logits(self, representations: Sequence[torch.Tensor]) -> torch.Tensor:
        """[B, T] logits of the heads over one [B, d] representation per task."""
        return torch.cat([head(z) for head, z in zip(self.heads, representations)], dim=1)

    def _forward(self, x: torch.Tensor, labels: Optional[torch.Tensor],
                 dense: Optional[torch.Tensor] = None) -> torch.Tensor:
        return torch.sigmoid(self.head_logits(self.tower_outputs(x, dense)))


def bottom_factory(num_tasks: int, dropout: float, batch_norm: bool, backbone: str,
                   **options) -> Callable[[int], nn.Module]:
    """make_bottom(backbone, ...) as a function of the embedding width, as TowerModel takes it."""
    return partial(make_bottom, backbone, num_tasks=num_tasks, dropout=dropout, batch_norm=batch_norm, **options)


class SharedBottom(TowerModel):
    """The paper's Shared-Bottom: the embedding is shared, each task has its own tower and head."""

    requires_cascade = False  # independent per-task BCE: labels that break the cascade can train it

    def __init__(self, field_dims: Sequence[int], num_tasks: int = 2, embed_dim: int = 5,
                 tower_dims: Sequence[int] = (128, 64, 32), dropout: float = 0.0, batch_norm: bool = False,
                 calibrator_weight: float = 0.0, backend: str = "auto", task_names: Optional[Sequence[str]] = None,
                 embedding: Optional[nn.Module] = None, num_dense: int = 0,
                 dense_names: Optional[Sequence[str]] = None):
        super().__init__(field_dims, num_tasks, embed_dim, tower_dims, dropout, batch_norm, calibrator_weight,
                         backend, task_names, embedding, bottom_factory(num_tasks, dropout, batch_norm, "towers"),
                         num_dense, dense_names)


class ESMM(TowerModel):
    """ESMM (Ma et al., SIGIR 2018) over T stages: tower t predicts the conditional probability
    q_t = P(y_t = 1 | y_{t-1} = 1, x); the output is the entire-space yhat_t = prod_{s <= t} q_s,
    trained on the entire-space labels y_t. Task t's loss reaches towers 0..t, never a later one.
    """

    def __init__(self, field_dims: Sequence[int], num_tasks: int = 2, embed_dim: int = 5,
                 tower_dims: Sequence[int] = (128, 64, 32), dropout: float = 0.0, batch_norm: bool = False,
                 calibrator_weight: float = 0.0, backend: str = "auto", task_names: Optional[Sequence[str]] = None,
                 embedding: Optional[nn.Module] = None, num_dense: int = 0,
                 dense_names: Optional[Sequence[str]] = None):
        super().__init__(field_dims, num_tasks, embed_dim, tower_dims, dropout, batch_norm, calibrator_weight,
                         backend, task_names, embedding, bottom_factory(num_tasks, dropout, batch_norm, "towers"),
                         num_dense, dense_names)

    def conditional_probs(self, x: torch.Tensor, dense: Optional[torch.Tensor] = None) -> torch.Tensor:
        """q [B, T]: q_0 = P(y_0 | x), q_t = P(y_t | y_{t-1} = 1, x) (``dense``: raw dense features)."""
        return torch.sigmoid(self.head_logits(self.tower_outputs(x, self.dense_features(dense, x))))

    def _forward(self, x: torch.Tensor, labels: Optional[torch.Tensor],
                 dense: Optional[torch.Tensor] = None) -> torch.Tensor:
        # the product in log space: a long funnel of small q_t neither underflows nor loses gradient
        return torch.exp(torch.cumsum(F.logsigmoid(self.head_logits(self.tower_outputs(x, dense))), dim=1))


class MMoE(TowerModel):
    """MMoE (Ma et al., KDD 2018): ``num_experts`` shared experts, one softmax gate per task, a tower per
    task on its gated mixture. The PIMM paper uses 4 experts on Ali-CCP and 6 on its industrial data."""

    requires_cascade = False

    def __init__(self, field_dims: Sequence[int], num_tasks: int = 2, embed_dim: int = 5,
                 num_experts: int = DEFAULT_NUM_EXPERTS, expert_dims: Sequence[int] = DEFAULT_EXPERT_DIMS,
                 tower_dims: Sequence[int] = EXPERT_TOWER_DIMS, dropout: float = 0.0, batch_norm: bool = False,
                 calibrator_weight: float = 0.0, backend: str = "auto", task_names: Optional[Sequence[str]] = None,
                 embedding: Optional[nn.Module] = None, num_dense: int = 0,
                 dense_names: Optional[Sequence[str]] = None):
        super().__init__(field_dims, num_tasks, embed_dim, tower_dims, dropout, batch_norm, calibrator_weight,
                         backend, task_names, embedding,
                         bottom_factory(num_tasks, dropout, batch_norm, "mmoe", num_experts=num_experts,
                                       expert_dims=expert_dims), num_dense, dense_names)


class PLE(TowerModel):
    """PLE (Tang et al., RecSys 2020): ``num_levels`` CGC levels of ``num_shared_experts`` shared and
    ``num_specific_experts`` experts per task (the PIMM paper: 2 + 2), a tower per task on top."""

    requires_cascade = False

    def __init__(self, field_dims: Sequence[int], num_tasks: int = 2, embed_dim: int = 5,
                 num_shared_experts: int = DEFAULT_NUM_SHARED_EXPERTS,
                 num_specific_experts: int = DEFAULT_NUM_SPECIFIC_EXPERTS, num_levels: int = DEFAULT_NUM_LEVELS,
                 expert_dims: Sequence[int] = DEFAULT_EXPERT_DIMS, tower_dims: Sequence[int] = EXPERT_TOWER_DIMS,
                 dropout: float = 0.0, batch_norm: bool = False, calibrator_weight: float = 0.0,
                 backend: str = "auto", task_names: Optional[Sequence[str]] = None,
                 embedding: Optional[nn.Module] = None, num_dense: int = 0,
                 dense_names: Optional[Sequence[str]] = None):
        super().__init__(field_dims, num_tasks, embed_dim, tower_dims, dropout, batch_norm, calibrator_weight,
                         backend, task_names, embedding,
                         bottom_factory(num_tasks, dropout, batch_norm, "ple", num_shared_experts=num_shared_experts,
                                       num_specific_experts=num_specific_experts, num_levels=num_levels,
                                       expert_dims=expert_dims), num_dense, dense_names)
