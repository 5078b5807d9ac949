"""PIMM training-step providers measured interleaved: round r times every provider once, in turn, so a
change of background load hits all of them alike (pytest-benchmark times one case after the other).

    python -m benchmarks.step_ratio                                   # batch 16384, the issue-13 set
    python -m benchmarks.step_ratio --batch 4096 --rounds 30 --providers compile,cpp,cpp+compile

Prints min and median ms per step, samples/s at the min, and every provider's ratio to the first.
Sets pimm_fast's OpenMP default before torch is imported (as the benchmarks' conftest does).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Optional, Sequence

DEFAULT_PROVIDERS = "compile,compile+bf16,cpp-fp32,cpp,cpp+compile"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_ratio", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16384)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--providers", default=DEFAULT_PROVIDERS,
                        help="comma-separated; the first is the baseline of the ratios")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    from . import conftest  # noqa: F401 - sets the OpenMP default before torch is imported
    import torch

    from .test_bench_step import STEP_PROVIDERS, make_step

    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    unknown = [p for p in providers if p not in STEP_PROVIDERS]
    if unknown:
        parser.error(f"unknown providers {unknown}; choose from {STEP_PROVIDERS}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    steps = {p: make_step(p, args.batch) for p in providers}
    for step in steps.values():  # warm-up: optimizer state, compilation
        step()
        step()
    times = {p: [] for p in providers}
    for _ in range(args.rounds):
        for p, step in steps.items():
            start = time.perf_counter()
            step()
            times[p].append(time.perf_counter() - start)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    wait = os.environ.get("GOMP_SPINCOUNT") or os.environ.get("OMP_WAIT_POLICY") or "libgomp default"
    print(f"PIMM training step, Ali-CCP config, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"OpenMP wait {wait}, {args.rounds} interleaved rounds; load average after: {load}")
    base = min(times[providers[0]])
    print(f"{'provider':<14}{'min ms':>9}{'median ms':>11}{'samples/s':>12}{f'{providers[0]}/min':>16}")
    for p in providers:
        best = min(times[p])
        print(f"{p:<14}{best * 1e3:>9.1f}{statistics.median(times[p]) * 1e3:>11.1f}"
              f"{args.batch / best:>12,.0f}{base / best:>15.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
