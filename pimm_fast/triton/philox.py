"""tl.rand exposed as a function: the draws every pimm_fast backend must reproduce bit for bit."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _uniform_kernel(out_ptr, seed, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offsets, tl.rand(seed, offsets), mask=offsets < n)


def uniform(seed: int, n: int, device: torch.device | str = "cuda") -> torch.Tensor:
    """u_i = tl.rand(seed, i) for i < n (int32 counters), float32."""
    out = torch.empty(n, dtype=torch.float32, device=device)
    block = 1024
    _uniform_kernel[(triton.cdiv(n, block),)](out, seed, n, BLOCK=block)
    return out
