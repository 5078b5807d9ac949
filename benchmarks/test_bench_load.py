"""Training throughput quiet and next to 1 and 2 busy processes, per OpenMP wait policy (issue 13:
with one busy process >= 0.6x quiet under pimm_fast's default). Each cell is a fresh worker process
(benchmarks/load.py); the table of samples/s and ratios is printed (-s) and kept in extra_info.

    pytest benchmarks/test_bench_load.py --benchmark-only -s
    PIMM_FAST_BENCH_LOAD_POLICIES=default,active,passive,pimm_fast pytest benchmarks/test_bench_load.py --benchmark-only -s
    python -m benchmarks.load --help          # the same, as a command with every option

Under --benchmark-disable (CI) it runs one short cell per load level, to keep the harness working.
"""
import os

from .load import format_table, load_average, measure

POLICIES = os.environ.get("PIMM_FAST_BENCH_LOAD_POLICIES", "default,passive,pimm_fast").split(",")
BUSY = (0, 1, 2)


def test_throughput_under_load(benchmark):
    quick = benchmark.disabled
    policies = ["pimm_fast"] if quick else POLICIES
    busy = (0, 1) if quick else BUSY
    seconds, repeats = (0.5, 1) if quick else (float(os.environ.get("PIMM_FAST_BENCH_LOAD_SECONDS", "4")), 2)
    benchmark.group = "training throughput under load (PIMM cpp, Ali-CCP, batch 1024)"
    before = load_average()
    results = benchmark.pedantic(measure, args=(policies, busy, 1024, seconds, 2, "auto", repeats),
                                 kwargs={"log": lambda msg: None}, rounds=1, iterations=1)
    print(f"\nload average before {before}, after {load_average()}\n" + format_table(results, busy))
    for policy, cells in results.items():
        assert all(rate > 0 for rates in cells.values() for rate in rates)
        quiet = max(cells[0])
        benchmark.extra_info[policy] = {f"{b}_busy_ratio": max(cells[b]) / quiet for b in busy if b}
