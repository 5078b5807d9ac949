"""PIMM: the Prior Information Merged Model (Weng et al., SIGIR 2023)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..modules import PIM, Curriculum
from ..modules.tower import make_activation
from .tower_models import TowerModel, bottom_factory

SEED_HIGH = 2**62  # Philox keys are drawn in [0, 2**62) from torch's generator


class PIMM(TowerModel):
    """Shared embedding -> one tower per task -> PIM between consecutive tasks (ARCHITECTURE.md sec. 2).

    Task 0: U_0 = v_0. Task t >= 1: U_t = PIM(v_t, H_{t-1}, y_{t-1} or yhat_{t-1}). Each task predicts
    yhat_t = sigmoid(w_t . U_t + b_t); H_t = FC_t(U_t) feeds the next PIM and carries gradient back.

    ``model(x)`` predicts without labels (p = 0). ``model(x, labels=y)`` in training mode feeds the
    label y_{t-1} to PIM with the curriculum probability p = curriculum(epoch), set by ``set_epoch``.
    In eval mode labels are checked but not fed: evaluation sees what inference sees.

    ``backbone`` is what the towers read: "towers" (the paper's model: the embedding), "mmoe" or "ple"
    (task t's tower reads its gated expert mixture; the expert options then apply, None = the
    defaults of ``MMoE`` / ``PLE``).
    """

    def __init__(self, field_dims: Sequence[int], num_tasks: int = 2, embed_dim: int = 5,
                 tower_dims: Sequence[int] = (128, 64, 32), curriculum: Optional[Curriculum] = None,
                 dropout: float = 0.0, batch_norm: bool = False, attention_bias: bool = False,
                 transfer_activation: str = "relu", calibrator_weight: float = 0.0, backend: str = "auto",
                 task_names: Optional[Sequence[str]] = None, embedding: Optional[nn.Module] = None,
                 backbone: str = "towers", num_experts: Optional[int] = None,
                 expert_dims: Optional[Sequence[int]] = None, num_shared_experts: Optional[int] = None,
                 num_specific_experts: Optional[int] = None, num_levels: Optional[int] = None,
                 num_dense: int = 0, dense_names: Optional[Sequence[str]] = None):
        bottom = bottom_factory(num_tasks, dropout, batch_norm, backbone, num_experts=num_experts,
                                expert_dims=expert_dims, num_shared_experts=num_shared_experts,
                                num_specific_experts=num_specific_experts, num_levels=num_levels)
        super().__init__(field_dims, num_tasks, embed_dim, tower_dims, dropout, batch_norm, calibrator_weight,
                         backend, task_names, embedding, bottom, num_dense, dense_names)
        self.backbone = backbone
        self.curriculum = curriculum if curriculum is not None else Curriculum.aliccp()
        d = self.tower_dim
        # FC_t: the implicit representation H_t passed from task t to task t+1
        self.transfers = nn.ModuleList(
            nn.Sequential(nn.Linear(d, d), make_activation(transfer_activation)) for _ in range(num_tasks - 1))
        self.pims = nn.ModuleList(PIM(d, bias=attention_bias, backend=backend) for _ in range(num_tasks - 1))
        self.epoch = 0.0
        # p lives in a buffer so that a changing p does not make torch.compile recompile.
        self.register_buffer("sampling_p", torch.tensor(self.curriculum(0), dtype=torch.float32), persistent=False)
        self.register_buffer("_no_seed", torch.zeros((), dtype=torch.int64), persistent=False)

    def set_epoch(self, epoch: float) -> float:
        """Set the curriculum's epoch (fractional for a per-step schedule); returns the new p."""
        p = self.curriculum(epoch)
        self.epoch = float(epoch)
        self.sampling_p.fill_(p)
        return p

    @property
    def p(self) -> float:
        return float(self.sampling_p)

    requires_cascade = True  # PIM feeds y_{t-1}: a label that breaks the cascade would teach the wrong prior

    def _forward(self, x: torch.Tensor, labels: Optional[torch.Tensor],
                 dense: Optional[torch.Tensor] = None) -> torch.Tensor:
        sample = labels is not None and self.training
        seeds = torch.randint(0, SEED_HIGH, (self.num_tasks - 1,), device=x.device) if sample else None
        probs: list[torch.Tensor] = []
        h_prev = None
        for t, v in enumerate(self.tower_outputs(x, dense)):
            if t == 0:
                u = v
            else:
                u, _ = self.pims[t - 1](v, h_prev, probs[t - 1].detach(),
                                        labels[:, t - 1] if sample else None, self.sampling_p,
                                        seeds[t - 1] if sample else self._no_seed)
            probs.append(torch.sigmoid(self.heads[t](u)).squeeze(1))
            if t < self.num_tasks - 1:
                h_prev = self.transfers[t](u)
        return torch.stack(probs, dim=1)
