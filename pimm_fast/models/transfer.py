"""AITM's adaptive information transfer (Xi et al., KDD 2021), as the official code computes it.

Used by AITM between task towers and by MNCM both between towers (TITM) and between task-specific
experts (EITM).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..modules.tower import make_activation

ATTENTION_INIT_STD = 0.01  # the official code draws Q, K, V from N(0, 0.01^2)


class AttentionTransfer(nn.Module):
    """The AIT attention over tokens a (dim -2): sum_a w_a V a with w = softmax_a(<Q a, K a> / sqrt(d)).

    Q, K, V are d x d maps without bias, shared by all tokens; there is no residual connection.
    Any leading dims are batch dims, so [B, K, 2, d] attends within each of K expert pairs.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in (self.query, self.key, self.value):
            nn.init.normal_(layer.weight, std=ATTENTION_INIT_STD)

    def weights(self, tokens: torch.Tensor) -> torch.Tensor:
        """Attention weights [..., L] of tokens [..., L, d]."""
        scores = (self.query(tokens) * self.key(tokens)).sum(-1) / math.sqrt(self.dim)
        return torch.softmax(scores, dim=-1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        w = self.weights(tokens)
        return (w.unsqueeze(-1) * self.value(tokens)).sum(-2)


class CascadeTransfer(nn.Module):
    """Carries a representation along the funnel: z_0 = q_0, z_t = AIT([q_t, p_{t-1}]) for t >= 1,
    where p_{t-1} = transfer_t(z_{t-1}) = activation(Linear(z_{t-1})) [+ dropout].

    No stop-gradient (as in the official AITM code): task t's loss trains task t-1's tower through
    p_{t-1}. ``share_attention`` uses one AIT for every step, as the official multi-task code does;
    otherwise step t has its own. Inputs q_t may carry extra leading dims (MNCM's experts).
    """

    def __init__(self, num_tasks: int, dim: int, share_attention: bool = True, dropout: float = 0.0,
                 activation: str = "relu"):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.transfers = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), make_activation(activation),
                          *([nn.Dropout(dropout)] if dropout > 0 else []))
            for _ in range(num_tasks - 1))
        self.attentions = nn.ModuleList(
            AttentionTransfer(dim) for _ in range(1 if share_attention else num_tasks - 1))

    def attention(self, step: int) -> AttentionTransfer:
        """The AIT of task ``step`` + 1."""
        return self.attentions[0 if len(self.attentions) == 1 else step]

    def forward(self, towers: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(towers) != len(self.transfers) + 1:
            raise ValueError(f"expected {len(self.transfers) + 1} task inputs, got {len(towers)}")
        outputs = [towers[0]]
        for step, (q, transfer) in enumerate(zip(towers[1:], self.transfers)):
            p = transfer(outputs[-1])
            outputs.append(self.attention(step)(torch.stack([q, p], dim=-2)))
        return outputs
