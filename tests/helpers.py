"""Input factories shared by the tests and benchmarks."""
from __future__ import annotations

import math
from typing import Sequence

import torch


def make_embedding_inputs(batch: int, field_dims: Sequence[int], dim: int, dtype=torch.float32,
                          index_dtype=torch.int64, device="cpu"):
    """(indices [B, F], weight [sum(field_dims), D], field_offsets [F]) with every id in range."""
    dims = torch.tensor(field_dims, dtype=torch.int64)
    indices = (torch.rand(batch, len(field_dims), dtype=torch.float64) * dims).long().to(index_dtype)
    weight = torch.randn(int(dims.sum()), dim, dtype=torch.float64).to(dtype)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), dims.cumsum(0)[:-1]])
    return indices.to(device), weight.to(device), offsets.to(device)


def make_pim_inputs(batch: int, d: int, dtype=torch.float32, bias: bool = False, p: float = 0.5,
                    seed: int = 1234, device="cpu") -> dict:
    """Keyword arguments of pim_attention, weights scaled as nn.Linear initialises them."""
    bound = 1.0 / math.sqrt(d)
    uniform = lambda *shape: ((torch.rand(*shape, dtype=torch.float64) * 2 - 1) * bound).to(dtype)  # noqa: E731
    inputs = {
        "v": torch.randn(batch, d, dtype=torch.float64).relu().to(dtype),
        "h_prev": torch.randn(batch, d, dtype=torch.float64).relu().to(dtype),
        "label_prev": (torch.rand(batch) < 0.3).to(dtype),
        "pred_prev": torch.rand(batch, dtype=torch.float64).to(dtype),
        "w_prior": (torch.rand(d, dtype=torch.float64) * 2 - 1).to(dtype),
        "w_q": uniform(d, d), "w_k": uniform(d, d), "w_v": uniform(d, d),
        "p": torch.tensor(p, dtype=torch.float32),
        "seed": torch.tensor(seed, dtype=torch.int64),
        "b_q": uniform(d) if bias else None, "b_k": uniform(d) if bias else None,
        "b_v": uniform(d) if bias else None,
    }
    return {k: (v.to(device) if isinstance(v, torch.Tensor) and k not in ("p", "seed") else v)
            for k, v in inputs.items()}


PIM_ARGS = ("v", "h_prev", "label_prev", "pred_prev", "w_prior", "w_q", "w_k", "w_v", "p", "seed",
            "b_q", "b_k", "b_v")


def pim_args(inputs: dict) -> tuple:
    """Positional arguments of the pim_attention op (schema order)."""
    return tuple(inputs[k] for k in PIM_ARGS)
