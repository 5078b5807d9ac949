"""Multi-layer perceptron towers."""
from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """Linear -> [BatchNorm] -> activation -> [Dropout], for each width in ``dims``."""

    def __init__(self, in_dim: int, dims: Sequence[int], dropout: float = 0.0, batch_norm: bool = False,
                 activation: str = "relu"):
        dims = tuple(dims)
        if not dims or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in dims):
            raise ValueError(f"tower dims must be a non-empty sequence of positive ints, got {dims!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        width = in_dim
        for out in dims:
            layers.append(nn.Linear(width, out))
            if batch_norm:
                layers.append(nn.BatchNorm1d(out))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = out
        super().__init__(*layers)
        self.in_dim = in_dim
        self.out_dim = width
