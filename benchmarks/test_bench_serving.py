"""Inference latency and throughput: eager, torch.compile and the exported package (AOTInductor), PIMM on
the Ali-CCP configuration (18 fields, 1.4 M embedding rows, towers [128, 64, 32], 2 tasks), batch 1, 64,
1024 and 16384, CPU.

    pytest benchmarks/test_bench_serving.py --benchmark-only       # pytest-benchmark's table (median, ...)
    python -m benchmarks.test_bench_serving [--rounds N] [--score-csv BUILD/score_csv]
                                                                   # p50 / p99 / rows/s table of docs/serving.md

The providers take turns call by call (a busy moment of a shared machine slows them alike); the C++
program runs after them, in its own process. The package is exported once per process (AOTInductor compiles C++: ~25-60 s). With --score-csv the
table adds the C++ example program (examples/score_csv.cpp --bench), the package run without Python.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from benchmarks.aliccp import EMBED_DIM, FIELD_DIMS, TOWER_DIMS, zipf_ids

BATCHES = (1, 64, 1024, 16384)
SERVING_PROVIDERS = ("eager", "compile", "package")


def make_model() -> torch.nn.Module:
    import pimm_fast

    torch.manual_seed(0)
    return pimm_fast.PIMM(FIELD_DIMS, num_tasks=2, embed_dim=EMBED_DIM, tower_dims=TOWER_DIMS,
                          task_names=("click", "purchase")).eval()


def make_runner(provider: str, model: torch.nn.Module, package: Path):
    if provider == "eager":
        return model
    if provider == "compile":
        return torch.compile(model, dynamic=True)
    import pimm_fast.export as px

    return px.load(package)



def export_package(model: torch.nn.Module, directory: Path) -> Path:
    import pimm_fast.export as px

    return px.save(model, directory / "pimm_aliccp.pt2")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from pimm_fast.ops import backends

    if not backends.is_available("cpp", "cpu"):
        pytest.skip("C++ kernels not built: the package would run the reference path")
    model = make_model()
    return model, export_package(model, tmp_path_factory.mktemp("serving"))


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("provider", SERVING_PROVIDERS)
def test_serving_latency(benchmark, served, provider, batch):
    model, package = served
    benchmark.group = f"serving PIMM Ali-CCP B={batch}"
    run = make_runner(provider, model, package)
    ids = zipf_ids(batch)
    with torch.no_grad():
        expected = model(ids)
        out = run(ids)  # warm-up (and compilation)
        assert (out - expected).abs().max().item() <= 1e-5
        benchmark(run, ids)
    data = getattr(getattr(benchmark.stats, "stats", None), "data", None) if benchmark.stats else None
    if data:
        ordered = sorted(data)
        benchmark.extra_info.update(p50_ms=1e3 * statistics.median(ordered),
                                    p99_ms=1e3 * ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)],
                                    rows_per_s=batch / statistics.median(ordered))


# ---------------------------------------------------------------------------------------------------
# python -m benchmarks.test_bench_serving: the table of docs/serving.md
# ---------------------------------------------------------------------------------------------------
def _measure(runners: dict, ids, rounds: int) -> dict[str, tuple[float, float]]:
    """p50 and p99 (ms) per provider. The providers take turns call by call, so that a busy period of a
    shared machine slows them alike and the ratios stay comparable."""
    times = {name: [] for name in runners}
    with torch.no_grad():
        for fn in runners.values():
            for _ in range(10):
                fn(ids)
        for _ in range(rounds):
            for name, fn in runners.items():
                start = time.perf_counter()
                fn(ids)
                times[name].append(time.perf_counter() - start)
    out = {}
    for name, values in times.items():
        values.sort()
        out[name] = (1e3 * values[len(values) // 2], 1e3 * values[min(len(values) - 1, len(values) * 99 // 100)])
    return out


def latency_args(argv, rounds_help: str):
    """The options of the latency scripts (this one and benchmarks/serving_bags.py); sets the threads."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200, help=rounds_help)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("PIMM_FAST_BENCH_THREADS", "2")))
    parser.add_argument("--score-csv", type=Path, default=None, help="the built examples/score_csv binary")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args


def print_export_time(started: float, threads: int) -> None:
    print(f"exported in {time.perf_counter() - started:.0f} s; torch {torch.__version__}, {threads} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset: torch default)')}", flush=True)


def score_csv_latency(binary: Path, package: Path, csv: Path, threads: int, rounds: int):
    """(p50, p99) ms of the C++ example scoring ``csv`` ``rounds`` times; None (its stderr printed) if it failed."""
    import pimm_fast

    result = subprocess.run([str(binary), str(package), pimm_fast._extension.STATE.path, str(csv), "--ids",
                             "--threads", str(threads), "--bench", str(rounds)], capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stderr, file=sys.stderr)
        return None
    parts = result.stdout.strip().replace(",", "").split()  # "batch B: p50 X ms, p99 Y ms, Z rows/s (...)"
    return float(parts[3]), float(parts[6])


def main(argv=None) -> int:
    args = latency_args(argv, "timed calls per case (fewer at B=16384)")
    model = make_model()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        package = export_package(model, Path(tmp))
        print_export_time(started, args.threads)
        runners = {p: make_runner(p, model, package) for p in SERVING_PROVIDERS}
        print("| batch | provider | p50 ms | p99 ms | rows/s |\n|---:|---|---:|---:|---:|")
        for batch in BATCHES:
            ids = zipf_ids(batch)
            rounds = max(20, args.rounds // (1 + batch // 1024))
            for provider, (p50, p99) in _measure(runners, ids, rounds).items():
                print(f"| {batch} | {provider} | {p50:.3f} | {p99:.3f} | {batch / (p50 / 1e3):,.0f} |", flush=True)
            if args.score_csv is not None:
                csv = Path(tmp) / f"ids{batch}.csv"
                csv.write_text("".join(",".join(str(int(v)) for v in row) + "\n" for row in ids))
                latency = score_csv_latency(args.score_csv, package, csv, args.threads, rounds)
                if latency is None:
                    return 1
                p50, p99 = latency
                print(f"| {batch} | C++ (score_csv) | {p50:.3f} | {p99:.3f} | {batch / (p50 / 1e3):,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
