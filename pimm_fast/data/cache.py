"""Atomic on-disk cache of preprocessed arrays: one ``.npy`` per array + ``manifest.json``, memory-mappable.

Write protocol: every file goes into a fresh temporary directory beside the target, each is fsynced, the
manifest (array names, shapes, dtypes, byte sizes, source fingerprint and hash, vocabulary sizes, row and
dropped counts) is written last, the directory is fsynced, then renamed onto the target in one step. A run
that dies half way leaves only a temporary directory, which is never read (and is removed by a later
write once its process is gone). A reader trusts a cache only if its manifest parses, names the expected
key and format, and every listed file exists with the listed size, shape and dtype.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Optional

import numpy as np

from ._bytes import fsync_dir

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def default_cache_root() -> Path:
    env = os.environ.get("PIMM_FAST_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pimm_fast"


def fingerprint(paths) -> list[dict]:
    """What identifies the source files cheaply: absolute path, size and modification time."""
    out = []
    for p in sorted(Path(p).resolve() for p in paths):
        st = p.stat()
        out.append({"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def cache_key(kind: str, sources: list[dict], options: dict) -> str:
    text = json.dumps({"kind": kind, "sources": sources, "options": options, "format": FORMAT_VERSION},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(target: Path) -> None:
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            continue
        if not _alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def write_cache(target: Path, arrays: dict[str, np.ndarray], info: dict) -> Path:
    """Write ``arrays`` and ``info`` (JSON-able) to ``target`` atomically; returns ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        files = {}
        for name, arr in arrays.items():
            if "/" in name or name.startswith("."):
                raise ValueError(f"bad array name {name!r}")
            arr = np.ascontiguousarray(arr)
            path = tmp / f"{name}.npy"
            with open(path, "wb") as f:
                np.save(f, arr, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            files[name] = {"file": path.name, "shape": list(arr.shape), "dtype": arr.dtype.str,
                           "bytes": path.stat().st_size}
        manifest = dict(info, format=FORMAT_VERSION, arrays=files)
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(target, old)
        os.rename(tmp, target)
        fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_cache(target: Path, key: Optional[str] = None, mmap: bool = True) -> Optional[tuple[dict, dict]]:
    """(arrays, manifest) if ``target`` holds a complete cache (with ``key``, when given), else None.

    With ``mmap`` the arrays are copy-on-write memory maps: pages are read on first touch and never written
    back, so the cache stays intact whatever the caller does with them.
    """
    target = Path(target)
    try:
        manifest = json.loads((target / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        return None
    if key is not None and manifest.get("key") != key:
        return None
    arrays = {}
    try:
        for name, meta in manifest["arrays"].items():
            path = target / meta["file"]
            if path.stat().st_size != meta["bytes"]:
                return None
            arr = np.load(path, mmap_mode="c" if mmap else None, allow_pickle=False)
            if list(arr.shape) != meta["shape"] or arr.dtype.str != meta["dtype"]:
                return None
            arrays[name] = arr
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return arrays, manifest
