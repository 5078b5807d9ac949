"""``pimm-fast evaluate`` (metrics of a trained run on a data spec's test split) and ``pimm-fast predict``
(probabilities of every task for every row, from a run directory or an exported ``.pt2``)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import torch

from ..errors import UsageError
from ..train import checkpoint as ckpt
from ..train.trainer import evaluate, predict
from .run import format_table, jsonable, load_data, load_run_model

OUTPUT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    model, config, path, test, _ = load_run_model(args.checkpoint, args.data, args.device)
    result = evaluate(model, test)
    print(f"{type(model).__name__} from {path} on the test split of {args.data or config.data} "
          f"({len(test):,} rows)\n" + format_table(result))
    if args.output is not None:
        ckpt.save_json(Path(args.output), jsonable({"checkpoint": str(path), "data": args.data or config.data,
                                                     "test": result}))
    return 0


def write_predictions(path: Path, ids: torch.Tensor, id_names: Sequence[str], probs: torch.Tensor,
                      task_names: Sequence[str]) -> None:
    """Id columns then one ``p_<task>`` column per task, one row per sample in order; CSV or Parquet by
    the file's extension; written to a temporary file and renamed (never half-written)."""
    try:
        import pyarrow as pa
    except ImportError:
        raise ValueError("writing predictions needs pyarrow (pip install pyarrow)") from None
    kind = OUTPUT_FORMATS.get(Path(path).suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: the predictions file must end in .csv, .parquet or .pq")
    columns = {name: ids[:, f].numpy() for f, name in enumerate(id_names)}
    for t, name in enumerate(task_names):
        columns[f"p_{name}"] = probs[:, t].numpy()
    if len(columns) != len(id_names) + len(task_names):
        raise ValueError(f"column names collide: {list(id_names)} and p_<task> for tasks {list(task_names)}")
    table = pa.table(columns)
    if kind == "csv":
        import pyarrow.csv as pacsv

        ckpt.atomic_write(Path(path), lambda f: pacsv.write_csv(table, f))
    else:
        import pyarrow.parquet as pq

        ckpt.atomic_write(Path(path), lambda f: pq.write_table(table, f))


def _predict_exported(args: argparse.Namespace):
    """Probabilities of a ``.pt2`` package (``pimm_fast.export.load``) on the test split of ``--data``
    (with bag fields: ids, bag_values, bag_offsets, as ``pimm_fast.export.ExportedBagModel`` takes them)."""
    from ..data import Batcher
    from ..modules import JaggedIds

    try:
        from .. import export
    except ImportError as err:
        raise UsageError(f"--model needs pimm_fast.export, which this installation lacks ({err})") from None
    if not args.data:
        raise UsageError("--model FILE.pt2 needs --data SPEC (the rows to score)")
    try:
        fn = export.load(args.model)
    except export.PackageError as err:
        raise UsageError(str(err)) from None
    meta = getattr(fn, "metadata", {})
    splits = load_data(args.data, 300_000, 0)
    test = splits.test
    if list(meta.get("field_dims", test.model_field_dims)) != list(test.model_field_dims) or \
            int(meta.get("num_bag_fields", 0)) != len(test.bag_names):
        bags = f" ({len(test.bag_names)} of them bags)" if test.bags else ""
        raise UsageError(f"the data {args.data} does not fit {args.model}: fields {list(test.model_field_dims)}{bags}, "
                         f"the package has {meta.get('field_dims')} ({meta.get('num_bag_fields', 0)} of them bags)")
    if "num_dense" in meta and int(meta["num_dense"]) != test.num_dense:  # (names: a Python-built model may lack them)
        raise UsageError(f"the data {args.data} has {test.num_dense} dense column(s) {list(test.dense_names)}, "
                         f"{args.model} takes {meta['num_dense']} {list(meta.get('dense_names', []))}" +
                         ("" if int(meta["num_dense"]) else " (add ?dense=none to a rechub-csv spec)"))
    out = []
    with torch.no_grad():
        for batch in Batcher(test, 16384, shuffle=False, bags=bool(test.bags)):
            dense = batch[-1] if test.dense is not None else None
            inputs = [batch[0].long()]
            if test.bags:  # the bag fields, field-major, as the package takes them (ExportedBagModel)
                packed = JaggedIds.from_fields([batch[2][name] for name in test.bag_names])
                inputs += [packed.values, packed.bag_offsets]
            out.append(fn(*inputs, *([dense] if dense is not None else [])).float().cpu())
    probs = torch.cat(out) if out else torch.empty(0, test.num_tasks)
    return probs, test, splits, list(meta.get("task_names", test.task_names))


def cmd_predict(args: argparse.Namespace) -> int:
    if Path(args.out).suffix.lower() not in OUTPUT_FORMATS:
        raise UsageError(f"{args.out}: the predictions file must end in .csv, .parquet or .pq")
    if (args.checkpoint is None) == (args.model is None):
        raise UsageError("give exactly one of --checkpoint DIR (a run directory) and --model FILE.pt2 (an exported "
                         "model)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model is not None:
        probs, test, splits, task_names = _predict_exported(args)
        source = args.model
    else:
        model, config, source, test, splits = load_run_model(args.checkpoint, args.data, args.device)
        probs = predict(model, test)
        task_names = list(test.task_names)
    names = list(splits.field_names) or [f"f{i}" for i in range(test.x.shape[1])]
    try:
        write_predictions(Path(args.out), test.x, names, probs, task_names)
    except ValueError as err:
        raise UsageError(str(err)) from None
    print(f"wrote {len(test):,} rows x ({len(names)} ids + {len(task_names)} probabilities) to {args.out} "
          f"(model {source})")
    return 0
