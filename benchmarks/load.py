"""Training throughput quiet and next to busy processes, for each OpenMP waiting behaviour.

Each measurement runs in a fresh worker process (libgomp reads its environment once, when torch is
imported), with 0, 1 or 2 busy processes (a plain Python loop, as a data loader, notebook or CI job
would be) that this module starts and stops itself. The worker trains the Ali-CCP PIMM (C++ kernels,
fused embedding, Adam) for a fixed time and reports samples/s over the whole window.

    python -m benchmarks.load                                  # the default grid, a table
    python -m benchmarks.load --policies default,passive,pimm_fast --busy 0,1 --seconds 4
    python -m benchmarks.load --worker --batch 1024 --seconds 3     # one worker, prints JSON

Policies: default (libgomp: spin ~3 ms), active (OMP_WAIT_POLICY=ACTIVE), passive (PASSIVE),
pimm_fast (pimm_fast.runtime.DEFAULT_ENV), spin=N (GOMP_SPINCOUNT=N).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
BUSY_LOOP = "while True:\n    pass\n"
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "PIMM_FAST_RUNTIME_DEFAULTS")


def policy_env(policy: str) -> dict[str, str]:
    """The environment of a worker for ``policy`` (other wait variables removed)."""
    from pimm_fast.runtime import DEFAULT_ENV  # no torch import

    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARS}
    if policy == "default":
        pass
    elif policy in ("active", "passive"):
        env["OMP_WAIT_POLICY"] = policy.upper()
    elif policy == "pimm_fast":
        env.update(DEFAULT_ENV)
    elif policy.startswith("spin="):
        count = policy.split("=", 1)[1]
        if not count.isdigit():
            raise ValueError(f"spin=N needs a non-negative int, got {policy!r}")
        env["GOMP_SPINCOUNT"] = count
    else:
        raise ValueError(f"unknown policy {policy!r}: default, active, passive, pimm_fast or spin=N")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def start_busy(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL) for _ in range(count)]


def stop(procs: Sequence[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait()


def run_worker(policy: str, batch: int, seconds: float, threads: int, busy: int, precision: str) -> dict:
    """One measurement: a worker process under ``policy`` next to ``busy`` busy processes."""
    cmd = [sys.executable, "-m", "benchmarks.load", "--worker", "--batch", str(batch), "--seconds", str(seconds),
           "--threads", str(threads), "--precision", precision]
    env = policy_env(policy)
    busy_procs = []
    try:
        worker = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # the busy processes start once the worker is set up (it says "ready" on stderr before it times)
        before = []
        for line in worker.stderr:  # warnings may come first
            if line.strip() == "ready":
                break
            before.append(line)
        else:
            worker.wait()
            raise RuntimeError("worker failed before timing:\n" + "".join(before))
        busy_procs = start_busy(busy)
        out, err = worker.communicate(timeout=seconds * 20 + 120)
    finally:
        stop(busy_procs)
    if worker.returncode != 0:
        raise RuntimeError(f"worker exited with {worker.returncode}:\n{err}")
    return json.loads(out.strip().splitlines()[-1])


def worker_main(batch: int, seconds: float, threads: int, precision: str) -> None:
    import torch

    from pimm_fast import FusedEmbedding, PIMM
    from pimm_fast.modules.tower import set_tower_precision

    from .aliccp import EMBED_DIM, FIELD_DIMS, TOWER_DIMS, cascade_labels, zipf_ids

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    embedding = FusedEmbedding(FIELD_DIMS, EMBED_DIM, optimizer="adam", lr=1e-3, backend="cpp")
    model = PIMM(FIELD_DIMS, num_tasks=2, embed_dim=EMBED_DIM, tower_dims=TOWER_DIMS, backend="cpp",
                 embedding=embedding)
    set_tower_precision(model, precision)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    batches = [(zipf_ids(batch, seed=s), cascade_labels(batch, seed=s)) for s in range(4)]

    def step(x, y):
        loss = model.loss(model(x, labels=y), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for x, y in batches:  # warm-up
        step(x, y)
    print("ready", file=sys.stderr, flush=True)
    time.sleep(0.5)  # let the busy processes get going
    steps, start = 0, time.perf_counter()
    step_times = []
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        step(*batches[steps % len(batches)])
        step_times.append(time.perf_counter() - t0)
        steps += 1
    elapsed = time.perf_counter() - start
    print(json.dumps({"samples_per_s": steps * batch / elapsed, "steps": steps,
                      "median_step_ms": 1e3 * statistics.median(step_times),
                      "max_step_ms": 1e3 * max(step_times), "threads": torch.get_num_threads()}))


def measure(policies: Sequence[str], busy_counts: Sequence[int], batch: int, seconds: float, threads: int,
            precision: str, repeats: int, log=print) -> dict:
    """{policy: {busy: [samples/s per repeat]}}; the cells of one repeat run back to back, so that
    the ratios compare measurements taken under the same background."""
    results = {p: {b: [] for b in busy_counts} for p in policies}
    for r in range(repeats):
        for b in busy_counts:
            for p in policies:
                rate = run_worker(p, batch, seconds, threads, b, precision)["samples_per_s"]
                results[p][b].append(rate)
                log(f"  repeat {r + 1}/{repeats}, {b} busy, {p}: {rate:,.0f} samples/s")
    return results


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def format_table(results: dict, busy_counts: Sequence[int]) -> str:
    """Median samples/s per cell and its ratio to the fastest quiet (0 busy) policy."""
    quiet_best = max(statistics.median(v[0]) for v in results.values()) if 0 in busy_counts else None
    head = f"{'policy':<14}" + "".join(f"{f'{b} busy':>22}" for b in busy_counts)
    if 0 in busy_counts:
        head += "".join(f"{f'{b} busy / own quiet':>20}" for b in busy_counts if b)
    lines = [head, "-" * len(head)]
    for policy, cells in results.items():
        row = f"{policy:<14}"
        for b in busy_counts:
            med = statistics.median(cells[b])
            row += f"{med:>12,.0f}/s" + (f" ({med / quiet_best:.2f}x)" if quiet_best else "").rjust(8)
        if 0 in busy_counts:
            quiet = statistics.median(cells[0])
            row += "".join(f"{statistics.median(cells[b]) / quiet:>19.2f}x" for b in busy_counts if b)
        lines.append(row)
    if quiet_best:
        lines.append("(x): median over repeats / the best quiet median; right: each policy against its own quiet")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--policies", default="default,passive,pimm_fast")
    parser.add_argument("--busy", default="0,1,2", help="numbers of busy processes, comma-separated")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=4.0, help="timed window of each worker")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores available)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"), help="tower precision")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None, help="write the raw results as JSON")
    args = parser.parse_args(argv)
    from pimm_fast.runtime import available_cores

    threads = args.threads or available_cores()
    if args.worker:
        worker_main(args.batch, args.seconds, threads, args.precision)
        return 0
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    busy = [int(b) for b in args.busy.split(",")]
    for p in policies:
        policy_env(p)  # bad names fail before anything runs
    print(f"PIMM cpp training step, Ali-CCP config, batch {args.batch}, {threads} threads, towers "
          f"{args.precision}, {args.seconds:g} s per cell, {args.repeats} repeats; "
          f"load average before: {load_average()}", flush=True)
    results = measure(policies, busy, args.batch, args.seconds, threads, args.precision, args.repeats)
    print(f"load average after: {load_average()}")
    print(format_table(results, busy))
    if args.output is not None:
        args.output.write_text(json.dumps({"args": vars(args) | {"output": str(args.output)},
                                           "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
