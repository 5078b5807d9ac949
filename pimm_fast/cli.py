"""Command line: ``pimm-fast train | compare | evaluate | predict | export | info | cache`` (also ``python -m
pimm_fast``).

This module declares every option once (options that ``train`` and ``compare`` share are declared in
:data:`SHARED` and added to both parsers by :func:`shared`), parses and dispatches to
:mod:`pimm_fast.commands`, and prints user errors. The commands check what the parser cannot, call the
library and never import this module (tests/test_layers.py).

User errors (bad options, unreadable data, a diverging run) print one line ``pimm-fast: error: ...`` on
stderr and exit 2, never a traceback; every option is checked before any data are read.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch

from .errors import UsageError
from .train.trainer import LR_SCHEDULES

DESCRIPTION = """Command line: ``pimm-fast train | compare | evaluate | predict | export | info | cache`` (also
``python -m pimm_fast``). User errors (bad options, unreadable data, a diverging run) print one line
``pimm-fast: error: ...`` on stderr and exit 2, never a traceback; every option is checked before any data are
read."""
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ("auto", "reference", "cpp", "cuda", "triton")
EMBEDDING_OPTIMIZERS = ("dense", "adam", "rowwise_adagrad", "sgd")
SHARDING_CHOICES = ("auto", "table_wise", "row_wise")
DEFAULT_MODELS = ("shared_bottom", "esmm", "mmoe", "ple", "aitm", "mncm", "pimm")


# --------------------------------------------------------------------------------------------------------
# argparse types

def _parse_dims(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths, got {text!r}")
    return dims


def _int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _lrs(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated learning rates, got {text!r}") from None
    if not values or not all(v > 0 and math.isfinite(v) for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct learning rates > 0, got {text!r}")
    return values


def _models(text: str) -> tuple[str, ...]:
    from .models.registry import MODELS

    names = tuple(n.strip().lower().replace("-", "_") for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in MODELS]
    if not names or unknown:
        named = ", ".join(unknown) if unknown else repr(text)
        raise argparse.ArgumentTypeError(f"unknown model(s) {named}; choose from "
                                         f"{', '.join(MODELS)}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a model is named twice in {text!r}")
    return names


def _names(text: str) -> tuple[str, ...]:
    """Comma-separated column names (each once)."""
    names = tuple(n.strip() for n in text.split(","))
    if not names or not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated column names, got {text!r}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a column is named twice in {text!r}")
    return names


class _DataOption(argparse.Action):
    """``--data`` and the data options: the options are folded into the spec (``?key=value&...``), so that
    ``args.data`` alone names the source, whatever the order of the flags."""

    def __call__(self, parser, namespace, values, option_string=None):
        options = dict(getattr(namespace, "_data_options", {}))
        if self.dest == "data":
            namespace._data_base = values
        else:
            options[self.dest] = values
            namespace._data_options = options
        base = getattr(namespace, "_data_base", None) or parser.get_default("data")
        if options:
            from urllib.parse import urlencode

            base += ("&" if "?" in base else "?") + urlencode(options, safe=",/*")
        namespace.data = base


class _Parser(argparse.ArgumentParser):
    """argparse's errors as one line (``pimm-fast: error: ...``), exit status 2."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


# --------------------------------------------------------------------------------------------------------
# options of train and compare, declared once; compare states only what differs (its defaults, and
# argparse-checked integers where train checks them itself with its own messages)

SHARED = {
    "--samples": dict(type=int, default=300_000, help="synthetic impressions (train + test); ignored by file sources"),
    "--embedding-optimizer": dict(
        default="adam", choices=EMBEDDING_OPTIMIZERS,
        help="adam (default), rowwise_adagrad, sgd: a fused optimizer updates the touched rows of the table in the "
             "backward (lazy Adam: FusedEmbedding); dense: the table trains with the model's Adam like any "
             "parameter (slower)"),
    "--embedding-lr": dict(type=float, default=None, help="fused optimizer lr (default: --lr)"),
    "--epochs": dict(type=int, default=3),
    "--batch-size": dict(type=int, default=1024),
    "--lr": dict(type=float, default=2e-3),
    "--embed-dim": dict(type=int, default=5),
    "--alpha": dict(type=float, default=0.5, help="curriculum: initial p"),
    "--step": dict(type=float, default=0.25, help="curriculum: decrease of p per epoch"),
    "--floor": dict(type=float, default=0.25, help="curriculum: lower limit of p"),
    "--per-step-curriculum": dict(action="store_true", help="decrease p every step, not per epoch"),
    "--backend": dict(default="auto", choices=BACKENDS),
    "--device": dict(default=DEVICE),
    "--threads": dict(type=int, default=None,
                      help="torch intra-op threads (default: OMP_NUM_THREADS, else one per 8192 samples of the batch, "
                           "at most one per physical core)"),
    "--no-progress": dict(action="store_true"),
    "--weight-decay": dict(type=_non_negative, default=0.0,
                           help="L2 weight decay of the dense Adam (not applied to a fused table)"),
    "--dropout": dict(type=_fraction, default=0.0, help="dropout in towers and experts"),
    "--patience": dict(type=_positive_int, default=None,
                       help="stop after N epochs without a better validation number (default: run every epoch); "
                            "the best validation epoch is restored before testing either way"),
    "--monitor": dict(default="last",
                      help="validation number of early stopping: last (the last task's AUC, default), mean (mean "
                           "AUC over tasks), logloss (mean log loss) or a task name"),
    "--lr-schedule": dict(default="none", choices=LR_SCHEDULES,
                          help="cosine: per step from --lr to 0 over the run; step: x --lr-gamma every "
                               "--lr-step-epochs epochs"),
}


