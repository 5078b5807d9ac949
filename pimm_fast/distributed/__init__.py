"""Past one process: the embedding tables in a TorchRec ``EmbeddingBagCollection`` (FBGEMM table-batched
embeddings with the optimizer fused into the backward), sharded by ``DistributedModelParallel``, the dense
part under DistributedDataParallel; launched with ``torchrun --nproc_per_node N -m pimm_fast train
--distributed``. See docs/distributed.md.

This package imports without TorchRec; the names that need it are loaded on first use and raise
``ImportError`` with the install command when TorchRec (or FBGEMM) is missing.
"""
from __future__ import annotations

import importlib
import sys

INSTALL_HINT = (
    "TorchRec is not installed: pip install torchrec==1.9.2, then on a machine without an NVIDIA GPU "
    "replace the CUDA build of FBGEMM: pip uninstall -y fbgemm-gpu && pip install --no-deps fbgemm-gpu-cpu==1.9.0 "
    "(or run `make torchrec`)")

_LAZY = {
    "TorchRecEmbedding": ".embedding",
    "torchrec_embedding": ".embedding",
    "table_init": ".embedding",
    "padded_dim": ".embedding",
    "shard_model": ".parallel",
    "ShardedModel": ".parallel",
    "init_process_group": ".parallel",
    "gather_predictions": ".parallel",
    "agree": ".parallel",
    "save_checkpoint": ".parallel",
    "load_checkpoint": ".parallel",
    "load_into_local": ".parallel",
    "fit_distributed": ".loop",
    "evaluate_distributed": ".loop",
    "predict_distributed": ".loop",
}

_missing: str | None = None


def torchrec_error() -> str | None:
    """None when TorchRec and FBGEMM import, else why not (with the install command)."""
    global _missing
    if _missing is None:
        try:
            import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)
            import torchrec  # noqa: F401
            _missing = ""
        except Exception as err:  # ImportError, or OSError: the CUDA build without libnvidia-ml
            _missing = f"{INSTALL_HINT} [import failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}]"
    return _missing or None


def is_available() -> bool:
    return torchrec_error() is None


def require_torchrec() -> None:
    error = torchrec_error()
    if error is not None:
        raise ImportError(error)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    require_torchrec()
    module = importlib.import_module(_LAZY[name], __name__)
    value = getattr(module, name)
    setattr(sys.modules[__name__], name, value)
    return value


__all__ = ["INSTALL_HINT", "is_available", "require_torchrec", "torchrec_error", *_LAZY]
