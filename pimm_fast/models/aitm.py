"""AITM: the Adaptive Information Transfer Multi-task framework (Xi et al., KDD 2021)."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .tower_models import TowerModel, bottom_factory
from .transfer import CascadeTransfer

AITM_CALIBRATOR_WEIGHT = 0.6  # the official code's default label-constraint weight


class TransferTowerModel(TowerModel):
    """Tower outputs q_t carried along the funnel by AITM's transfer: z_0 = q_0,
    z_t = AIT([q_t, p_{t-1}]), p_{t-1} = ReLU(Linear(z_{t-1})); yhat_t = sigmoid(w_t . z_t + b_t)."""

    def __init__(self, field_dims: Sequence[int], num_tasks: int, embed_dim: int, tower_dims: Sequence[int],
                 dropout: float, batch_norm: bool, share_attention: bool, calibrator_weight: float, backend: str,
                 task_names: Optional[Sequence[str]], embedding: Optional[nn.Module],
                 bottom: Callable[[int], nn.Module], num_dense: int = 0,
                 dense_names: Optional[Sequence[str]] = None):
        super().__init__(field_dims, num_tasks, embed_dim, tower_dims, dropout, batch_norm, calibrator_weight,
                         backend, task_names, embedding, bottom, num_dense, dense_names)
        self.transfer = CascadeTransfer(num_tasks, self.tower_dim, share_attention, dropout)

    def _forward(self, x: torch.Tensor, labels: Optional[torch.Tensor],
                 dense: Optional[torch.Tensor] = None) -> torch.Tensor:
        return torch.sigmoid(self.head_logits(self.transfer(self.tower_outputs(x, dense))))


class AITM(TransferTowerModel):
    """AITM as the official code computes it: towers q_t over the shared embedding; the AIT has no
    bias and no residual, one Q/K/V shared by both tokens (and, with ``share_attention``, by every
    task); task t's loss reaches task t-1's tower through p_{t-1} (no stop-gradient). The loss adds
    ``calibrator_weight`` (0.6) * batch mean of sum_t relu(yhat_t - yhat_{t-1}).
    """

    requires_cascade = True  # the calibrator pushes yhat_t <= yhat_{t-1}: it assumes the cascade

    def __init__(self, field_dims: Sequence[int], num_tasks: int = 2, embed_dim: int = 5,
                 tower_dims: Sequence[int] = (128, 64, 32), dropout: float = 0.0, batch_norm: bool = False,
                 share_attention: bool = True, calibrator_weight: float = AITM_CALIBRATOR_WEIGHT,
                 backend: str = "auto", task_names: Optional[Sequence[str]] = None,
                 embedding: Optional[nn.Module] = None, num_dense: int = 0,
                 dense_names: Optional[Sequence[str]] = None):
        super().__init__(field_dims, num_tasks, embed_dim, tower_dims, dropout, batch_norm, share_attention,
                         calibrator_weight, backend, task_names, embedding,
                         bottom_factory(num_tasks, dropout, batch_norm, "towers"), num_dense, dense_names)
