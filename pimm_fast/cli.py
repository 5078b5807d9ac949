"""Command line: ``pimm-fast train | compare | evaluate | predict | info | cache`` (also ``python -m pimm_fast``).

The experiment verbs (train, compare, evaluate, predict) live in :mod:`pimm_fast.train.commands` and
:mod:`pimm_fast.train.experiments`; this module declares options, checks them and dispatches.

User errors (bad options, unreadable data, a diverging run) print one line ``pimm-fast: error: ...`` on
stderr and exit 2, never a traceback; every option is checked before any data are read.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from .errors import UsageError


def _parse_dims(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths, got {text!r}")
    return dims


class _Parser(argparse.ArgumentParser):
    """argparse's errors as one line (``pimm-fast: error: ...``), exit status 2."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pimm-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train a cascade model and report per-task AUC on held-out data")
    train.add_argument("--data", default="synthetic:demo", action=_DataOption,
                       help="data spec (docs/data.md): synthetic[:demo|demo3|aliccp|industrial|funnel], aliccp-raw:DIR, "
                            "aitm-csv:DIR, rechub-csv:DIR, csv:PATH; options may follow as ?key=value&...")
    train.add_argument("--samples", type=int, default=300_000,
                       help="synthetic impressions (train + test); ignored by file sources")
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
    train.add_argument("--embedding-optimizer", default="adam", choices=("dense", "adam", "rowwise_adagrad", "sgd"),
                       help="adam (default), rowwise_adagrad, sgd: a fused optimizer updates the touched rows of the "
                            "table in the backward (lazy Adam: FusedEmbedding); dense: the table trains with the "
                            "model's Adam like any parameter (slower)")
    train.add_argument("--embedding-lr", type=float, default=None, help="fused optimizer lr (default: --lr)")
    train.add_argument("--epochs", type=int, default=3)
    train.add_argument("--batch-size", type=int, default=1024)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--embed-dim", type=int, default=5)
    train.add_argument("--tower-dims", type=_parse_dims, default=None,
                       help="tower widths (default: the model's, (128, 64, 32) for pimm)")
    train.add_argument("--alpha", type=float, default=0.5, help="curriculum: initial p")
    train.add_argument("--step", type=float, default=0.25, help="curriculum: decrease of p per epoch")
    train.add_argument("--floor", type=float, default=0.25, help="curriculum: lower limit of p")
    train.add_argument("--per-step-curriculum", action="store_true", help="decrease p every step, not per epoch")
    train.add_argument("--backend", default="auto", choices=("auto", "reference", "cpp", "cuda", "triton"))
    train.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    train.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--no-progress", action="store_true")
    train.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    from .distributed.command import add_arguments as add_distributed_arguments

    add_distributed_arguments(train)  # --embedding torchrec, --distributed, --sharding, ...
    from .train.experiments import add_compare_parser, add_predict_parsers, add_train_options

    add_train_options(train)
    add_compare_parser(sub)
    add_predict_parsers(sub)

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


def _load_options(spec: str, samples: int, seed: int) -> dict:
    from .data.spec import accepts, parse_spec

    kind, _, options = parse_spec(spec)
    extra = {}
    if kind == "synthetic" and "samples" not in options:
        extra["samples"] = samples
    if "seed" not in options and accepts(kind, "seed"):  # rechub-csv has fixed splits: no seed
        extra["seed"] = seed
    return extra


def check_data_spec(spec: str, samples: int = 1, seed: int = 0) -> None:
    """Check a data spec without reading data: its kind, options, their values and that its files exist."""
    from .data.spec import _merge, _sources, parse_spec

    try:
        kind, arg, options = parse_spec(spec)
        opts = _merge(kind, spec, options, _load_options(spec, samples, seed))
        if kind == "csv" and "labels" not in opts:
            raise UsageError(f"data spec {spec!r}: name the label columns in funnel order with --labels "
                             f"(e.g. --labels click,purchase)")
        if kind != "synthetic":
            _sources(kind, arg, opts)
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:
        raise UsageError(str(err)) from None