def shared(parser, flag: str, **changes) -> None:
    """Add the option ``flag`` of :data:`SHARED` to ``parser`` (or an argument group), with ``changes``."""
    parser.add_argument(flag, **{**SHARED[flag], **changes})


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pimm-fast", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub.add_parser("train", help="train a cascade model and report per-task AUC on held-out data"))
    _add_compare(sub.add_parser("compare", help="train several models over several seeds; table with mean +- std "
                                                "and Welch t-tests, results.json / .csv and plots"))
    _add_predict(sub)

    export = sub.add_parser("export", help="export a trained run's model as one .pt2 file (AOTInductor), for "
                                            "predict --model, Python or C++ serving (docs/serving.md)")
    export.add_argument("--checkpoint", type=Path, required=True, help="the run directory (--out of train)")
    export.add_argument("--out", type=Path, required=True, help="the package to write (.pt2)")
    export.add_argument("--backend", default="auto", choices=("auto", "reference", "cpp", "cuda"),
                        help="kernels the package calls (auto: the fused kernels of --device, never the reference)")
    export.add_argument("--device", default="cpu", help="device the package runs on (cpu or cuda)")

    sub.add_parser("info", help="print what was built and which backends can run")
    cache = sub.add_parser("cache", help="list or clear the cache of preprocessed data files")
    cache.add_argument("action", choices=("list", "clear"))
    cache.add_argument("names", nargs="*", help="clear: the entries to remove (default: all)")
    cache.add_argument("--cache-dir", default=None,
                       help="the cache directory (default $PIMM_FAST_CACHE_DIR or ~/.cache/pimm_fast)")
    return parser


