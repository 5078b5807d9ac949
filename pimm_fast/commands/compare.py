"""``pimm-fast compare``: several models over several seeds on one data split, the paper's kind of table.

Protocol: the data is loaded and split once (``--split-seed``); every run of every model sees the same
train / validation / test rows. Seed s sets the initialisation (``torch.manual_seed(s)``) and the order of
the batches. With ``--lr-sweep``, each learning rate is tried with the first seed and the one with the
best validation number (``--monitor``) is kept for the model (the paper's protocol picks the lr on
validation); the first seed's run at that lr is reused, the other seeds are run at it. Every run keeps its
best validation epoch (early stopping with ``--patience``) and is scored once on the test split.

The table gives, per task, the test AUC mean +- standard deviation over seeds (sample standard deviation,
n - 1), and the two-sided Welch t-test p-value of the best model (highest mean AUC on the last task)
against each other model on the last task. Files in ``--out DIR`` (schema in README.md):
``results.json``, ``results.csv``, ``auc.png``, ``validation.png``, ``p_schedule.png``.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import os
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm import tqdm

from ..errors import UsageError
from ..runtime import available_cores
from ..train import checkpoint as ckpt
from ..train.stats import welch_t_test
from ..train.trainer import Trainer, check_monitor, evaluate
from .run import DataRequest, RunConfig, build, check_output_path, check_unused_options, jsonable

SCHEMA = "pimm_fast.compare/1"
METRICS = ("auc", "conditional_auc", "logloss", "ece", "funnel_violation")


# --------------------------------------------------------------------------------------------------------
# runs

def _run_config(args: argparse.Namespace, model: str, seed: int, lr: float) -> RunConfig:
    return RunConfig(data=args.data, samples=args.samples, model=model, embedding_optimizer=args.embedding_optimizer,
                     embedding_lr=args.embedding_lr, epochs=args.epochs, batch_size=args.batch_size, lr=lr,
                     weight_decay=args.weight_decay, dropout=args.dropout, embed_dim=args.embed_dim, alpha=args.alpha,
                     step=args.step, floor=args.floor, per_step_curriculum=args.per_step_curriculum,
                     backend=args.backend, seed=seed, patience=args.patience, monitor=args.monitor,
                     lr_schedule=args.lr_schedule)


def run_one(config: RunConfig, splits, device: str, progress: bool, position: int = 1) -> dict:
    """Train one model with one seed on the given splits; its validation curve and test metrics."""
    torch.manual_seed(config.seed)
    model = build(config, splits.train, device, training=True)
    tc = config.train_config(progress=progress)
    trainer = Trainer(model, splits.train, tc, valid=splits.valid,
                      desc=f"{config.model} seed {config.seed} lr {config.lr:g}", position=position)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # single-class validation tasks: reported as null
        history = trainer.run()
        test = evaluate(model, splits.test, warn=False)
    seconds = time.perf_counter() - started
    curve = [{"epoch": r["epoch"], "train_loss": r["train_loss"], "seconds": r["seconds"], "p": r.get("p"),
              "monitor": r.get("monitor"), "valid_auc": r["valid"]["auc"] if "valid" in r else None}
             for r in history]
    return {"model": config.model, "seed": config.seed, "lr": config.lr, "seconds": seconds,
            "epochs_run": len(history), "best_epoch": trainer.early["best_epoch"],
            "best_valid": trainer.early["best"], "stopped_early": trainer.early["stopped"],
            "history": curve, "p_trace": [list(x) for x in trainer.p_trace], "test": test}


# runs in worker processes (--jobs): each loads the splits once, then trains the runs it is handed
_WORKER: dict = {}


def _init_worker(spec: str, samples: int, split_seed: int, threads: int, slots, progress: bool) -> None:
    torch.set_num_threads(threads)
    with slots.get_lock():
        slot = slots.value
        slots.value += 1
    _WORKER.update(splits=DataRequest.parse(spec, samples, split_seed).load(quiet=True), slot=slot, progress=progress)


def _worker_run(config: RunConfig, device: str) -> dict:
    return run_one(config, _WORKER["splits"], device, _WORKER["progress"], position=_WORKER["slot"] + 1)


class _Runner:
    """Runs in this process (jobs = 1) or in a pool of ``jobs`` processes; results come back in order."""

    def __init__(self, args: argparse.Namespace, splits, progress: bool):
        self.args, self.splits, self.progress = args, splits, progress
        self.pool = None
        if args.jobs > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            context = mp.get_context("spawn")
            threads = max(1, (args.threads or torch.get_num_threads()) // args.jobs)
            self.pool = ProcessPoolExecutor(args.jobs, mp_context=context, initializer=_init_worker,
                                            initargs=(args.data, args.samples, args.split_seed, threads,
                                                      context.Value("i", 0), progress))

    def map(self, configs: list, done) -> list:
        if self.pool is None:
            results = []
            for config in configs:
                results.append(run_one(config, self.splits, self.args.device, self.progress))
                done(results[-1])
            return results
        from concurrent.futures import as_completed

        futures = {self.pool.submit(_worker_run, config, self.args.device): i for i, config in enumerate(configs)}
        results = [None] * len(configs)
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            done(results[futures[future]])
        return results

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def summarize(values: Sequence[Optional[float]]) -> dict:
    """mean, sample standard deviation (n - 1; None for n < 2) and the values; None values are skipped."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(finite)
    mean = math.fsum(finite) / n if n else None
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n, "values": [None if v is None else float(v) for v in values]}


