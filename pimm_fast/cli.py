"""Command line: ``pimm-fast train | compare | evaluate | predict | info`` (also ``python -m pimm_fast ...``).

The experiment verbs (train, compare, evaluate, predict) live in :mod:`pimm_fast.train.commands` and
:mod:`pimm_fast.train.experiments`; this module declares options and dispatches."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch


def _parse_dims(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths, got {text!r}")
    return dims


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pimm-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

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
                      help="csv: categorical feature columns, comma-separated (default: all other columns)")
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
    from .train.experiments import add_compare_parser, add_predict_parsers, add_train_options

    add_train_options(train)
    add_compare_parser(sub)
    add_predict_parsers(sub)

    sub.add_parser("info", help="print what was built and which backends can run")
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

            base += ("&" if "?" in base else "?") + urlencode(options, safe=",/")
        namespace.data = base


def load_data(spec: str, samples: int, seed: int):
    """The splits (train, valid, test) of a data spec; bad specs and unreadable data exit with the reason."""
    from .data import DataFormatError, load, parse_spec

    try:
        kind, _, options = parse_spec(spec)
        extra = {}
        if kind == "synthetic" and "samples" not in options:
            extra["samples"] = samples
        if "seed" not in options:
            extra["seed"] = seed
        splits = load(spec, log=lambda msg: print(msg, flush=True), **extra)
    except (ValueError, FileNotFoundError, ImportError, DataFormatError) as err:
        raise SystemExit(f"pimm-fast: {err}") from None
    return splits


def build_model(args: argparse.Namespace, train):
    """The model named by --model over the data's fields, with the fused embedding if asked for."""
    import pimm_fast
    from .models import build_model as by_name

    field_dims = train.model_field_dims  # single-valued fields, then multi-valued ones (mean-pooled bags)
    pooling = ["sum"] * len(train.field_dims) + ["mean"] * len(train.bag_names)
    kwargs = {"embed_dim": args.embed_dim, "backend": args.backend, "task_names": train.task_names}
    if args.tower_dims is not None:
        kwargs["tower_dims"] = args.tower_dims
    if getattr(args, "dropout", 0.0):
        kwargs["dropout"] = args.dropout
    if args.embedding_optimizer != "dense":
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
        raise SystemExit("pimm-fast: --backbone applies to --model pimm only")
    try:
        return by_name(name, field_dims, num_tasks=train.num_tasks, **kwargs)
    except ValueError as err:
        raise SystemExit(f"pimm-fast: {err}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from .train.commands import cmd_train as run

    return run(args)


def cmd_compare(args: argparse.Namespace) -> int:
    from .train.experiments import cmd_compare as run

    return run(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .train.commands import cmd_evaluate as run

    return run(args)


def cmd_predict(args: argparse.Namespace) -> int:
    from .train.commands import cmd_predict as run

    return run(args)


def cmd_info(_: argparse.Namespace) -> int:
    import pimm_fast

    print(json.dumps(pimm_fast.build_info(), indent=2))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args._argv = argv  # train --resume tells the options given from the defaults
    return {"train": cmd_train, "compare": cmd_compare, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "info": cmd_info}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