def _add_train(train: argparse.ArgumentParser) -> None:
    train.add_argument("--data", default="synthetic:demo", action=_DataOption,
                       help="data spec (docs/data.md): synthetic[:demo|demo3|aliccp|industrial|funnel], aliccp-raw:DIR, "
                            "aitm-csv:DIR, rechub-csv:DIR, csv:PATH; options may follow as ?key=value&...")
    shared(train, "--samples")
    data = train.add_argument_group("data options (folded into the --data spec as ?key=value)")
    data.add_argument("--labels", dest="labels", action=_DataOption, default=argparse.SUPPRESS,
                      help="csv: label columns in funnel order, comma-separated (e.g. click,purchase)")
    data.add_argument("--features", dest="features", action=_DataOption, default=argparse.SUPPRESS,
                      help="csv: categorical feature columns, comma-separated names or shell-style globs "
                           "('categorical_*'; default: all columns but the labels and --dense)")
    data.add_argument("--dense", dest="dense", action=_DataOption, default=argparse.SUPPRESS,
                      help="csv: numerical feature columns, comma-separated names or globs ('numerical_*'); "
                           "rechub-csv: its D* columns by default, 'none' leaves them out; standardised with "
                           "training statistics, missing values imputed and flagged")
    data.add_argument("--extra-columns", dest="extra", action=_DataOption, default=argparse.SUPPRESS,
                      choices=("ignore", "error"), help="csv: columns named neither label nor feature")
    data.add_argument("--cascade-policy", dest="policy", action=_DataOption, default=argparse.SUPPRESS,
                      choices=("drop", "error", "keep"), help="rows breaking the cascade (default: drop, counted)")
    data.add_argument("--variant", dest="variant", action=_DataOption, default=argparse.SUPPRESS,
                      choices=("aitm", "full"), help="aliccp-raw: 18 AITM fields, or 17 + 6 multi-valued bags")
    data.add_argument("--cache-dir", dest="cache", action=_DataOption, default=argparse.SUPPRESS,
                      help="cache of preprocessed files ('none' disables; default $PIMM_FAST_CACHE_DIR or "
                           "~/.cache/pimm_fast)")
    train.add_argument("--model", default="pimm",
                       help="pimm, shared_bottom, esmm, mmoe, ple, aitm or mncm (default: pimm)")
    train.add_argument("--backbone", default=None, choices=("towers", "mmoe", "ple"),
                       help="pimm only: what feeds the towers (default: towers, as in the paper)")
    for flag in ("--embedding-optimizer", "--embedding-lr", "--epochs", "--batch-size", "--lr", "--embed-dim"):
        shared(train, flag)
    train.add_argument("--tower-dims", type=_parse_dims, default=None,
                       help="tower widths (default: the model's, (128, 64, 32) for pimm)")
    for flag in ("--alpha", "--step", "--floor", "--per-step-curriculum", "--backend", "--device", "--threads"):
        shared(train, flag)
    train.add_argument("--seed", type=int, default=0)
    shared(train, "--no-progress")
    train.add_argument("--output", type=Path, default=None, help="write the results as JSON here")

    group = train.add_argument_group("TorchRec (docs/distributed.md)")
    group.add_argument("--embedding", default=None, choices=("pimm", "torchrec"),
                       help="pimm (default): pimm_fast's FieldEmbedding / FusedEmbedding; torchrec: FBGEMM "
                            "table-batched embeddings with the optimizer fused (implied by --distributed)")
    group.add_argument("--distributed", action="store_true",
                       help="shard the tables over the processes of torchrun (TorchRec DistributedModelParallel), "
                            "the dense part under DDP; gloo on CPU, NCCL on GPU")
    group.add_argument("--sharding", default="auto", choices=SHARDING_CHOICES,
                       help="--distributed: table placement (auto: the TorchRec planner chooses per table)")
    group.add_argument("--dist-timeout", type=float, default=300.0,
                       help="--distributed: seconds a collective may wait before the run stops with an error")
    group.add_argument("--sharded-checkpoint", type=Path, default=None,
                       help="--distributed: save a torch.distributed.checkpoint here after every epoch (with --out "
                            "DIR they go to DIR/sharded)")
    group.add_argument("--early-stopping-monitor", dest="monitor", default=argparse.SUPPRESS, metavar="MONITOR",
                       help="--monitor under another name: torchrun's parser refuses --monitor (an abbreviation of "
                            "its --monitor-interval) even after the module name")
    group.add_argument("--resume-sharded", type=Path, default=None,
                       help="--distributed: continue from a checkpoint of --sharded-checkpoint, or the run directory "
                            "of a --distributed --out (any number of processes)")

    group = train.add_argument_group("validation, regularisation, checkpoints")
    for flag in ("--weight-decay", "--dropout", "--patience", "--monitor", "--lr-schedule"):
        shared(group, flag)
    group.add_argument("--lr-gamma", type=float, default=0.5, help="step schedule: factor per step")
    group.add_argument("--lr-step-epochs", type=_positive_int, default=1, help="step schedule: epochs per step")
    group.add_argument("--out", type=Path, default=None,
                       help="run directory: checkpoint.pt (every epoch and --checkpoint-every steps), best.pt, "
                            "config.json, results.json")
    group.add_argument("--checkpoint-every", type=_non_negative_int, default=0,
                       help="also checkpoint every N training steps (needs --out)")
    group.add_argument("--resume", type=Path, default=None,
                       help="continue the run in DIR from its checkpoint (its configuration; options that "
                            "contradict it are an error)")


def _add_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=_models, default=DEFAULT_MODELS,
                   help=f"comma-separated (default: {','.join(DEFAULT_MODELS)})")
    p.add_argument("--seeds", type=_positive_int, default=3, help="runs per model, seeds 0..K-1 (default 3)")
    p.add_argument("--data", default="synthetic:funnel", help="data spec (default synthetic:funnel)")
    shared(p, "--samples", type=_positive_int, help="synthetic impressions (default 300k)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the data split (the same for every run)")
    shared(p, "--epochs", type=_positive_int)
    p.add_argument("--out", type=Path, required=True, help="directory for results.json, results.csv and plots")
    shared(p, "--lr", help="learning rate when there is no --lr-sweep")
    p.add_argument("--lr-sweep", type=_lrs, default=None,
                   help="comma-separated learning rates; each model keeps the best on validation (first seed)")
    shared(p, "--batch-size", type=_positive_int, default=2048)
    shared(p, "--embed-dim", type=_positive_int)
    for flag in ("--embedding-optimizer", "--embedding-lr", "--weight-decay", "--dropout", "--patience", "--monitor",
                 "--lr-schedule", "--alpha", "--step", "--floor", "--per-step-curriculum", "--backend", "--device"):
        shared(p, flag)
    shared(p, "--threads", type=_positive_int,
           help="torch threads in all (default: all cores), split among the --jobs processes")
    p.add_argument("--jobs", type=_positive_int, default=None,
                   help="runs trained at once, each in its own process with threads / jobs threads (default: one per "
                        "core, at most 8, on the CPU; 1 on a GPU). Small models train faster as one-thread processes "
                        "side by side than as one process whose threads wait for each other")
    shared(p, "--no-progress")


