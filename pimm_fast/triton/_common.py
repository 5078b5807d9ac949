"""Helpers shared by the Triton launchers: device guard, block sizes, optimizer-state checks."""
from __future__ import annotations

import contextlib

import torch
import triton

# Columns handled per step of a kernel's loop over D (or d): keeps a tile at <= BLOCK_ROWS x 32 values
# in registers whatever the width, so that every width compiles without spilling.
MAX_BLOCK_D = 32


def device_guard(t: torch.Tensor):
    """Launch on the tensor's device, not the current one (Triton launches on torch's current device)."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def block_d(D: int) -> int:
    """Columns per step: the whole row up to MAX_BLOCK_D, in steps of MAX_BLOCK_D beyond."""
    return min(MAX_BLOCK_D, triton.next_power_of_2(max(int(D), 1)))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64; fp32, bf16 and fp16 are computed (and accumulated) in fp32."""
    return torch.promote_types(dtype, torch.float32)


def check_state(op: str, name: str, state: torch.Tensor, weight: torch.Tensor, per_element: bool) -> None:
    """The optimizer state's checks of csrc/checks.h (check_state), same messages and exception types."""
    expected = compute_dtype(weight.dtype)
    if state.dtype != expected:
        raise TypeError(f"{op}: {name} must have dtype {expected} for a {weight.dtype} table, got {state.dtype}")
    shape = tuple(weight.shape) if per_element else (weight.shape[0],)
    if tuple(state.shape) != shape:
        raise ValueError(f"{op}: {name} must have shape {list(shape)}, got {list(state.shape)}")
    if not state.is_contiguous() or state.device != weight.device:
        raise ValueError(f"{op}: {name} must be contiguous and on the device of weight")


def check_step(op: str, step: torch.Tensor, weight: torch.Tensor) -> None:
    """Adam's step counter: a 0-dim int64 tensor on the CPU or on the table's device."""
    if step.dim() != 0 or step.dtype != torch.int64 or (step.device.type != "cpu" and step.device != weight.device):
        raise ValueError(f"{op}: step must be a 0-dim int64 tensor on the CPU or on the device of weight")


def check_embedding_concat_backward(grad_out: torch.Tensor, indices: torch.Tensor) -> None:
    """csrc/checks.h check_embedding_concat_backward."""
    F = indices.shape[1] if indices.dim() == 2 else 0
    if (indices.dim() != 2 or grad_out.dim() != 2 or grad_out.shape[0] != indices.shape[0]
            or (F and grad_out.shape[1] % F)):
        raise ValueError(f"embedding_concat_backward: grad_out must be [B, F*D] for indices {list(indices.shape)}, "
                         f"got {list(grad_out.shape)}")


def check_embedding_bags_backward(grad_out: torch.Tensor, bag_offsets: torch.Tensor,
                                  field_offsets: torch.Tensor) -> None:
    """csrc/checks.h check_embedding_bags_backward: grad_out is [B, F*D] with B the bags' batch."""
    F = field_offsets.numel()
    B = (bag_offsets.numel() - 1) // F if F else 0
    if grad_out.dim() != 2 or F == 0 or grad_out.shape[1] % F or grad_out.shape[0] != B:
        raise ValueError(f"embedding_bags_concat_backward: grad_out must be [B, F*D] with B = {B} bags per field "
                         f"and F = {F}, got {list(grad_out.shape)}")
