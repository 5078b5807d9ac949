"""Loads the compiled kernels (pimm_fast/_C*.so) if they were built for this torch.

The build writes ``_build.json`` beside the library with the torch version it was compiled against.
A library built for another torch is reported and not loaded: its C++ ABI may not match, and a
mismatch can crash instead of raising. Without the library the package runs on the reference path
and says so once, with a RuntimeWarning.

Set PIMM_FAST_NO_EXTENSION=1 to skip loading on purpose (no warning then).
"""
from __future__ import annotations

import importlib.util
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from . import _digest

META_NAME = "_build.json"


@dataclass(frozen=True)
class ExtensionState:
    loaded: bool
    path: Optional[str] = None
    meta: dict = field(default_factory=dict)
    reason: Optional[str] = None  # why it is not loaded


def _library_path() -> Optional[Path]:
    spec = importlib.util.find_spec("pimm_fast._C")
    return Path(spec.origin) if spec is not None and spec.origin else None


def _stale_reason(meta: dict) -> Optional[str]:
    """Why a library does not match this source tree, or None. Other schemas: its ops would clash with
    the ones Python expects (import would fail). Other C++ sources (checked where csrc/ sits beside the
    package, as in a checkout): it would run stale kernels."""
    if meta.get("schemas_sha256") is None:
        return "it was built by an older pimm_fast (no schema digest in _build.json); rebuild it"
    if meta["schemas_sha256"] != _digest.schemas_sha256():
        return "it was built from other op schemas than pimm_fast/ops/schemas.def holds now; rebuild it"
    built_from = meta.get("sources_sha256")
    now = _digest.sources_sha256(_digest.PACKAGE.parent / "csrc")
    if built_from is not None and now is not None and built_from != now:
        return "the C++/CUDA sources in csrc/ changed since it was built; rebuild it"
    return None


def _load() -> ExtensionState:
    if os.environ.get("PIMM_FAST_NO_EXTENSION", "") not in ("", "0"):
        return ExtensionState(False, reason="disabled by PIMM_FAST_NO_EXTENSION")
    path = _library_path()
    if path is None:
        return ExtensionState(False, reason="pimm_fast._C was not built")
    meta_path = path.with_name(META_NAME)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        return ExtensionState(False, str(path), reason=f"{meta_path.name} beside the library is missing or "
                                                       f"unreadable ({exc}); rebuild it")
    built_for = meta.get("torch_version")
    if built_for != torch.__version__:
        return ExtensionState(False, str(path), meta,
                              reason=f"it was built against torch {built_for}, but torch {torch.__version__} "
                                     f"is installed; rebuild it")
    stale = _stale_reason(meta)
    if stale is not None:
        return ExtensionState(False, str(path), meta, reason=stale)
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError) as exc:
        return ExtensionState(False, str(path), meta, reason=f"loading it failed: {exc}")
    return ExtensionState(True, str(path), meta)


STATE = _load()

if not STATE.loaded and STATE.reason != "disabled by PIMM_FAST_NO_EXTENSION":
    warnings.warn(
        f"pimm_fast: compiled kernels not loaded ({STATE.reason}). Running on the pure-PyTorch reference "
        f"path. Build them with: pip install --no-build-isolation .",
        RuntimeWarning,
        stacklevel=2,
    )


def has_kernel(name: str, backend: str, dispatch_key: str) -> bool:
    """True when the dispatcher holds a kernel of ``pimm_fast::name.backend`` for ``dispatch_key``."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"pimm_fast::{name}.{backend}", dispatch_key)
