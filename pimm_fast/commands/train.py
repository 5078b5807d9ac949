"""The bodies of ``pimm-fast train``, ``evaluate`` and ``predict`` (``compare`` is in :mod:`.experiments`);
``pimm_fast.cli`` only declares the options and dispatches here.

A run is described by a JSON-able dict of the options that define it (``RUN_KEYS``); it is stored in
every checkpoint and in ``config.json``, and a resumed, evaluated or predicting process rebuilds the model
and the data from it. Options that only change how a process executes (threads, device, progress, where
the JSON report goes) are not part of it and may differ on ``--resume``.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import NoReturn, Optional, Sequence

import torch

from ..errors import UsageError
from . import checkpoint as ckpt
from .trainer import TrainConfig, Trainer, check_monitor, evaluate, predict

# options that define a run (stored in checkpoints; rebuilt on --resume, evaluate, predict)
RUN_KEYS = ("data", "samples", "model", "backbone", "embedding", "embedding_optimizer", "embedding_lr", "epochs", "batch_size",
            "lr", "weight_decay", "dropout", "embed_dim", "tower_dims", "alpha", "step", "floor",
            "per_step_curriculum", "backend", "seed", "patience", "monitor", "lr_schedule", "lr_gamma",
            "lr_step_epochs", "checkpoint_every")


def fail(message: str) -> NoReturn:
    """A user error: ``pimm_fast.cli.main`` prints it as one line on stderr and returns 2, no traceback."""
    raise UsageError(message)


def run_config(args: argparse.Namespace) -> dict:
    config = {key: getattr(args, key) for key in RUN_KEYS if hasattr(args, key)}
    if config.get("tower_dims") is not None:
        config["tower_dims"] = list(config["tower_dims"])
    return config


def train_config(config: dict, progress: bool) -> TrainConfig:
    return TrainConfig(epochs=config["epochs"], batch_size=config["batch_size"], lr=config["lr"],
                       weight_decay=config.get("weight_decay", 0.0), seed=config["seed"],
                       per_step_curriculum=config.get("per_step_curriculum", False), progress=progress,
                       patience=config.get("patience"), monitor=config.get("monitor", "last"),
                       lr_schedule=config.get("lr_schedule", "none"), lr_gamma=config.get("lr_gamma", 0.5),
                       lr_step_epochs=config.get("lr_step_epochs", 1),
                       checkpoint_every=config.get("checkpoint_every", 0))


def build(config: dict, data, device: str):
    """The model a run config names, over ``data``'s fields, on ``device``."""
    from ..cli import build_model

    args = argparse.Namespace(**{**config, "device": device})  # a TorchRec table is built on its device
    if args.tower_dims is not None:
        args.tower_dims = tuple(args.tower_dims)
    return build_model(args, data).to(device)


def load_splits(spec: str, samples: int, seed: int, quiet: bool = False):
    from ..cli import load_data

    return load_data(spec, samples, seed, quiet=quiet)


def _fmt(value, width: int, digits: int = 4) -> str:
    text = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
    return f"{text:>{width}}"