def load_data(spec: str, samples: int, seed: int, quiet: bool = False):
    """The splits (train, valid, test) of a data spec; bad specs and unreadable data raise UsageError with the reason. The
    drop report (every dropped or altered row, by reason and split) is printed (unless ``quiet``: compare's
    workers load what the parent has loaded and reported) and kept in ``train.meta['report']``."""
    from .data import DataFormatError, load

    log = (lambda msg: None) if quiet else (lambda msg: print(msg, flush=True))
    try:
        splits = load(spec, log=log, **_load_options(spec, samples, seed))
    except (ValueError, FileNotFoundError, NotADirectoryError, ImportError, DataFormatError) as err:
        raise UsageError(str(err)) from None
    for line in splits.report_lines():
        log(f"data: {line}")
    splits.train.meta["report"] = splits.report
    return splits


def check_output_path(path: Optional[Path], option: str = "--output") -> None:
    """Fail before any work if ``path`` cannot be written: a directory, or a place without write access."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory; give a file name (e.g. {path / 'results.json'})")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {path} exists and is not writable")
    parent = path.parent.resolve() if str(path.parent) else Path.cwd()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: cannot create files in {parent} (no write permission)")


def build_model(args: argparse.Namespace, train):
    """The model named by --model over the data's fields, with the fused embedding if asked for."""
    import pimm_fast
    from .models import build_model as by_name

    field_dims = train.model_field_dims  # single-valued fields, then multi-valued ones (mean-pooled bags)
    pooling = ["sum"] * len(train.field_dims) + ["mean"] * len(train.bag_names)
    kwargs = {"embed_dim": args.embed_dim, "backend": args.backend, "task_names": train.task_names}
    if train.dense is not None:
        kwargs.update(num_dense=train.num_dense, dense_names=train.dense_names)
    if args.tower_dims is not None:
        kwargs["tower_dims"] = args.tower_dims
    if getattr(args, "dropout", 0.0):
        kwargs["dropout"] = args.dropout
    if getattr(args, "embedding", None) == "torchrec" or getattr(args, "distributed", False):
        from .distributed.command import torchrec_embedding_from_args

        kwargs["embedding"] = torchrec_embedding_from_args(args, train, sharded=getattr(args, "distributed", False))
    elif args.embedding_optimizer != "dense":
        kwargs["embedding"] = pimm_fast.FusedEmbedding(
            field_dims, args.embed_dim, optimizer=args.embedding_optimizer, pooling=pooling,
            lr=args.embedding_lr if args.embedding_lr is not None else args.lr, backend=args.backend)
    elif train.bags:
        kwargs["embedding"] = pimm_fast.FieldEmbedding(field_dims, args.embed_dim, backend=args.backend,
                                                       pooling=pooling)
    name = args.model.strip().lower().replace("-", "_")
    if name == "pimm":
        kwargs["curriculum"] = pimm_fast.Curriculum(args.alpha, args.step, args.floor)
        if args.backbone is not None:
            kwargs["backbone"] = args.backbone
    elif args.backbone is not None:
        raise UsageError("--backbone applies to --model pimm only")
    try:
        model = by_name(name, field_dims, num_tasks=train.num_tasks, **kwargs)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if model.dense_input is not None:  # standardisation fitted on the training split only
        model.dense_input.fit(train.dense)
    return model


