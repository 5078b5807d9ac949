"""Command line: ``pimm-fast train`` (also ``python -m pimm_fast train``) and ``pimm-fast info``."""
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
                       help="data spec (docs/data.md): synthetic[:demo|demo3|aliccp|industrial], aliccp-raw:DIR, "
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
    train.add_argument("--embedding-optimizer", default="dense", choices=("dense", "adam", "rowwise_adagrad", "sgd"),
                       help="dense: the table trains with the model's Adam; else a fused optimizer updates the "
                            "touched rows in the backward (lazy Adam, row-wise Adagrad, SGD)")
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
    """(train, test) of a data spec; bad specs and unreadable data exit with the reason."""
    from .data import DataFormatError, load, parse_spec

    try:
        kind, _, options = parse_spec(spec)
        extra = {}
        if kind == "synthetic":  # the whole train part trains (no validation split), as before
            extra = {"valid_fraction": options.get("valid_fraction", 0.0)}
            if "samples" not in options:
                extra["samples"] = samples
        if "seed" not in options:
            extra["seed"] = seed
        splits = load(spec, log=lambda msg: print(msg, flush=True), **extra)
    except (ValueError, FileNotFoundError, ImportError, DataFormatError) as err:
        raise SystemExit(f"pimm-fast: {err}") from None
    return splits.train, splits.test


def format_table(result: dict) -> str:
    header = f"{'task':<18}{'AUC':>8}{'oracle AUC':>12}{'logloss':>10}{'positives':>11}"
    lines = [header, "-" * len(header)]
    for t, name in enumerate(result["tasks"]):
        oracle = result["oracle_auc"][t]
        lines.append(f"{name:<18}{result['auc'][t]:>8.4f}"
                     f"{'n/a' if math.isnan(oracle) else f'{oracle:.4f}':>12}"
                     f"{result['logloss'][t]:>10.4f}{result['positives'][t]:>11d}")
    return "\n".join(lines)


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write to a temporary file beside the target, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def build_model(args: argparse.Namespace, train):
    """The model named by --model over the data's fields, with the fused embedding if asked for."""
    import pimm_fast
    from .models import build_model as by_name

    field_dims = train.model_field_dims  # single-valued fields, then multi-valued ones (mean-pooled bags)
    pooling = ["sum"] * len(train.field_dims) + ["mean"] * len(train.bag_names)
    kwargs = {"embed_dim": args.embed_dim, "backend": args.backend, "task_names": train.task_names}
    if args.tower_dims is not None:
        kwargs["tower_dims"] = args.tower_dims
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
        raise SystemExit("pimm-fast: --backbone applies to --model pimm only")
    try:
        return by_name(name, field_dims, num_tasks=train.num_tasks, **kwargs)
    except ValueError as err:
        raise SystemExit(f"pimm-fast: {err}") from None


def cmd_train(args: argparse.Namespace) -> int:
    import pimm_fast
    from .distributed.command import check_args, run as run_distributed
    from .train import TrainConfig, evaluate, fit

    check_args(args)
    if args.distributed:
        return run_distributed(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    train, test = load_data(args.data, args.samples, args.seed)
    model = build_model(args, train).to(args.device)
    backend = pimm_fast.ops.resolve_backend(args.backend, args.device)
    print(f"{type(model).__name__} on {args.data}: {len(train):,} train / {len(test):,} test impressions, "
          f"{len(train.field_dims)} fields" + (f" + {len(train.bag_names)} multi-valued" if train.bags else "") +
          f", tasks {' -> '.join(train.task_names)}; "
          f"backend {backend} on {args.device}, {torch.get_num_threads()} threads, "
          f"embedding optimizer {args.embedding_optimizer}", flush=True)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         per_step_curriculum=args.per_step_curriculum, progress=not args.no_progress)

    def report(epoch: int, record: dict) -> None:
        print(f"epoch {epoch + 1}/{args.epochs}: loss {record['train_loss']:.4f}, p {record.get('p', 0):.3f}, "
              f"{record['samples_per_second']:,.0f} samples/s", flush=True)

    history = fit(model, train, config, on_epoch_end=report)
    result = evaluate(model, test)
    print("\nheld-out test set\n" + format_table(result))
    print(f"\ntotal {time.perf_counter() - started:.1f} s")
    if args.output is not None:
        write_json_atomic(args.output, {"args": {k: (str(v) if isinstance(v, Path) else v)
                                                 for k, v in vars(args).items()},
                                        "backend": backend, "history": history, "test": result})
    return 0


def cmd_info(_: argparse.Namespace) -> int:
    import pimm_fast

    print(json.dumps(pimm_fast.build_info(), indent=2))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return {"train": cmd_train, "info": cmd_info}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
