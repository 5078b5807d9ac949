"""MNCM: the Multi-level Network Cascades Model (Wu, CIKM 2022), as designed in docs/decisions.md
("Baselines"): only the abstract is public, so the structure below is our reading of it."""
from __future__ import annotations

from functools import partial
from typing import Optional, Sequence

import torch
from torch import nn

from .aitm import AITM_CALIBRATOR_WEIGHT, TransferTowerModel
from .experts import (DEFAULT_EXPERT_DIMS, DEFAULT_NUM_SHARED_EXPERTS, DEFAULT_NUM_SPECIFIC_EXPERTS, CGCLevel,
                      check_count)
from .tower_models import EXPERT_TOWER_DIMS
from .transfer import CascadeTransfer


class MNCMBottom(nn.Module):
    """A CGC level whose task-specific experts pass through the expert-level transfer (EITM) before
    the gates: expert k of task t attends to [its own output, transfer(expert k of task t-1 after
    EITM)], the AITM transfer applied expert by expert. Task t's gate then mixes its transferred
    experts with the shared ones."""

    def __init__(self, in_dim: int, num_tasks: int, num_shared_experts: int, num_specific_experts: int,
                 expert_dims: Sequence[int], share_attention: bool = True, dropout: float = 0.0,
                 batch_norm: bool = False):
        super().__init__()
        check_count("num_specific_experts", num_specific_experts, 1)  # EITM links task-specific experts
        self.num_tasks = num_tasks
        self.cgc = CGCLevel(in_dim, num_tasks, num_shared_experts, num_specific_experts, expert_dims, dropout,
                            batch_norm, shared_output=False)
        self.eitm = CascadeTransfer(num_tasks, self.cgc.out_dim, share_attention, dropout)
        self.out_dim = self.cgc.out_dim

    def forward(self, e: torch.Tensor) -> list[torch.Tensor]:
        inputs = [e] * self.num_tasks
        specific, shared = self.cgc.experts(inputs, e)
        tasks, _ = self.cgc.combine(inputs, e, self.eitm(specific), shared)
        return tasks


class MNCM(TransferTowerModel):
    """MNCM: AITM with its shared bottom replaced by shared + task-specific experts.

    Expert level (EITM): task-specific experts of consecutive tasks are linked by AITM's transfer
    (see ``MNCMBottom``). Task level (TITM): the towers over the gated mixtures are linked exactly as
    AITM links its towers. Like AITM: no stop-gradient, label-constraint calibrator weight 0.6.
    """

    requires_cascade = True  # AITM's transfer and calibrator assume the cascade

    def __init__(self, field_dims: Sequence[int], num_tasks: int = 2, embed_dim: int = 5,
                 num_shared_experts: int = DEFAULT_NUM_SHARED_EXPERTS,
                 num_specific_experts: int = DEFAULT_NUM_SPECIFIC_EXPERTS,
                 expert_dims: Sequence[int] = DEFAULT_EXPERT_DIMS, tower_dims: Sequence[int] = EXPERT_TOWER_DIMS,
                 dropout: float = 0.0, batch_norm: bool = False, share_attention: bool = True,
                 calibrator_weight: float = AITM_CALIBRATOR_WEIGHT, backend: str = "auto",
                 task_names: Optional[Sequence[str]] = None, embedding: Optional[nn.Module] = None,
                 num_dense: int = 0, dense_names: Optional[Sequence[str]] = None):
        bottom = partial(MNCMBottom, num_tasks=num_tasks, num_shared_experts=num_shared_experts,
                         num_specific_experts=num_specific_experts, expert_dims=expert_dims,
                         share_attention=share_attention, dropout=dropout, batch_norm=batch_norm)
        super().__init__(field_dims, num_tasks, embed_dim, tower_dims, dropout, batch_norm, share_attention,
                         calibrator_weight, backend, task_names, embedding, bottom, num_dense, dense_names)

    @property
    def titm(self) -> CascadeTransfer:
        """The task-level transfer (between towers)."""
        return self.transfer

    @property
    def eitm(self) -> CascadeTransfer:
        """The expert-level transfer (between task-specific experts)."""
        return self.bottom.eitm
