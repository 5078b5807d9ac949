"""Registers the Triton kernels for the ``.triton`` overloads, importing triton on the first call only."""
from __future__ import annotations

import importlib

from .schemas import lib, qualname

_MODULES = {
    "embedding_concat": "embedding",
    "embedding_concat_backward": "embedding",
    "pim_attention": "pim",
    "pim_attention_backward": "pim",
    "embedding_bags_concat": "embedding",
    "embedding_bags_concat_backward": "embedding",
    "embedding_update_sgd": "update",
    "embedding_update_rowwise_adagrad": "update",
    "embedding_update_adam": "update",
}


def _launcher(name: str):
    module = f"pimm_fast.triton.{_MODULES[name]}"

    def run(*args):
        return getattr(importlib.import_module(module), name)(*args)

    run.__name__ = f"{name}_triton"
    return run


for _name in _MODULES:
    # CPU too: there the kernels run in Triton's interpreter (see ops.backends.triton_available).
    lib.impl(qualname(_name, "triton"), _launcher(_name), "CPU")
    lib.impl(qualname(_name, "triton"), _launcher(_name), "CUDA")
