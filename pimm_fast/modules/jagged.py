"""Ids of fields that may hold several values per sample (multi-hot), in one flat tensor."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch

FieldIds = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class JaggedIds:
    """The ids of F fields for B samples, field-major, as torchrec's KeyedJaggedTensor keeps them.

    The bag of field f for sample b is ``values[bag_offsets[f*B + b] : bag_offsets[f*B + b + 1]]``
    (field-local ids); a single-valued field is a field of bags of length 1. ``shape`` is (B, F), like
    the dense [B, F] ids that models also accept.
    """

    values: torch.Tensor
    bag_offsets: torch.Tensor
    num_fields: int

    def __post_init__(self):
        if self.values.dim() != 1 or self.values.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"JaggedIds.values must be a 1-D int32/int64 tensor, got {self.values.dtype} "
                            f"{list(self.values.shape)}")
        if self.bag_offsets.dim() != 1 or self.bag_offsets.dtype != torch.int64 or self.bag_offsets.numel() < 1:
            raise TypeError("JaggedIds.bag_offsets must be a non-empty 1-D int64 tensor")
        if self.num_fields < 1 or (self.bag_offsets.numel() - 1) % self.num_fields:
            raise ValueError(f"JaggedIds: bag_offsets has {self.bag_offsets.numel()} entries, not F*B + 1 for "
                             f"F = {self.num_fields}")
        if self.values.device != self.bag_offsets.device:
            raise ValueError("JaggedIds: values and bag_offsets are on different devices")

    @property
    def batch_size(self) -> int:
        return (self.bag_offsets.numel() - 1) // self.num_fields

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.batch_size, self.num_fields))

    @property
    def device(self) -> torch.device:
        return self.values.device

    def to(self, device) -> "JaggedIds":
        return JaggedIds(self.values.to(device), self.bag_offsets.to(device), self.num_fields)

    @classmethod
    def from_dense(cls, x: torch.Tensor) -> "JaggedIds":
        """Single-valued ids [B, F] as bags of length 1."""
        if x.dim() != 2:
            raise ValueError(f"expected ids of shape [B, F], got {list(x.shape)}")
        B, F = x.shape
        return cls(x.t().reshape(-1), torch.arange(F * B + 1, device=x.device), F)

    @classmethod
    def from_fields(cls, fields: Sequence[FieldIds]) -> "JaggedIds":
        """One entry per field: ids [B] for a single-valued field, or (ids [nnz], offsets [B + 1]) for a
        multi-valued one, the layout of ``torch.nn.EmbeddingBag(include_last_offset=True)``."""
        if not fields:
            raise ValueError("JaggedIds.from_fields needs at least one field")
        values, lengths, batch = [], [], None
        for f, field in enumerate(fields):
            if isinstance(field, torch.Tensor):
                if field.dim() != 1:
                    raise ValueError(f"field {f}: single-valued ids must be [B], got {list(field.shape)}")
                ids, length = field, torch.ones(field.numel(), dtype=torch.int64, device=field.device)
            else:
                ids, offsets = field
                if offsets.dim() != 1 or offsets.numel() < 1 or int(offsets[0]) != 0 or int(offsets[-1]) != ids.numel():
                    raise ValueError(f"field {f}: offsets must run from 0 to len(ids) = {ids.numel()}")
                length = offsets[1:] - offsets[:-1]
                if bool((length < 0).any()):
                    raise ValueError(f"field {f}: offsets must not decrease")
            if batch is None:
                batch = length.numel()
            elif length.numel() != batch:
                raise ValueError(f"field {f} has {length.numel()} samples, field 0 has {batch}")
            values.append(ids.to(torch.int64))
            lengths.append(length.to(torch.int64))
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64, device=lengths[0].device), torch.cat(lengths).cumsum(0)])
        return cls(torch.cat(values), offsets, len(fields))
