"""Data pipeline rates: batch production (target >= 5 M samples/s, 18 fields, one core) and raw Ali-CCP parsing
(target >= 200 k raw rows/s). Numbers go to ``extra_info`` (samples_per_s, rows_per_s) and are printed.

    pytest benchmarks/test_bench_data.py --benchmark-only -s
    PIMM_FAST_BENCH_RAW_ROWS=1000000 pytest benchmarks/test_bench_data.py -k raw --benchmark-only -s
"""
import os
import time

import pytest
import torch

from pimm_fast.data import Batcher, CascadeData
from pimm_fast.data.aliccp import load_raw_arrays, write_synthetic_raw
from pimm_fast.data.synthetic import ALICCP_FIELD_DIMS

RAW_ROWS = int(os.environ.get("PIMM_FAST_BENCH_RAW_ROWS", "200000"))


@pytest.fixture(scope="module")
def aitm_layout():
    n = 2_000_000
    gen = torch.Generator().manual_seed(0)
    dims = torch.tensor(ALICCP_FIELD_DIMS)
    x = (torch.rand(n, len(ALICCP_FIELD_DIMS), generator=gen) * dims).to(torch.int32)
    y = (torch.rand(n, 2, generator=gen) < 0.04).float()
    return CascadeData(x=x, y=y, field_dims=ALICCP_FIELD_DIMS, task_names=("click", "conversion"))


@pytest.mark.parametrize("batch", [1024, 4096, 16384])
def test_batcher_epoch(benchmark, aitm_layout, batch):
    torch.set_num_threads(1)  # the target is per core
    benchmark.group = f"batcher: one epoch of 2M samples, 18 int32 fields, batch {batch}"
    batcher = Batcher(aitm_layout, batch, seed=0)

    def epoch():
        n = 0
        for x, y in batcher:
            n += x.shape[0]
        return n

    start = time.perf_counter()
    assert benchmark(epoch) == len(aitm_layout)
    if benchmark.stats is not None:
        rate = len(aitm_layout) / benchmark.stats.stats.median
    else:
        rate = len(aitm_layout) / (time.perf_counter() - start)
    benchmark.extra_info["samples_per_s"] = rate
    print(f"\nbatcher batch {batch}: {rate / 1e6:.2f} M samples/s")


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("aliccp_raw")
    write_synthetic_raw(d, "train", RAW_ROWS, seed=0, violations=10)
    write_synthetic_raw(d, "test", max(1, RAW_ROWS // 4), seed=1)
    return d


@pytest.mark.parametrize("variant", ["aitm", "full"])
def test_raw_aliccp(benchmark, raw_dir, variant):
    benchmark.group = f"raw Ali-CCP: parse + join + vocabulary + encode, {RAW_ROWS} + {RAW_ROWS // 4} rows"
    rows = RAW_ROWS + max(1, RAW_ROWS // 4)
    start = time.perf_counter()
    arrays, info = benchmark.pedantic(load_raw_arrays, args=(raw_dir, variant), kwargs={"min_count": 2},
                                      rounds=1, iterations=1)
    seconds = benchmark.stats.stats.median if benchmark.stats is not None else time.perf_counter() - start
    assert len(arrays["train.y"]) + len(arrays["valid.y"]) == RAW_ROWS - 10
    benchmark.extra_info["rows_per_s"] = rows / seconds
    size = sum(f.stat().st_size for f in raw_dir.iterdir())
    print(f"\nraw {variant}: {rows / seconds:,.0f} raw rows/s ({size / seconds / 1e6:.0f} MB/s of raw files)")
