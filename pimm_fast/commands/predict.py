"""``pimm-fast evaluate`` (metrics of a trained run on every row of a labelled file, or on a data spec's test
split) and ``pimm-fast predict`` (probabilities of every task for every row, from a run directory or an exported
``.pt2``)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..errors import UsageError
from ..train import checkpoint as ckpt
from ..metrics import cascade_metrics
from ..models.base import check_finite
from ..train.trainer import evaluate, predict
from .run import DataRequest, check_output_path, format_table, jsonable, load_run_model

OUTPUT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def cmd_evaluate(args: argparse.Namespace) -> int:
    check_output_path(args.output)
    if (args.checkpoint is None) == (args.model is None):
        raise UsageError("give exactly one of --checkpoint DIR (a run directory) and --model FILE.pt2 (an exported "
                         "model)")
    if args.threads:
        torch.set_num_threads(args.threads)
    path = scoring_file(args.data)
    if path is not None:
        return _evaluate_file(args, path)
    if args.model is not None:
        probs, test, _, task_names = _predict_exported(args)  # (it needs --data)
        check_finite(probs)
        result = cascade_metrics(probs, test.y, task_names, oracle=test.probs)
        name, source, data = "the package", args.model, args.data
    else:
        model, config, source, test, _ = load_run_model(args.checkpoint, args.data, args.device)
        result = evaluate(model, test)
        name, data = type(model).__name__, args.data or config.data
    print(f"{name} from {source} on the test split of {data} ({len(test):,} rows)\n" + format_table(result))
    _write_evaluation(args, source, data, result)
    return 0


def _write_evaluation(args: argparse.Namespace, source: Path, data: str, result: dict, **extra) -> None:
    """``--output``: the metrics as JSON, with what was evaluated (``model`` or ``checkpoint``) on which data."""
    if args.output is not None:
        key = "model" if args.model is not None else "checkpoint"
        ckpt.save_json(Path(args.output), jsonable({key: str(source), "data": data, **extra, "test": result}))


def _evaluate_file(args: argparse.Namespace, path: Path) -> int:
    """Metrics on every row of one labelled file (no split), raw values encoded with the model's vocabulary
    (the run's, or the package's); rows whose labels break the cascade are treated by the run's cascade
    policy ('drop' for a package, which does not record it), counted."""
    from ..data import DataFormatError
    from ..data.cascade import apply_policy, check_labels

    model = _file_model(args, "evaluate")
    policy = model.policy
    table = read_scoring_file(path, model.vocabulary, [], model.source, require_labels=True)
    tasks = list(model.vocabulary.task_names)
    stats: dict = {}
    try:
        check_labels(table.labels, tasks, str(path), where=table.where)
        keep = apply_policy(table.labels, policy, tasks, str(path), stats, where=table.where)
    except DataFormatError as err:
        raise UsageError(str(err)) from None
    x, dense, y = table.x, table.dense, table.labels
    if keep is not None:
        x, y, dense = x[keep], y[keep], None if dense is None else dense[keep]
    if len(y) == 0:
        raise UsageError(f"{path}: no rows to evaluate ({table.rows:,} in the file, "
                         f"{stats.get('cascade_dropped', 0):,} dropped: labels break the cascade)")
    probs = model.score(x, dense)
    check_finite(probs)
    result = cascade_metrics(probs, torch.from_numpy(y), tasks)
    dropped = stats.get("cascade_dropped", 0)
    whose = "a package's default" if args.model is not None else "the run's"
    note = f"; {dropped:,} dropped: labels break the cascade ({whose} cascade policy '{policy}')" if dropped else ""
    print(f"{path}: {table.rows:,} rows{note}; {unseen_line(table)}")
    print(f"{model.name} from {model.source} on every row of {path} ({len(y):,} rows)\n" + format_table(result))
    _write_evaluation(args, model.source, args.data, result, rows=table.rows, cascade_dropped=dropped, policy=policy)
    return 0


def write_predictions(path: Path, columns: dict, probs: torch.Tensor, task_names: Sequence[str]) -> None:
    """The passed-through ``columns`` (name -> array, one value per row) then one ``p_<task>`` column per task,
    one row per sample in order; CSV or Parquet by the file's extension; written to a temporary file and
    renamed (never half-written)."""
    try:
        import pyarrow as pa
    except ImportError:
        raise ValueError("writing predictions needs pyarrow (pip install pyarrow)") from None
    kind = OUTPUT_FORMATS.get(Path(path).suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: the predictions file must end in .csv, .parquet or .pq")
    out = dict(columns)
    for t, name in enumerate(task_names):
        out[f"p_{name}"] = probs[:, t].numpy()
    if len(out) != len(columns) + len(task_names):
        raise ValueError(f"column names collide: {list(columns)} and p_<task> for tasks {list(task_names)}; "
                         f"leave the colliding column out with --keep-columns")
    table = pa.table(out)
    if kind == "csv":
        import pyarrow.csv as pacsv

        ckpt.atomic_write(Path(path), lambda f: pacsv.write_csv(table, f))
    else:
        import pyarrow.parquet as pq

        ckpt.atomic_write(Path(path), lambda f: pq.write_table(table, f))


def scoring_file(data: Optional[str]) -> Optional[Path]:
    """The file ``--data`` names when it is one CSV or Parquet file (``FILE`` or ``csv:FILE``, no options):
    predict scores and evaluate measures its every row. None for a data spec (a directory, a source kind,
    options), whose test split is used."""
    if not data:
        return None
    text = data[len("csv:"):] if data.startswith("csv:") else data
    if "?" in text or (":" in text.split("/")[0] and not data.startswith("csv:")):
        return None  # options, or another source kind (synthetic:..., aitm-csv:...)
    path = Path(text)
    if path.is_file():
        return path
    if data.startswith("csv:") or path.suffix.lower() in (".csv", ".parquet", ".pq"):
        raise UsageError(f"--data {data}: no such file")
    return None


def read_scoring_file(path: Path, vocabulary, keep_columns, source, require_labels: bool = False):
    """:func:`pimm_fast.data.read_for_scoring`, with user errors as UsageError; a model without a vocabulary
    (trained or exported before vocabularies were saved) cannot encode raw values."""
    from ..data import DataFormatError, read_for_scoring

    if vocabulary is None:
        raise UsageError(f"{source} holds no vocabulary (it was trained or exported before pimm_fast saved one), "
                         f"so raw values cannot be encoded; retrain it, or score a data spec (--data SPEC) whose "
                         f"encoding matches the model")
    try:
        return read_for_scoring(path, vocabulary, keep_columns=keep_columns, require_labels=require_labels)
    except (DataFormatError, FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None


def unseen_line(table) -> str:
    """How many cells of each field got the unseen code (values the training data did not have)."""
    counted = {name: n for name, n in table.unseen.items() if n}
    if not counted:
        return "every value was seen in training"
    return "values unseen in training (scored with the unseen code 0): " + ", ".join(
        f"{name} {n:,} of {table.rows:,}" for name, n in counted.items())


def score_batches(forward, x, dense, num_tasks: int, batch_size: int = 16384) -> torch.Tensor:
    """``forward(ids, dense)`` over rows in batches, probabilities [N, T] float32 on the CPU."""
    ids = torch.from_numpy(x).long()
    d = None if dense is None else torch.from_numpy(dense)
    out = []
    with torch.no_grad():
        for start in range(0, len(ids), batch_size):
            rows = slice(start, start + batch_size)
            out.append(forward(ids[rows], None if d is None else d[rows]).float().cpu())
    return torch.cat(out) if out else torch.empty(0, num_tasks)


@dataclass
class FileModel:
    """What scores the rows of a file: the vocabulary that encodes them, ``score(x, dense)`` -> probabilities
    [N, T], and for messages the source (run or package), the model's name, its task names and the cascade
    policy its rows are measured under."""

    vocabulary: object
    score: Callable
    source: Path
    name: str
    task_names: list
    policy: str


def _file_model(args: argparse.Namespace, verb: str) -> FileModel:
    """The :class:`FileModel` of ``--model FILE.pt2`` (the package's vocabulary; cascade policy 'drop', as a
    package does not record its run's) or ``--checkpoint DIR`` (the run's vocabulary and policy, the model
    rebuilt from the vocabulary alone)."""
    if args.model is not None:
        fn = _load_package(args.model)
        if getattr(fn, "num_bag_fields", 0):
            raise UsageError(f"{args.model} has multi-valued fields: {verb} a data spec, not a file")
        tasks = list(fn.task_names)

        def score_package(x, dense):
            return score_batches(lambda ids, d: fn(ids, d) if d is not None else fn(ids), x, dense, len(tasks))
        return FileModel(fn.vocabulary, score_package, args.model, "the package", tasks, "drop")
    from .run import open_run, run_model, vocabulary_data

    run = open_run(Path(args.checkpoint))
    tasks = list(run.vocabulary.task_names) if run.vocabulary is not None else []
    policy = DataRequest.parse(run.config.data, run.config.samples, run.config.seed).options.get("policy", "drop")

    def score(x, dense):
        model = run_model(run, vocabulary_data(run.vocabulary), args.device).eval()
        at = next(model.parameters()).device
        return score_batches(lambda ids, d: model(ids.to(at), **({} if d is None else {"dense": d.to(at)})),
                             x, dense, len(tasks))
    return FileModel(run.vocabulary, score, run.path, run.model_info.get("class") or run.config.model, tasks,
                     policy)


def _load_package(path: Path):
    """``pimm_fast.export.load(path)`` with its errors as UsageError."""
    try:
        from .. import export
    except ImportError as err:
        raise UsageError(f"--model needs pimm_fast.export, which this installation lacks ({err})") from None
    try:
        return export.load(path)
    except export.PackageError as err:
        raise UsageError(str(err)) from None


def _predict_exported(args: argparse.Namespace):
    """Probabilities of a ``.pt2`` package (``pimm_fast.export.load``) on the test split of ``--data``
    (with bag fields: ids, bag_values, bag_offsets, as ``pimm_fast.export.ExportedBagModel`` takes them)."""
    from ..data import Batcher
    from ..modules import JaggedIds

    if not args.data:
        raise UsageError("--model FILE.pt2 needs --data (a file, or a data spec: the rows to score)")
    fn = _load_package(args.model)
    meta = getattr(fn, "metadata", {})
    # encoded with the package's vocabulary where it has one (columns matched by name, training codes)
    request = DataRequest.parse(args.data, 300_000, 0)
    splits = request.load(vocabulary=getattr(fn, "vocabulary", None))
    if getattr(fn, "vocabulary", None) is None:
        request.check_unsaved_encoding(splits, args.model)
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
    check_output_path(args.out, "--out")
    if args.threads:
        torch.set_num_threads(args.threads)
    path = scoring_file(args.data)
    if path is None and args.keep_columns is not None:
        raise UsageError("--keep-columns applies to scoring a file (--data FILE.csv|.parquet), not a data spec's "
                         "test split")
    if path is not None:
        return _predict_file(args, path)
    if args.model is not None:
        probs, test, splits, task_names = _predict_exported(args)
        source = args.model
    else:
        model, config, source, test, splits = load_run_model(args.checkpoint, args.data, args.device)
        probs = predict(model, test)
        task_names = list(test.task_names)
    names = list(splits.field_names) or [f"f{i}" for i in range(test.x.shape[1])]
    try:
        write_predictions(Path(args.out), {name: test.x[:, f].numpy() for f, name in enumerate(names)}, probs,
                          task_names)
    except ValueError as err:
        raise UsageError(str(err)) from None
    print(f"wrote {len(test):,} rows x ({len(names)} ids + {len(task_names)} probabilities) to {args.out} "
          f"(model {source})")
    return 0


def _predict_file(args: argparse.Namespace, path: Path) -> int:
    """Every row of one file, in order, raw values encoded with the model's vocabulary (the run's, or the
    package's), the key columns passed through."""
    model = _file_model(args, "score")
    source, task_names = model.source, model.task_names
    table = read_scoring_file(path, model.vocabulary, args.keep_columns, source)
    probs = model.score(table.x, table.dense)
    try:
        write_predictions(Path(args.out), table.keys, probs, task_names)
    except ValueError as err:
        raise UsageError(str(err)) from None
    print(f"{path}: {table.rows:,} rows; {unseen_line(table)}")
    print(f"wrote {table.rows:,} rows x ({len(table.keys)} kept columns + {len(task_names)} probabilities) to "
          f"{args.out} (model {source})")
    return 0
