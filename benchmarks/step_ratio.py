"""PIMM training-step providers measured interleaved: round r times every provider once, in turn, so a
change of background load hits all of them alike (pytest-benchmark times one case after the other).

    python -m benchmarks.step_ratio                                   # batch 16384, the issue-13 set
    python -m benchmarks.step_ratio --batch 4096 --rounds 30 --providers compile,cpp,cpp+compile

Prints min and median ms per step, samples/s at the min, and every provider's ratio to the first.
Sets pimm_fast's OpenMP default before torch is imported (as the benchmarks' conftest does).

    python -m benchmarks.step_ratio --profile cpp --threads 1   # where the time of a cpp step goes
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Optional, Sequence

DEFAULT_PROVIDERS = "compile,compile+bf16,cpp-fp32,cpp,cpp+compile"
PARTS = ("tower GEMMs (mm, addmm)", "casts (copy_)", "ReLU fwd/bwd", "sums (bias grads, loss)",
         "fused embedding (C++)", "embedding grad copy [F, B, D]", "Adam(fused)", "PIM (C++)", "other")


def part_of(name: str, shapes: str) -> str:
    """The row of the profile table that an op's self time goes to."""
    if name in ("aten::mm", "aten::addmm", "aten::bmm"):
        return PARTS[0]
    if name == "aten::copy_" and shapes.startswith("[[18, "):
        return PARTS[5]
    if name in ("aten::copy_", "aten::_to_copy"):
        return PARTS[1]
    if name in ("aten::clamp_min", "aten::threshold_backward", "aten::relu"):
        return PARTS[2]
    if name == "aten::sum":
        return PARTS[3]
    if "embedding" in name or "Lookup" in name:
        return PARTS[4]
    if "fused_adam" in name:
        return PARTS[6]
    if "pim_attention" in name:
        return PARTS[7]
    return PARTS[-1]


def profile(step, steps: int = 6) -> None:
    """Self CPU time per step of ``step``, grouped into PARTS."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    parts = dict.fromkeys(PARTS, 0.0)
    for event in prof.key_averages(group_by_input_shape=True):
        parts[part_of(event.key, str(event.input_shapes))] += event.self_cpu_time_total / steps / 1e3
    total = sum(parts.values())
    print(f"profiled self CPU time {total:.1f} ms/step")
    for part, ms in parts.items():
        print(f"| {part} | {ms:.1f} ms | {100 * ms / total:.0f} % |")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_ratio", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16384)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--providers", default=DEFAULT_PROVIDERS,
                        help="comma-separated; the first is the baseline of the ratios")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", metavar="PROVIDER", default=None,
                        help="profile this provider instead of timing (one thread shows shares best under load)")
    args = parser.parse_args(argv)

    from . import conftest  # noqa: F401 - sets the OpenMP default before torch is imported
    import torch

    from .test_bench_step import STEP_PROVIDERS, make_step

    providers = [args.profile] if args.profile else [p.strip() for p in args.providers.split(",") if p.strip()]
    unknown = [p for p in providers if p not in STEP_PROVIDERS]
    if unknown:
        parser.error(f"unknown providers {unknown}; choose from {STEP_PROVIDERS}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    steps = {p: make_step(p, args.batch) for p in providers}
    for step in steps.values():  # warm-up: optimizer state, compilation
        step()
        step()
    if args.profile:
        print(f"{args.profile}, batch {args.batch}, {torch.get_num_threads()} threads, load average "
              f"{os.getloadavg()[0]:.2f}")
        profile(steps[args.profile])
        return 0
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