def _add_predict(sub) -> None:
    e = sub.add_parser("evaluate", help="metrics of a trained run or exported model on every row of a labelled "
                                        "file (or on a data spec's test split)")
    e.add_argument("--checkpoint", type=Path, default=None,
                   help="run directory (best.pt, else checkpoint.pt) or a .pt file")
    e.add_argument("--model", type=Path, default=None,
                   help="an exported model (FILE.pt2, pimm-fast export) instead of a run; needs --data")
    e.add_argument("--data", default=None,
                   help="a labelled CSV or Parquet file (FILE or csv:FILE): every row, raw values encoded with the "
                        "model's vocabulary, rows breaking the cascade treated by the run's cascade policy ('drop' "
                        "for --model); or a data spec: its test split (default: the run's own data)")
    e.add_argument("--output", type=Path, default=None, help="also write the metrics as JSON here")
    e.add_argument("--device", default=DEVICE)
    e.add_argument("--threads", type=_positive_int, default=None)
    p = sub.add_parser("predict", help="probabilities of every task for every row of a file (or of a data spec's "
                                       "test split)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="run directory (best.pt, else checkpoint.pt) or a .pt file")
    p.add_argument("--model", type=Path, default=None, help="an exported model (FILE.pt2, pimm-fast export)")
    p.add_argument("--data", default=None,
                   help="a CSV or Parquet file (FILE or csv:FILE): every row, in order, labels optional, raw values "
                        "encoded with the model's vocabulary; or a data spec: its test split (default: the run's "
                        "own data)")
    p.add_argument("--keep-columns", type=_names, default=None, metavar="A,B",
                   help="file scoring: the columns copied into the output beside the probabilities (default: every "
                        "column that is not a feature or dense column)")
    p.add_argument("--out", type=Path, required=True, help="FILE.csv or FILE.parquet")
    p.add_argument("--device", default=DEVICE)
    p.add_argument("--threads", type=_positive_int, default=None)


def given_options(argv: Sequence[str]) -> dict:
    """The options of the command in ``argv`` present on the command line (dest -> value as parsed), whatever
    their defaults: train --resume compares them with the checkpoint, --embedding torchrec keeps an explicit
    --embedding-optimizer."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for sub in commands.values():
        for action in sub._actions:
            if action.dest != "help":
                action.default = argparse.SUPPRESS
    return {k: v for k, v in vars(parser.parse_args(list(argv))).items() if k != "command"}


# --------------------------------------------------------------------------------------------------------
# dispatch: each command's module is imported only when it runs

def _run(args: argparse.Namespace) -> int:
    if args.command == "train":
        from .commands.train import cmd_train as command
    elif args.command == "compare":
        from .commands.compare import cmd_compare as command
    elif args.command == "evaluate":
        from .commands.predict import cmd_evaluate as command
    elif args.command == "predict":
        from .commands.predict import cmd_predict as command
    elif args.command == "export":
        from .commands.export import cmd_export as command
    elif args.command == "info":
        from .commands.info import cmd_info as command
    else:
        from .commands.cache import cmd_cache as command
    return command(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run a command; user errors print ``pimm-fast: error: ...`` (one line) and return 2."""
    from .data import DataFormatError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        if args.command in ("train", "compare"):
            args._given = given_options(argv)
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            code = _run(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at interpreter exit
        return code
    except (UsageError, DataFormatError, FloatingPointError) as err:  # FloatingPointError: TrainingDiverged
        message = " ".join(str(err).split())  # one line, whatever the message held
        print(f"pimm-fast: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (pimm-fast cache list | head): no traceback
        try:  # and none at exit, when Python flushes stdout into the closed pipe again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # stdout is not a file (captured in a test)
            pass
        return 141  # 128 + SIGPIPE, what a shell reports for a program the signal ended


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line (``pimm-fast: warning: ...``), without the file, line and source code that
    Python's default display adds."""
    text = " ".join(str(message).split())
    try:
        print(f"pimm-fast: warning: {text}", file=sys.stderr if file is None else file, flush=True)
    except OSError:
        pass
