"""Categorical fields embedded from one flat table with per-field row offsets."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .. import ops


def check_field_dims(field_dims: Sequence[int]) -> tuple[int, ...]:
    dims = tuple(field_dims)
    if not dims:
        raise ValueError("field_dims must name at least one field")
    for f, n in enumerate(dims):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"field_dims[{f}] must be a positive int (the field's vocabulary size), got {n!r}")
    return dims


class FieldEmbedding(nn.Module):
    """x [B, F] int ids, x[:, f] in [0, field_dims[f]) -> concat_f E[offset_f + x_f]  [B, F * embed_dim].

    One parameter ``weight`` of shape [sum(field_dims), embed_dim]; field f owns rows
    [offset_f, offset_f + field_dims[f]). An id outside its field raises IndexError (naming the field,
    id and sample) before any row is read.
    """

    def __init__(self, field_dims: Sequence[int], embed_dim: int, backend: str = "auto", init_std: float = 0.01,
                 device=None, dtype=None):
        super().__init__()
        self.field_dims = check_field_dims(field_dims)
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"embed_dim must be a positive int, got {embed_dim!r}")
        if backend not in ops.BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {ops.BACKENDS}")
        self.embed_dim = embed_dim
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(sum(self.field_dims), embed_dim, device=device, dtype=dtype))
        offsets = torch.tensor((0,) + self.field_dims[:-1], dtype=torch.int64, device=device).cumsum(0)
        self.register_buffer("field_offsets", offsets, persistent=False)
        self.init_std = init_std
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.init_std)

    @property
    def num_fields(self) -> int:
        return len(self.field_dims)

    @property
    def output_dim(self) -> int:
        return self.num_fields * self.embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.num_fields:
            raise ValueError(f"expected ids of shape [B, {self.num_fields}] (one column per field), "
                             f"got {list(x.shape)}")
        if x.device != self.weight.device:
            raise ValueError(f"ids are on {x.device} but the embedding table is on {self.weight.device}")
        return ops.embedding_concat(x, self.weight, self.field_offsets, backend=self.backend)

    def extra_repr(self) -> str:
        return f"fields={self.num_fields}, rows={self.weight.shape[0]}, embed_dim={self.embed_dim}, backend={self.backend!r}"
