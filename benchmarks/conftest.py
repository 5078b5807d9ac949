"""Benchmarks: each compares providers of one workload side by side in one pytest-benchmark run.

    make bench                                   # every benchmark, timed
    pytest benchmarks --benchmark-only -k pim    # a subset
    pytest benchmarks --benchmark-disable        # run each case once (CI: keeps them from rotting)

Measure one group per process (-k ...): a process that already ran other benchmarks holds far more
Python objects, and garbage collection then slows the later cases.

OpenMP waiting: pimm_fast's default (pimm_fast.runtime.DEFAULT_ENV, a short spin) is set here before
torch is imported, unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is already set (export
OMP_WAIT_POLICY=ACTIVE or PASSIVE to measure those). Threads: PIMM_FAST_BENCH_THREADS, default 2 (the
figures of docs/performance.md), never more than the cores available. Throughput under load, quiet and
next to busy processes: python -m benchmarks.load (benchmarks/load.py).

Providers: reference (pimm_fast.reference, eager autograd), compile (torch.compile of the reference),
cpp, cuda, triton (the fused kernels; triton and cuda need a GPU).
"""
import importlib.util
import os
from pathlib import Path

if not Path("/dev/nvidia0").exists():  # as in tests/conftest.py: Triton only runs interpreted here
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _load_runtime():
    """pimm_fast/runtime.py loaded by path: importing the package would import torch, and libgomp
    reads its environment when torch is imported."""
    path = Path(__file__).resolve().parents[1] / "pimm_fast" / "runtime.py"
    spec = importlib.util.spec_from_file_location("_pimm_fast_runtime_early", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_runtime = _load_runtime()
_runtime.apply_openmp_defaults()

import pytest  # noqa: E402
import torch  # noqa: E402

from pimm_fast.ops import backends  # noqa: E402

THREADS = int(os.environ.get("PIMM_FAST_BENCH_THREADS", str(min(2, _runtime.available_cores()))))
PROVIDERS = ("reference", "compile", "cpp", "triton", "cuda")


def provider_device(provider: str) -> str:
    return "cuda" if provider in ("cuda", "triton") else "cpu"


def skip_unless_available(provider: str) -> None:
    if provider in ("reference", "compile"):
        return
    device = provider_device(provider)
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"{provider}: needs a GPU")
    if not backends.is_available(provider, device):
        pytest.skip(f"{provider}: not available here")


@pytest.fixture(autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(params=PROVIDERS)
def provider(request):
    skip_unless_available(request.param)
    return request.param