def check_train_args(args: argparse.Namespace) -> None:
    """Every option of ``train`` checked before any data are read; a bad one raises UsageError."""
    import pimm_fast
    from .models import MODELS

    for name in ("epochs", "batch_size", "embed_dim"):
        value = getattr(args, name)
        if value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.samples < 1:
        raise UsageError(f"--samples must be >= 1, got {args.samples}")
    for name in ("lr", "embedding_lr"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number > 0, got {value}")
    try:
        pimm_fast.Curriculum(args.alpha, args.step, args.floor)
    except ValueError as err:
        raise UsageError(f"--alpha/--step/--floor: {err}") from None
    model = args.model.strip().lower().replace("-", "_")
    if model not in MODELS:
        raise UsageError(f"unknown --model {args.model!r}; choose one of {', '.join(MODELS)}")
    if args.backbone is not None and model != "pimm":
        raise UsageError("--backbone applies to --model pimm only")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UsageError(f"--device {args.device!r} is not a device (cpu, cuda, cuda:0, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {args.device}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s)")
    elif device.type != "cpu":
        raise UsageError(f"--device {args.device}: only cpu and cuda devices are supported")
    try:
        pimm_fast.ops.resolve_backend(args.backend, device)
    except (ValueError, RuntimeError) as err:
        raise UsageError(f"--backend {args.backend}: {err}") from None
    check_data_spec(args.data, args.samples, args.seed)
    from .data.spec import parse_spec

    policy = parse_spec(args.data)[2].get("policy")
    if policy == "keep" and MODELS[model].requires_cascade:
        need = [n for n, cls in MODELS.items() if cls.requires_cascade]
        free = [n for n, cls in MODELS.items() if not cls.requires_cascade]
        raise UsageError(f"--cascade-policy keep keeps rows that break the cascade, which {model} cannot train on "
                         f"({', '.join(need)} assume the cascade: PIMM feeds y_(t-1), ESMM multiplies stages, "
                         f"AITM/MNCM calibrate yhat_t <= yhat_(t-1)); use --model {' / '.join(free)}, or "
                         f"--cascade-policy drop")
    check_output_path(args.output)


def cmd_train(args: argparse.Namespace) -> int:
    from .distributed.command import check_args as check_distributed_args, run as run_distributed
    from .train.commands import cmd_train as run

    check_distributed_args(args)
    if getattr(args, "resume", None) is None:  # a resumed run's options come from its checkpoint
        check_train_args(args)
    else:
        check_output_path(args.output)
    return run_distributed(args) if args.distributed else run(args)


def cmd_compare(args: argparse.Namespace) -> int:
    from .train.experiments import cmd_compare as run

    return run(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .train.commands import cmd_evaluate as run

    return run(args)


def cmd_predict(args: argparse.Namespace) -> int:
    from .train.commands import cmd_predict as run

    return run(args)


def cmd_export(args: argparse.Namespace) -> int:
    from .export import cmd_export as run

    return run(args)


def cmd_info(_: argparse.Namespace) -> int:
    import pimm_fast

    print(json.dumps(pimm_fast.build_info(), indent=2))
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from .data import cache

    root = Path(args.cache_dir) if args.cache_dir else cache.default_cache_root()
    if args.action == "list":
        if args.names:
            raise UsageError("cache list takes no names")
        listed = cache.entries(root)
        total = sum(e["bytes"] for e in listed)
        print(f"{root}: {len(listed)} entr{'y' if len(listed) == 1 else 'ies'}, {total / 2**20:,.1f} MiB "
              f"(limit {cache.max_bytes() / 2**30:,.1f} GiB; least recently used first)")
        for e in listed:
            print(f"  {e['name']}  {e['bytes'] / 2**20:>10,.1f} MiB  used "
                  f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(e['last_used']))}  {e['spec']}")
        return 0
    try:
        removed = cache.clear(root, args.names or None)
    except ValueError as err:
        raise UsageError(str(err)) from None
    print(f"{root}: removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run a command; user errors print ``pimm-fast: error: ...`` (one line) and return 2."""
    from .data import DataFormatError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        args._argv = argv  # train --resume tells the options given from the defaults
        return {"train": cmd_train, "compare": cmd_compare, "evaluate": cmd_evaluate, "predict": cmd_predict,
                "export": cmd_export, "info": cmd_info, "cache": cmd_cache}[args.command](args)
    except (UsageError, DataFormatError, FloatingPointError) as err:  # FloatingPointError: TrainingDiverged
        message = " ".join(str(err).split())  # one line, whatever the message held
        print(f"pimm-fast: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
