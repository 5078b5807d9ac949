"""The Prior Information Merged (PIM) module of task t >= 1 (paper section 2.3, eqs. 1-3, 5-6)."""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import nn

from .. import ops


class PIM(nn.Module):
    """Merges what task t-1 knows into task t's tower output v_t.

    y* = label y_{t-1} with probability p, else the prediction yhat_{t-1} (no gradient through y*);
    Z = sigmoid(y* W), Zm = Z + H_{t-1}; U_t = v_t + sum_{a in [v_t, Zm]} softmax_a(<Qa, Ka>/sqrt(d)) V a.
    The draw of sample i is Philox(seed, i) < p, the same on every backend.
    """

    def __init__(self, dim: int, bias: bool = False, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.dim = dim
        self.backend = backend
        self.w_prior = nn.Parameter(torch.empty(dim, **factory))  # W^{t-1} in R^{1 x d}
        self.query = nn.Linear(dim, dim, bias=bias, **factory)
        self.key = nn.Linear(dim, dim, bias=bias, **factory)
        self.value = nn.Linear(dim, dim, bias=bias, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = math.sqrt(6.0 / (1 + self.dim))  # Glorot-uniform of a 1 x d matrix, as Keras would
        nn.init.uniform_(self.w_prior, -bound, bound)
        for layer in (self.query, self.key, self.value):
            layer.reset_parameters()

    def forward(self, v: torch.Tensor, h_prev: torch.Tensor, pred_prev: torch.Tensor,
                label_prev: Optional[torch.Tensor] = None, p: Union[float, torch.Tensor] = 0.0,
                seed: Union[int, torch.Tensor] = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (U_t [B, d], select [B] bool: True where the label was used)."""
        return ops.pim_attention(v, h_prev, label_prev, pred_prev.detach(), self.w_prior, self.query.weight,
                                 self.key.weight, self.value.weight, p, seed, self.query.bias, self.key.bias,
                                 self.value.bias, backend=self.backend)