def aggregate(runs: dict, task_names: Sequence[str], seeds: Sequence[int]) -> tuple[dict, Optional[str]]:
    """models -> tasks -> metric -> summary; the Welch p-value of the best model (last task AUC) vs each."""
    out = {}
    for model, model_runs in runs.items():
        tasks = {}
        for t, task in enumerate(task_names):
            tasks[task] = {m: summarize([r["test"][m][t] for r in model_runs]) for m in METRICS}
        out[model] = {"tasks": tasks, "seeds": [r["seed"] for r in model_runs],
                      "seconds": summarize([r["seconds"] for r in model_runs]),
                      "epochs_run": [r["epochs_run"] for r in model_runs],
                      "best_epoch": [r["best_epoch"] for r in model_runs]}
    last = task_names[-1]
    means = {m: v["tasks"][last]["auc"]["mean"] for m, v in out.items() if v["tasks"][last]["auc"]["mean"] is not None}
    best = max(means, key=means.get) if means else None
    for model, v in out.items():
        test = None
        if best is not None and model != best:
            test = welch_t_test([x for x in out[best]["tasks"][last]["auc"]["values"] if x is not None],
                                [x for x in v["tasks"][last]["auc"]["values"] if x is not None])
        v["welch_vs_best"] = test  # {"t", "df", "p"} or None (the best model itself, or undefined)
    return out, best


def format_compare_table(summary: dict, best: Optional[str], task_names: Sequence[str],
                         oracle: Optional[dict]) -> str:
    width = 17
    last = task_names[-1]
    header = f"{'model':<15}" + "".join(f"{t[:width - 2]:>{width}}" for t in task_names) + \
        f"{'p vs best':>12}{'s/run':>8}"
    lines = [f"test AUC, mean +- std over seeds; Welch t-test p-value against the best model on {last!r}",
             header, "-" * len(header)]
    for model, v in summary.items():
        cells = []
        for task in task_names:
            s = v["tasks"][task]["auc"]
            cell = "n/a" if s["mean"] is None else f"{s['mean']:.4f}" + ("" if s["std"] is None else f"+-{s['std']:.4f}")
            cells.append(f"{cell:>{width}}")
        welch = v["welch_vs_best"]
        p = "best" if model == best else ("n/a" if welch is None else f"{welch['p']:.2g}")
        lines.append(f"{model:<15}" + "".join(cells) + f"{p:>12}{v['seconds']['mean']:>8.1f}")
    if oracle and any(oracle.get(t) is not None for t in task_names):
        lines.append(f"{'oracle':<15}" + "".join(
            f"{'n/a' if oracle.get(t) is None else format(oracle[t], '.4f'):>{width}}" for t in task_names))
    return "\n".join(lines)


def write_csv(path: Path, summary: dict, task_names: Sequence[str], seeds: Sequence[int]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "task", "metric", "mean", "std", "n"] + [f"seed_{s}" for s in seeds] + ["welch_p_vs_best"])
    last = task_names[-1]
    for model, v in summary.items():
        for task in task_names:
            for metric in METRICS:
                s = v["tasks"][task][metric]
                welch = v["welch_vs_best"] if (task == last and metric == "auc") else None
                w.writerow([model, task, metric, _num(s["mean"]), _num(s["std"]), s["n"]]
                           + [_num(x) for x in s["values"]] + [_num(welch["p"]) if welch else ""])
    text = buf.getvalue()
    ckpt.atomic_write(path, lambda f: f.write(text.encode()))


def _num(value) -> str:
    return "" if value is None else repr(float(value))