def format_table(result: dict) -> str:
    """Per-task metrics as a text table (AUC, oracle AUC, AUC among the previous stage's positives, log loss,
    expected calibration error, share of samples predicted above the previous stage, positives)."""
    header = (f"{'task':<18}{'AUC':>8}{'oracle AUC':>12}{'cond. AUC':>11}{'logloss':>10}{'ECE':>9}"
              f"{'yhat>prev':>11}{'positives':>11}")
    lines = [header, "-" * len(header)]
    T = len(result["tasks"])
    for t, name in enumerate(result["tasks"]):
        get = lambda key: result.get(key, [None] * T)[t]  # noqa: E731
        lines.append(f"{name:<18}{_fmt(get('auc'), 8)}{_fmt(get('oracle_auc'), 12)}{_fmt(get('conditional_auc'), 11)}"
                     f"{_fmt(get('logloss'), 10)}{_fmt(get('ece'), 9)}{_fmt(get('funnel_violation'), 11, 3)}"
                     f"{result['positives'][t]:>11d}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# train

def _explicit_options(argv: Sequence[str]) -> dict:
    """The train options present on the command line (value as parsed), whatever their defaults."""
    from ..cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    for action in sub._actions:
        if action.dest not in ("help",):
            action.default = argparse.SUPPRESS
    namespace = parser.parse_args(list(argv))
    return {k: v for k, v in vars(namespace).items() if k in RUN_KEYS}


def _resume_config(args: argparse.Namespace, payload: dict) -> dict:
    stored = dict(payload["config"])
    given = _explicit_options(getattr(args, "_argv", None) or [])
    for key, value in given.items():
        if key == "tower_dims" and value is not None:
            value = list(value)
        if key == "data" and value != stored.get("data"):
            value = value.replace(argparse.SUPPRESS, "")
            fail(f"--resume: the data ({value}) contradicts the checkpoint's {stored.get('data')!r}; "
                 f"leave the data options out to continue that run")
        if stored.get(key) != value:
            flag = "--" + key.replace("_", "-")
            fail(f"--resume: {flag} {value} contradicts the checkpoint's {stored.get(key)!r}; leave it out to "
                 f"continue the run as it was configured")
    return stored


def cmd_train(args: argparse.Namespace) -> int:
    import pimm_fast

    payload = None
    if args.resume is not None:
        out = Path(args.resume)
        if args.out is not None and Path(args.out) != out:
            fail(f"--out {args.out} with --resume {out}: a resumed run continues in its own directory")
        try:
            payload = ckpt.load(ckpt.run_checkpoint(out), kind="checkpoint")
        except ckpt.CheckpointError as err:
            fail(str(err))
        config = _resume_config(args, payload)
        for stale in out.glob(".*.tmp*"):  # what a process killed while writing left behind
            stale.unlink(missing_ok=True)
        if payload["train_state"].get("finished"):
            fail(f"the run in {out} already finished (epoch {payload['train_state']['epoch']}); nothing to resume "
                 f"(pimm-fast evaluate --checkpoint {out} prints its metrics)")
    else:
        config = run_config(args)
        out = args.out
        if out is not None and (Path(out) / ckpt.CHECKPOINT).exists():
            fail(f"{out} already holds a run ({ckpt.CHECKPOINT}); continue it with --resume {out} or choose another "
                 f"--out")
    if config.get("checkpoint_every") and out is None:
        fail("--checkpoint-every needs --out DIR (where the checkpoints go)")
    from ..runtime import configure_threads

    # --threads, else OMP_NUM_THREADS, else one thread per 8192 samples of the batch (at most one per core)
    configure_threads(args.threads, batch_size=config["batch_size"])
    device = args.device
    torch.manual_seed(config["seed"])
    started = time.perf_counter()
    splits = load_splits(config["data"], config["samples"], config["seed"])
    train, valid, test = splits.train, splits.valid, splits.test
    if config.get("patience") is not None and valid is None:
        fail("--patience needs a validation split; the data has none (valid_fraction=0)")
    try:
        check_monitor(config.get("monitor", "last"), train.task_names)
    except ValueError as err:
        fail(f"--monitor: {err}")
    model = build(config, train, device)
    backend = pimm_fast.ops.resolve_backend(config["backend"], device)
    print(f"{type(model).__name__} on {config['data']}: {len(train):,} train / "
          f"{0 if valid is None else len(valid):,} valid / {len(test):,} test impressions, "
          f"{len(train.field_dims)} fields" + (f" + {len(train.bag_names)} multi-valued" if train.bags else "") +
          (f" + {train.num_dense} dense" if train.dense is not None else "") +
          f", tasks {' -> '.join(train.task_names)}; backend {backend} on {device}, {torch.get_num_threads()} threads, "
          f"embedding optimizer {config['embedding_optimizer']}", flush=True)
    tc = train_config(config, progress=not args.no_progress)

    def report(epoch: int, record: dict) -> None:
        line = (f"epoch {epoch + 1}/{tc.epochs}: loss {record['train_loss']:.4f}, p {record.get('p', 0):.3f}, "
                f"{record['samples_per_second']:,.0f} samples/s")
        if "valid" in record:
            line += f", valid {tc.monitor} {_fmt(record['monitor'], 0)}"
        print(line, flush=True)

    try:
        trainer = Trainer(model, train, tc, valid=valid, out=out, run_config=config, on_epoch_end=report)
    except ValueError as err:
        fail(str(err))
    if payload is not None:
        try:
            trainer.load_state_dict(payload)
        except ckpt.CheckpointError as err:
            fail(str(err))
        print(f"resumed {out} at epoch {trainer.state['epoch'] + 1}, step {trainer.state['position']}", flush=True)
    elif out is not None:
        ckpt.save_json(Path(out) / ckpt.CONFIG, config)
    history = trainer.run()
    early = trainer.early
    if early["best_epoch"] is not None:
        stop = f"stopped early after epoch {len(history)}; " if early["stopped"] else ""
        print(f"{stop}best validation epoch {early['best_epoch'] + 1} ({tc.monitor} {early['best']:.4f}), restored",
              flush=True)
    result = evaluate(model, test)
    print("\nheld-out test set\n" + format_table(result))
    print(f"\ntotal {time.perf_counter() - started:.1f} s")
    report_payload = {"config": config, "backend": backend, "history": history, "early_stopping": early,
                      "test": result, "data": {"report": train.meta.get("report", {}),
                                               "dense_names": list(train.dense_names)}}
    if out is not None:
        ckpt.save_json(Path(out) / "results.json", _jsonable(report_payload))
    if args.output is not None:
        ckpt.save_json(Path(args.output), _jsonable(report_payload))
    return 0


def _jsonable(value):
    """NaN and infinities become None (JSON has no NaN); tuples become lists; paths strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    return value


# --------------------------------------------------------------------------------------------------------
# evaluate / predict

OUTPUT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def load_run_model(directory: Path, spec: Optional[str], device: str):
    """(model, config, payload path, test split) of a run directory (or .pt file) evaluated on ``spec``
    (default: the run's own data)."""
    from ..distributed import command as distributed

    if distributed.is_run_directory(directory):  # train --distributed --out: sharded weights
        return distributed.load_run_model(directory, spec, device)
    if distributed.is_sharded_checkpoint(directory):
        fail(f"{directory} is a --sharded-checkpoint directory, which holds no run configuration; evaluate, "
             f"predict and export read the run directory of train --distributed --out DIR")
    try:
        path = ckpt.model_checkpoint(Path(directory))
        payload = ckpt.load(path)
    except ckpt.CheckpointError as err:
        fail(str(err))
    config = payload["config"]
    if not config:
        fail(f"{path} holds no run configuration (it was not written by pimm-fast train)")
    splits = load_splits(spec or config["data"], config["samples"], config["seed"])
    test = splits.test
    expected = payload.get("model_info", {})
    if list(test.model_field_dims) != list(expected.get("field_dims", test.model_field_dims)) or \
            list(test.task_names) != list(expected.get("task_names", test.task_names)):
        fail(f"the data {spec} does not fit the model in {path}: fields {list(test.model_field_dims)} / tasks "
             f"{list(test.task_names)}, the model has {expected.get('field_dims')} / {expected.get('task_names')}")
    trained_dense = expected.get("dense_names")
    if trained_dense is None and not any(k.startswith("dense_input.") for k in payload["model"]):
        trained_dense = []  # a checkpoint from before model_info named them: a model without dense input
    if trained_dense is not None and list(test.dense_names) != list(trained_dense):
        fail(f"the data {spec or config['data']} has the dense columns {list(test.dense_names)}, the model in {path} "
             f"was trained with {list(trained_dense)}" +
             (" (a run trained without dense columns, e.g. on rechub-csv before it read its D* columns, "
              "evaluates with ?dense=none)" if not trained_dense else ""))
    torch.manual_seed(config["seed"])
    model = build(config, test, device)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        fail(f"{path} does not fit the model its configuration names: {str(err).splitlines()[0][:200]}")
    return model, config, path, test, splits


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    model, config, path, test, _ = load_run_model(args.checkpoint, args.data, args.device)
    result = evaluate(model, test)
    print(f"{type(model).__name__} from {path} on the test split of {args.data or config['data']} "
          f"({len(test):,} rows)\n" + format_table(result))
    if args.output is not None:
        ckpt.save_json(Path(args.output), _jsonable({"checkpoint": str(path), "data": args.data or config["data"],
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
        fail(f"--model needs pimm_fast.export, which this installation lacks ({err})")
    if not args.data:
        fail("--model FILE.pt2 needs --data SPEC (the rows to score)")
    try:
        fn = export.load(args.model)
    except export.PackageError as err:
        fail(str(err))
    meta = getattr(fn, "metadata", {})
    splits = load_splits(args.data, 300_000, 0)
    test = splits.test
    if list(meta.get("field_dims", test.model_field_dims)) != list(test.model_field_dims) or \
            int(meta.get("num_bag_fields", 0)) != len(test.bag_names):
        bags = f" ({len(test.bag_names)} of them bags)" if test.bags else ""
        fail(f"the data {args.data} does not fit {args.model}: fields {list(test.model_field_dims)}{bags}, the "
             f"package has {meta.get('field_dims')} ({meta.get('num_bag_fields', 0)} of them bags)")
    if "num_dense" in meta and int(meta["num_dense"]) != test.num_dense:  # (names: a Python-built model may lack them)
        fail(f"the data {args.data} has {test.num_dense} dense column(s) {list(test.dense_names)}, {args.model} takes "
             f"{meta['num_dense']} {list(meta.get('dense_names', []))}" +
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
        fail(f"{args.out}: the predictions file must end in .csv, .parquet or .pq")
    if (args.checkpoint is None) == (args.model is None):
        fail("give exactly one of --checkpoint DIR (a run directory) and --model FILE.pt2 (an exported model)")
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
        fail(str(err))
    print(f"wrote {len(test):,} rows x ({len(names)} ids + {len(task_names)} probabilities) to {args.out} "
          f"(model {source})")
    return 0
