"""The C++ example (examples/score_csv), built once per test session from a copy of examples/ in a temp dir.

Building from a copy checks that examples/ is self-contained (a user copies the folder out of the repository);
the binary is shared by every C++ test (tests/test_export.py and tests/test_export_vocab.py). Skips when cmake
or a C++ compiler is missing.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pimm_fast

ROOT = Path(__file__).resolve().parents[1]


def build_score_csv(tmp_path_factory) -> Path:
    """The score_csv binary: built on the first call of the session, then reused."""
    if shutil.which("cmake") is None or (shutil.which("c++") is None and shutil.which("g++") is None):
        pytest.skip("cmake or a C++ compiler is missing")
    base = tmp_path_factory.getbasetemp() / "score_csv-example"
    binary = base / "build" / "score_csv"
    failed = base / "failed.log"
    if failed.exists():  # a broken build fails every C++ test of the session with its log, built once
        pytest.fail(failed.read_text())
    if binary.exists():
        return binary
    if base.exists():
        shutil.rmtree(base)
    source = base / "examples"
    shutil.copytree(ROOT / "examples", source)  # nothing of the repository around it
    steps = [["cmake", "-S", str(source), "-B", str(base / "build"), f"-DPython3_EXECUTABLE={sys.executable}",
              f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"],
             ["cmake", "--build", str(base / "build"), "-j2"]]
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True)
        if result.returncode != 0:
            failed.write_text(f"{' '.join(step)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
            pytest.fail(failed.read_text())
    return binary


def run_score_csv(binary: Path, package: Path, csv: Path, *options: str) -> subprocess.CompletedProcess:
    library = pimm_fast._extension.STATE.path
    return subprocess.run([str(binary), str(package), library, str(csv), *options], capture_output=True, text=True,
                          timeout=300)