def write_plots(out: Path, summary: dict, runs: dict, task_names: Sequence[str], oracle: Optional[dict],
                monitor: str) -> list[str]:
    """auc.png (test AUC per model and task, error bars = std over seeds, oracle dashed), validation.png
    (validation number per epoch, mean over seeds), p_schedule.png (PIMM's curriculum p as trained).
    Returns the files written; none (with a warning) when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: no plots (pip install matplotlib)", RuntimeWarning)
        return []
    written = []
    models = list(summary)

    def save(fig, name):
        ckpt.atomic_write(out / name, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
        plt.close(fig)
        written.append(name)

    fig, axes = plt.subplots(1, len(task_names), figsize=(3.2 * len(task_names) + 1, 3.6), squeeze=False)
    for ax, task in zip(axes[0], task_names):
        means = [summary[m]["tasks"][task]["auc"]["mean"] or float("nan") for m in models]
        stds = [summary[m]["tasks"][task]["auc"]["std"] or 0.0 for m in models]
        ax.bar(range(len(models)), means, yerr=stds, capsize=3, color="tab:blue", alpha=0.8)
        finite = [v for v in means if math.isfinite(v)]
        if oracle and oracle.get(task) is not None:
            ax.axhline(oracle[task], color="black", linestyle="--", linewidth=1, label="oracle")
            finite.append(oracle[task])
        if finite:
            span = max(finite) - min(finite)
            ax.set_ylim(min(finite) - max(span, 0.005) * 0.6, max(finite) + max(span, 0.005) * 0.4)
        ax.set_xticks(range(len(models)), models, rotation=45, ha="right")
        ax.set_title(task)
    axes[0][0].set_ylabel("test AUC")
    fig.suptitle("test AUC, mean +- std over seeds (dashed: oracle)")
    fig.tight_layout()
    save(fig, "auc.png")

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for model in models:
        curves = [[h["monitor"] for h in r["history"]] for r in runs[model]]
        length = max(len(c) for c in curves)
        xs, ys = [], []
        for e in range(length):
            vals = [c[e] for c in curves if e < len(c) and c[e] is not None]
            if vals:
                xs.append(e + 1)
                ys.append(sum(vals) / len(vals))
        ax.plot(xs, [(-y if monitor == "logloss" else y) for y in ys], marker="o", label=model)
    ax.set_xlabel("epoch")
    label = {"logloss": "mean log loss", "last": f"AUC of {task_names[-1]}", "mean": "mean AUC"}.get(monitor,
                                                                                          f"AUC of {monitor}")
    ax.set_ylabel(f"validation {label} (mean over seeds)")
    ax.legend(fontsize=8)
    ax.set_title("validation curves")
    save(fig, "validation.png")

    traces = [(m, r["p_trace"], r["epochs_run"]) for m in models for r in runs[m] if r["p_trace"]]
    if traces:
        fig, ax = plt.subplots(figsize=(6.5, 3.5))
        colors = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(m for m, _, _ in traces))}
        shown = set()
        for model, trace, epochs_run in traces:  # every seed of a model in the model's colour
            xs = [x for x, _ in trace] + [float(epochs_run)]
            ps = [p for _, p in trace] + [trace[-1][1]]
            ax.step(xs, ps, where="post", color=colors[model], alpha=0.7,
                    label=None if model in shown else model)
            shown.add(model)
        ax.set_xlabel("epoch")
        ax.set_ylabel("p: probability of feeding y_{t-1}")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8)
        ax.set_title("curriculum p as trained (every seed)")
        save(fig, "p_schedule.png")
    return written


def check_compare_args(args: argparse.Namespace) -> DataRequest:
    """Every option checked for every model before any data are read or any run starts (as train checks its
    one model); returns the data spec, parsed and checked."""
    from .train import check_device, check_numbers, check_policy

    check_numbers(args, ())
    check_device(args.device, args.backend)
    request = DataRequest.parse(args.data, args.samples, args.split_seed)
    request.check()
    check_policy(request, args.models)
    check_unused_options(getattr(args, "_given", {}), args, args.models)
    check_output_path(Path(args.out) / ckpt.RESULTS, "--out")
    return request


def cmd_compare(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.jobs is None:
        args.jobs = 1 if str(args.device).startswith("cuda") else max(1, min(8, args.threads or available_cores()))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    request = check_compare_args(args)
    started = time.perf_counter()
    splits = request.load()
    if splits.valid is None or len(splits.valid) == 0:
        raise UsageError(f"compare needs a validation split and {args.data} has none (valid_fraction=0)")
    task_names = list(splits.train.task_names)
    try:
        check_monitor(args.monitor, task_names)
    except ValueError as err:
        raise UsageError(f"--monitor: {err}")
    seeds = list(range(args.seeds))
    lrs = list(args.lr_sweep) if args.lr_sweep else [args.lr]
    progress = not args.no_progress
    total = len(args.models) * (len(seeds) + len(lrs) - 1)
    print(f"compare {', '.join(args.models)} on {args.data}: {len(splits.train):,} train / {len(splits.valid):,} valid "
          f"/ {len(splits.test):,} test rows (split seed {args.split_seed}), seeds {seeds}, {args.epochs} epochs, "
          f"lr {'sweep ' + ','.join(map(str, lrs)) if args.lr_sweep else lrs[0]}, {_threads(args)}; {total} runs",
          flush=True)
    overall = tqdm(total=total, desc="compare", position=0, disable=not progress)
    runner = _Runner(args, splits, progress)

    def done(result: dict) -> None:
        overall.update(1)
        sweep = f"best valid {args.monitor} {_fmt(result['best_valid'])} (epoch {_epoch(result['best_epoch'])}), "
        tqdm.write(f"{result['model']} seed {result['seed']} lr {result['lr']:g}: {sweep}test AUC "
                   f"{_fmt(result['test']['auc'][-1])} on {task_names[-1]}, {result['seconds']:.1f} s")

    runs: dict[str, list] = {}
    sweeps: dict[str, dict] = {}
    chosen: dict[str, float] = {}
    try:
        # the first seed at every lr (the sweep), then the other seeds at the lr each model chose
        first = runner.map([_run_config(args, m, seeds[0], lr) for m in args.models for lr in lrs], done)
        for i, model in enumerate(args.models):
            by_lr = dict(zip(lrs, first[i * len(lrs):(i + 1) * len(lrs)]))
            scored = {lr: r["best_valid"] for lr, r in by_lr.items() if r["best_valid"] is not None}
            chosen[model] = max(scored, key=scored.get) if scored else lrs[0]
            sweeps[model] = {repr(lr): r["best_valid"] for lr, r in by_lr.items()}
            runs[model] = [by_lr[chosen[model]]]
        rest = runner.map([_run_config(args, m, seed, chosen[m]) for m in args.models for seed in seeds[1:]], done)
        for i, model in enumerate(args.models):
            runs[model] += rest[i * (len(seeds) - 1):(i + 1) * (len(seeds) - 1)]
    finally:
        runner.close()
        overall.close()
    summary, best = aggregate(runs, task_names, seeds)
    for model in summary:
        summary[model]["lr"] = chosen[model]
        summary[model]["lr_sweep"] = sweeps[model] if args.lr_sweep else None
        summary[model]["runs"] = runs[model]
    oracle_values = runs[args.models[0]][0]["test"]["oracle_auc"]
    oracle = {t: oracle_values[i] for i, t in enumerate(task_names)}
    seconds = time.perf_counter() - started
    table = format_compare_table(summary, best, task_names, oracle)
    print("\n" + table)
    print(f"\ntotal {seconds:.1f} s ({total} runs, {_threads(args)})")
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "schema": SCHEMA, "data": args.data, "split_seed": args.split_seed,
        "rows": {"train": len(splits.train), "valid": len(splits.valid), "test": len(splits.test)},
        "tasks": task_names, "last_task": task_names[-1], "seeds": seeds, "epochs": args.epochs,
        "monitor": args.monitor, "lr_sweep": list(args.lr_sweep) if args.lr_sweep else None,
        "config": jsonable({k: (None if k == "lr" and args.lr_sweep else v)  # the sweep chose each model's lr
                            for k, v in vars(args).items() if not k.startswith("_") and k != "command"}),
        "oracle_auc": oracle if any(v is not None for v in oracle.values()) else None,
        "best_model": best, "models": summary,
        "timing": {"seconds": seconds, "runs": total, "jobs": args.jobs, "threads": _threads(args),
                   "device": args.device, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
                   "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
    }
    ckpt.save_json(out / ckpt.RESULTS, jsonable(results))
    write_csv(out / "results.csv", summary, task_names, seeds)
    plots = write_plots(out, summary, runs, task_names, oracle, args.monitor)
    print(f"wrote {out / ckpt.RESULTS}, results.csv" + (", " + ", ".join(plots) if plots else ""))
    return 0


def _threads(args: argparse.Namespace) -> str:
    if args.jobs == 1:
        return f"{torch.get_num_threads()} threads"
    per = max(1, (args.threads or torch.get_num_threads()) // args.jobs)
    return f"{args.jobs} processes x {per} threads"


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _epoch(value) -> str:
    return "n/a" if value is None else str(value + 1)
