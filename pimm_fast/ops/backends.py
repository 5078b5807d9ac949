"""Which backend runs an op: availability per device and the "auto" choice."""
from __future__ import annotations

import importlib.util
import os
from typing import Union

import torch

from .. import _extension

BACKENDS = ("auto", "reference", "cpp", "cuda", "triton")

# Kernel backend -> (dispatch key it registers for, device types it serves).
_KERNEL_DEVICES = {"cpp": ("CPU", ("cpu",)), "cuda": ("CUDA", ("cuda",)), "triton": (None, ("cuda", "cpu"))}

# Read once at import (after the library loaded): constants keep resolve_backend traceable by dynamo.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
# Triton runs on CPU tensors only in its interpreter (TRITON_INTERPRET=1, set before triton is imported).
_TRITON_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_CPP = _extension.STATE.loaded and _extension.has_kernel("embedding_concat", "cpp", "CPU")
_CUDA = _extension.STATE.loaded and _extension.has_kernel("embedding_concat", "cuda", "CUDA")


def triton_interpreted() -> bool:
    return _TRITON_INTERPRETED


def cpp_available() -> bool:
    return _CPP


def cuda_compiled() -> bool:
    return _CUDA


def triton_available(device_type: str = "cuda") -> bool:
    if not _TRITON_INSTALLED:
        return False
    if device_type == "cuda":
        return torch.cuda.is_available() or triton_interpreted()
    return device_type == "cpu" and triton_interpreted()


def is_available(backend: str, device_type: str) -> bool:
    if backend == "reference":
        return True
    if backend == "cpp":
        return device_type == "cpu" and cpp_available()
    if backend == "cuda":
        return device_type == "cuda" and cuda_compiled()
    if backend == "triton":
        return triton_available(device_type)
    return False


def available_backends(device: Union[str, torch.device] = "cpu") -> list[str]:
    device_type = torch.device(device).type
    return [b for b in BACKENDS[1:] if is_available(b, device_type)]


def resolve_backend(backend: str, device: Union[str, torch.device]) -> str:
    """The concrete backend that runs for tensors on ``device``.

    "auto" picks the fused kernels compiled for the device (cpp on CPU; cuda, else triton, on GPU)
    and falls back to the pure-PyTorch reference. Asking for a backend that cannot run on the device
    is an error, never a silent fallback.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    device_type = torch.device(device).type
    if backend == "auto":
        preference = {"cpu": ("cpp",), "cuda": ("cuda", "triton")}.get(device_type, ())
        return next((b for b in preference if is_available(b, device_type)), "reference")
    if not is_available(backend, device_type):
        raise RuntimeError(f"backend {backend!r} is not available for {device_type} tensors here "
                           f"(available: {available_backends(device_type)}); "
                           + _why_unavailable(backend, device_type))
    return backend


def _why_unavailable(backend: str, device_type: str) -> str:
    serves = _KERNEL_DEVICES[backend][1]
    if device_type not in serves:
        return f"{backend} kernels serve {' and '.join(serves)} tensors only"
    if backend in ("cpp", "cuda"):
        if not _extension.STATE.loaded:
            return f"the compiled library is not loaded: {_extension.STATE.reason}"
        return "the library was built without CUDA kernels" if backend == "cuda" else "no CPU kernel registered"
    if not _TRITON_INSTALLED:
        return "triton is not installed"
    return "set TRITON_INTERPRET=1 (before importing triton) to run Triton kernels on the CPU"
