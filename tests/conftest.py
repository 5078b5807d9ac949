"""Shared test configuration.

Triton kernels are tested in Triton's interpreter on machines without a GPU: TRITON_INTERPRET must be
set before triton is imported, so it is decided here, before anything imports torch or triton.
"""
import os
from pathlib import Path

if not Path("/dev/nvidia0").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import pimm_fast  # noqa: E402
from pimm_fast.ops import backends  # noqa: E402

DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"

KERNEL_BACKENDS_HERE = [
    pytest.param("cpp", marks=pytest.mark.skipif(not backends.is_available("cpp", "cpu"),
                                                 reason="C++ kernels not built")),
    pytest.param("triton", marks=pytest.mark.skipif(not backends.is_available("triton", "cpu"),
                                                    reason="triton not installed / not interpreted")),
]

requires_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and backends.cuda_compiled()),
                                   reason="needs a CUDA device and the CUDA kernels")


@pytest.fixture
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip("../shared/data is not present on this machine")
    return DATA_DIR


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
