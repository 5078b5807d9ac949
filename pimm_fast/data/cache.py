"""Atomic on-disk cache of preprocessed arrays: one ``.npy`` per array + ``manifest.json``, memory-mappable.

Write protocol: every file goes into a fresh temporary directory beside the target, each is fsynced, the
manifest (array names, shapes, dtypes, byte sizes, source fingerprint and hash, vocabulary sizes, row and
dropped counts) is written last, the directory is fsynced, then renamed onto the target in one step. A run
that dies half way leaves only a temporary directory, which is never read (and is removed by a later
write once its process is gone). A reader trusts a cache only if its manifest parses, names the expected
key and format, and every listed file exists with the listed size, shape and dtype.

Keys: the source kind, the options and each source file's content (:func:`fingerprint`: a BLAKE2b hash of
the whole file up to ``FULL_HASH_BYTES``, above that size + mtime + ctime + inode + a hash of 64 sampled
blocks), so an edit that keeps size and mtime is never served stale. Size limit: after each write the
least recently used entries are removed until the cache holds at most ``max_bytes()``
($PIMM_FAST_CACHE_MAX_BYTES, default 50 GiB). ``pimm-fast cache list|clear`` shows and removes entries.
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

FORMAT_VERSION = 4  # 2: keys on file content; 3: rechub-csv reads its dense D* columns by default;
# 4: long tokens digested with FNV (the vocabulary contract), the vocabulary stored as vocabulary.npy
MANIFEST = "manifest.json"
VOCABULARY_ARRAY = "vocabulary"  # the array holding the Vocabulary's text format (uint8)
FULL_HASH_BYTES = 1 << 30  # files up to 1 GiB are hashed whole (BLAKE2b, about 1 GB/s)
SAMPLE_BLOCKS = 64
SAMPLE_BYTES = 1 << 16
DEFAULT_MAX_BYTES = 50 << 30


def default_cache_root() -> Path:
    env = os.environ.get("PIMM_FAST_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pimm_fast"


def content_hash(path: Path, size: int) -> str:
    """BLAKE2b of the whole file up to FULL_HASH_BYTES; above, of SAMPLE_BLOCKS evenly spread blocks."""
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            while True:
                block = f.read(8 << 20)
                if not block:
                    break
                h.update(block)
            return "full:" + h.hexdigest()
        for k in range(SAMPLE_BLOCKS):
            f.seek((size - SAMPLE_BYTES) * k // (SAMPLE_BLOCKS - 1))
            h.update(f.read(SAMPLE_BYTES))
    return "sampled:" + h.hexdigest()


def fingerprint(paths) -> list[dict]:
    """What identifies the source files: absolute path, size, mtime and a content hash (see module doc);
    files above FULL_HASH_BYTES add ctime and inode, which any in-place write changes."""
    out = []
    for p in sorted(Path(p).resolve() for p in paths):
        st = p.stat()
        entry = {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                 "content": content_hash(p, st.st_size)}
        if st.st_size > FULL_HASH_BYTES:
            entry.update(ctime_ns=st.st_ctime_ns, inode=st.st_ino)
        out.append(entry)
    return out


def max_bytes() -> int:
    """The cache's size limit: $PIMM_FAST_CACHE_MAX_BYTES (bytes; suffixes K, M, G allowed) or 50 GiB."""
    text = os.environ.get("PIMM_FAST_CACHE_MAX_BYTES", "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1].upper(), 1)
    try:
        value = int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError:
        raise ValueError(f"PIMM_FAST_CACHE_MAX_BYTES must be a byte count such as 20G, got {text!r}") from None
    if value < 0:
        raise ValueError(f"PIMM_FAST_CACHE_MAX_BYTES must be >= 0, got {text!r}")
    return value


def _dir_bytes(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def entries(root: Path) -> list[dict]:
    """The complete entries under ``root``, least recently used first: name, path, bytes, last_used
    (seconds since the epoch), created, kind, spec."""
    root = Path(root)
    out = []
    if not root.is_dir():
        return out
    for d in root.iterdir():
        if d.name.startswith(".") or not (d / MANIFEST).is_file():
            continue
        try:
            manifest = json.loads((d / MANIFEST).read_text())
            used = (d / MANIFEST).stat().st_mtime
        except (OSError, ValueError):
            continue
        out.append({"name": d.name, "path": str(d), "bytes": _dir_bytes(d), "last_used": used,
                    "created": manifest.get("created"), "kind": manifest.get("kind"), "spec": manifest.get("spec")})
    out.sort(key=lambda e: e["last_used"])
    return out


def touch(target: Path) -> None:
    """Mark an entry as used now (its manifest's mtime orders eviction)."""
    try:
        os.utime(Path(target) / MANIFEST)
    except OSError:
        pass


def evict(root: Path, limit: int, keep: Optional[Path] = None) -> list[str]:
    """Remove the least recently used entries until those under ``root`` total at most ``limit`` bytes
    (never ``keep``, the entry just written); returns the names removed."""
    listed = entries(root)
    total = sum(e["bytes"] for e in listed)
    removed = []
    for e in listed:
        if total <= limit:
            break
        if keep is not None and Path(e["path"]) == Path(keep):
            continue
        shutil.rmtree(e["path"], ignore_errors=True)
        total -= e["bytes"]
        removed.append(e["name"])
    return removed


def clear(root: Path, names: Optional[list[str]] = None) -> list[str]:
    """Remove the named entries (all when ``names`` is None) and leftover temporary directories of dead
    processes; returns the names removed. An unknown name is a ValueError."""
    root = Path(root)
    listed = {e["name"]: e for e in entries(root)}
    if names:
        unknown = [n for n in names if n not in listed]
        if unknown:
            raise ValueError(f"no cache entry {unknown} under {root}; `pimm-fast cache list` shows them")
    chosen = names or list(listed)
    for n in chosen:
        shutil.rmtree(listed[n]["path"], ignore_errors=True)
    if root.is_dir() and not names:
        for tmp in root.glob(".*.tmp-*"):
            _remove_stale(root / tmp.name.split(".tmp-")[0][1:])
    return chosen


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
    evict(target.parent, max_bytes(), keep=target)
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
    touch(target)
    return arrays, manifest
