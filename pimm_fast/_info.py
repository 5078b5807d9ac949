"""``pimm_fast.build_info()``: what was built and what can run here."""
from __future__ import annotations

import torch

from . import _extension
from .ops import backends


def build_info() -> dict:
    """The torch the kernels were built against, and which of cpp / cuda / triton can run here.

    Keys: torch (running), torch_built_against (None when no library was found), cpp, cuda (CUDA
    kernels compiled and registered), cuda_device (a GPU is visible), triton (installed and usable on a
    GPU or in the interpreter), extension_path, extension_error (why the library is not loaded), and
    auto_backend: what backend="auto" picks per device.
    """
    state = _extension.STATE
    return {
        "torch": torch.__version__,
        "torch_built_against": state.meta.get("torch_version"),
        "cpp": backends.cpp_available(),
        "cuda": backends.cuda_compiled(),
        "cuda_device": torch.cuda.is_available(),
        "triton": backends.triton_available("cuda") or backends.triton_available("cpu"),
        "triton_interpreter": backends.triton_interpreted(),
        "extension_path": state.path,
        "extension_error": state.reason,
        "auto_backend": {"cpu": backends.resolve_backend("auto", "cpu"),
                         "cuda": backends.resolve_backend("auto", "cuda")},
    }
