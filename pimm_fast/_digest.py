"""Digests of what the compiled library is built from, written to _build.json by the build and
compared at import (pimm_fast/_extension.py): a library built from other op schemas would not load
(its ops clash with the schemas Python expects), and one built from other C++ sources would run stale
kernels. Plain standard library, so that setup.py can load this file before pimm_fast is importable.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

PACKAGE = Path(__file__).resolve().parent
SCHEMA_FILE = PACKAGE / "ops" / "schemas.def"
SOURCE_SUFFIXES = (".h", ".cuh", ".cpp", ".cu")


def schemas_sha256(path: Path = SCHEMA_FILE) -> str:
    """sha256 of schemas.def's bytes (CMake's file(SHA256) computes the same)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sources_sha256(csrc: Path) -> Optional[str]:
    """One sha256 over every C++/CUDA source under ``csrc`` (relative path and bytes, in path order);
    None when there is no such folder (an installed package ships no sources)."""
    if not csrc.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in csrc.rglob("*") if p.suffix in SOURCE_SUFFIXES and p.is_file()):
        digest.update(path.relative_to(csrc).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
