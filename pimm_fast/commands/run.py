"""What the commands share: the run configuration (:class:`RunConfig`), the data of a run (its spec parsed
once, :class:`DataRequest`), the model a configuration names (:func:`build_model`), a run directory read
back (:func:`load_run_model`, one-process or ``train --distributed``), and the report's table and JSON.

A run is described by the options that define it (:class:`RunConfig`); they are stored in every checkpoint
and in ``config.json`` (``to_dict``), and a resumed, evaluated or predicting process rebuilds the model and
the data from them (``from_dict``). Options that only change how a process executes (threads, device,
progress, where the JSON report goes) are not part of it and may differ on ``--resume``.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..errors import UsageError
from ..train import checkpoint as ckpt
from ..train.trainer import TrainConfig


# --------------------------------------------------------------------------------------------------------
# the run configuration

@dataclass(kw_only=True)
class RunConfig:
    """The options that define a run. Keys an older checkpoint lacks take the defaults below (what such a
    run trained with); keys it has that this version does not know are ignored."""

    data: str
    samples: int
    model: str
    backbone: Optional[str] = None
    embedding: Optional[str] = None  # None / "pimm": pimm_fast's tables; "torchrec"
    embedding_optimizer: str
    embedding_lr: Optional[float] = None
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    dropout: float = 0.0
    embed_dim: int
    tower_dims: Optional[tuple[int, ...]] = None
    alpha: float
    step: float
    floor: float
    per_step_curriculum: bool = False
    backend: str
    seed: int
    patience: Optional[int] = None
    monitor: str = "last"
    lr_schedule: str = "none"
    lr_gamma: float = 0.5
    lr_step_epochs: int = 1
    checkpoint_every: int = 0
    distributed: Optional[dict] = field(default=None)  # train --distributed: processes, sharding, plan

    def __post_init__(self):
        if self.tower_dims is not None:
            self.tower_dims = tuple(self.tower_dims)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **changes) -> "RunConfig":
        """The run the parsed options of ``pimm-fast train`` (or ``changes``) describe."""
        return cls(**{**{key: getattr(args, key) for key in RUN_KEYS if hasattr(args, key)}, **changes})

    @classmethod
    def from_dict(cls, stored: dict, source) -> "RunConfig":
        """The configuration stored in a checkpoint or config.json (``source`` names it in errors)."""
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in stored and f.default is dataclasses.MISSING]
        if missing:
            raise UsageError(f"{source} holds a run configuration without {', '.join(missing)} (it was not "
                             f"written by pimm-fast train)")
        return cls(**{k: v for k, v in stored.items() if k in names})

    def to_dict(self) -> dict:
        """JSON-able, as checkpoints and config.json store it (``distributed`` only for a --distributed run)."""
        out = {key: getattr(self, key) for key in RUN_KEYS}
        if self.tower_dims is not None:
            out["tower_dims"] = list(self.tower_dims)
        if self.distributed is not None:
            out["distributed"] = self.distributed
        return out

    def train_config(self, progress: bool) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                           seed=self.seed, per_step_curriculum=self.per_step_curriculum, progress=progress,
                           patience=self.patience, monitor=self.monitor, lr_schedule=self.lr_schedule,
                           lr_gamma=self.lr_gamma, lr_step_epochs=self.lr_step_epochs,
                           checkpoint_every=self.checkpoint_every)


# the options that define a run, in the order checkpoints store them
RUN_KEYS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name != "distributed")


# --------------------------------------------------------------------------------------------------------
# data

@dataclass(frozen=True)
class DataRequest:
    """A data spec parsed once, with the samples and seed a run gives it: checked without reading data
    (:meth:`check`), then loaded (:meth:`load`)."""

    spec: str
    kind: str
    arg: str
    options: dict  # from the spec
    given: dict  # samples / seed from the run's options, where the spec leaves them out

    @classmethod
    def parse(cls, spec: str, samples: int, seed: int) -> "DataRequest":
        from ..data.spec import accepts, parse_spec

        try:
            kind, arg, options = parse_spec(spec)
        except ValueError as err:
            raise UsageError(str(err)) from None
        given = {}
        if kind == "synthetic" and "samples" not in options:
            given["samples"] = samples
        if "seed" not in options and accepts(kind, "seed"):  # rechub-csv has fixed splits: no seed
            given["seed"] = seed
        return cls(spec, kind, arg, options, given)

    def check(self) -> None:
        """The spec's kind, options, their values and that its files exist; no data read."""
        from ..data.spec import _merge, _sources

        try:
            opts = _merge(self.kind, self.spec, self.options, self.given)
            if self.kind == "csv" and "labels" not in opts:
                raise UsageError(f"data spec {self.spec!r}: name the label columns in funnel order with --labels "
                                 f"(e.g. --labels click,purchase)")
            if self.kind != "synthetic":
                _sources(self.kind, self.arg, opts)
        except (ValueError, FileNotFoundError, NotADirectoryError) as err:
            raise UsageError(str(err)) from None

    def load(self, quiet: bool = False, vocabulary=None):
        """The splits (train, valid, test); unreadable data raise UsageError with the reason. The drop report
        (every dropped or altered row, by reason and split) is printed (unless ``quiet``: compare's workers
        load what the parent has loaded and reported) and kept in ``train.meta['report']``. ``vocabulary``: a
        trained model's, which encodes the files instead of one built from their training split (synthetic
        data are generated already coded: it is not passed there)."""
        from ..data import DataFormatError, load

        log = (lambda msg: None) if quiet else (lambda msg: print(msg, flush=True))
        extra = {"vocabulary": vocabulary} if vocabulary is not None and self.kind != "synthetic" else {}
        try:
            splits = load(self.spec, log=log, parsed=(self.kind, self.arg, self.options), **self.given, **extra)
        except (ValueError, FileNotFoundError, NotADirectoryError, ImportError, DataFormatError) as err:
            raise UsageError(str(err)) from None
        for line in splits.report_lines():
            log(f"data: {line}")
        splits.train.meta["report"] = splits.report
        return splits

    def typed_id_fields(self, vocabulary) -> tuple[set, set]:
        """(integer, float) fields: whose ids are integers in these data (every field of raw Ali-CCP, the
        integer columns of Parquet files) or floats (Parquet float columns), which a run saved without its
        vocabulary numbered otherwise (:meth:`pimm_fast.data.Vocabulary.change_from_unsaved`)."""
        if self.kind == "aliccp-raw":
            return set(vocabulary.field_names), set()
        if self.kind != "csv":
            return set(), set()
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ..data.spec import _sources

        integer, floating = set(), set()
        for path in _sources(self.kind, self.arg, self.options):
            if path.suffix.lower() in (".parquet", ".pq"):
                for f in pq.read_schema(path):
                    if pa.types.is_integer(f.type):
                        integer.add(f.name)
                    elif pa.types.is_floating(f.type):
                        floating.add(f.name)
        names = set(vocabulary.field_names)
        return integer & names, floating & names

    def check_unsaved_encoding(self, splits, source) -> None:
        """``source`` (a run or package) holds no vocabulary, so ``splits`` were numbered from the data by this
        pimm_fast: refuse when that numbering is not the one ``source`` was trained with."""
        rebuilt = splits.vocabulary
        why = None if rebuilt is None else rebuilt.change_from_unsaved(*self.typed_id_fields(rebuilt))
        if why is not None:
            raise UsageError(f"{source} was saved without its vocabulary (before pimm_fast kept one), and the data "
                             f"{self.spec} are numbered otherwise now ({why}): its embeddings would be read with other "
                             f"ids' codes; retrain it (runs save their vocabulary now)")


def load_data(spec: str, samples: int, seed: int, quiet: bool = False):
    """The splits of a data spec (:meth:`DataRequest.load`)."""
    return DataRequest.parse(spec, samples, seed).load(quiet=quiet)


def check_validation(config: RunConfig, valid, task_names) -> None:
    """--patience and --monitor against the loaded data (train and train --distributed)."""
    from ..train.trainer import check_monitor

    if config.patience is not None and valid is None:
        raise UsageError("--patience needs a validation split; the data has none (valid_fraction=0)")
    try:
        check_monitor(config.monitor, task_names)
    except ValueError as err:
        raise UsageError(f"--monitor: {err}") from None


def check_output_path(path: Optional[Path], option: str = "--output") -> None:
    """Fail before any work if ``path`` cannot be written: a directory, an existing read-only file, or a
    place where no file can be created. The nearest existing folder is probed by creating (and at once
    removing) a temporary file in it: permission bits say nothing about /proc, read-only mounts or root."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory; give a file name (e.g. {path / ckpt.RESULTS})")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {path} exists and is not writable")
    parent = path.parent.resolve() if str(path.parent) else Path.cwd()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: {parent} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise UsageError(f"{option} {path}: cannot create files in {parent} ({err.strerror or err})") from None


def check_unused_options(given: dict, values: argparse.Namespace, models: Sequence[str]) -> None:
    """Options typed on the command line (``given``) that the run would ignore are refused, so that nothing
    recorded in config.json was silently without effect. ``values``: every option's value; ``models``: the
    models the command trains."""
    def typed(*dests: str) -> list[str]:
        return ["--" + d.replace("_", "-") for d in dests if d in given]

    fused_table = values.embedding_optimizer != "dense" or getattr(values, "embedding", None) == "torchrec" \
        or getattr(values, "distributed", False)  # TorchRec always fuses the table's optimizer
    if typed("embedding_lr") and not fused_table:
        raise UsageError("--embedding-lr sets the fused table optimizer's lr; with --embedding-optimizer dense the "
                         "table trains in the dense Adam at --lr: leave --embedding-lr out")
    schedule = typed("lr_gamma", "lr_step_epochs")
    if schedule and values.lr_schedule != "step":
        raise UsageError(f"{'/'.join(schedule)} appl{'y' if len(schedule) > 1 else 'ies'} to --lr-schedule step; "
                         f"the schedule is {values.lr_schedule}")
    curriculum = typed("alpha", "step", "floor", "per_step_curriculum")
    if curriculum and "pimm" not in models:
        raise UsageError(f"{'/'.join(curriculum)} set{'s' if len(curriculum) == 1 else ''} PIMM's curriculum; "
                         f"{', '.join(models)} ha{'s' if len(models) == 1 else 've'} none")
    if typed("lr") and getattr(values, "lr_sweep", None):
        raise UsageError("--lr with --lr-sweep: the sweep picks each model's lr on validation; give one of them")


# --------------------------------------------------------------------------------------------------------
# the model

def fused_optimizer_name(name: str, device: torch.device, chosen: bool) -> str:
    """The TorchRec table optimizer: ``name`` when it was chosen (given, or picked for this device) and is
    not "dense"; else (and for "dense": the table trained by the dense Adam, which TorchRec does not do) lazy
    Adam on GPU and row-wise Adagrad on CPU, where FBGEMM fuses no Adam. A model rebuilt to be scored
    (``chosen=False``) takes this device's default: its optimizer does not matter and may not exist here."""
    if name != "dense" and (chosen or device.type == "cuda"):
        return name
    return "adam" if device.type == "cuda" else "rowwise_adagrad"


def torchrec_embedding(config: RunConfig, data, device: str, sharded: bool, training: bool):
    """The TorchRecEmbedding of --embedding torchrec / --distributed over ``data``'s fields."""
    from ..distributed import torchrec_error

    error = torchrec_error()
    if error is not None:
        raise UsageError(error)
    from ..distributed.embedding import TorchRecEmbedding

    pooling = ["sum"] * len(data.field_dims) + ["mean"] * len(data.bag_names)
    device = torch.device(device)
    optimizer = fused_optimizer_name(config.embedding_optimizer, device, chosen=training)
    try:
        return TorchRecEmbedding(data.model_field_dims, config.embed_dim, optimizer=optimizer, pooling=pooling,
                                 lr=config.embedding_lr if config.embedding_lr is not None else config.lr,
                                 seed=config.seed, sharded=sharded, device="cpu" if sharded else device)
    except ValueError as err:
        raise UsageError(str(err)) from None


def build_model(config: RunConfig, data, device: str = "cpu", sharded: bool = False, training: bool = False):
    """The model ``config`` names over ``data``'s fields (a TorchRec table is built on ``device``, or sharded
    later with ``sharded``), with the fused embedding if asked for; on the CPU, not moved."""
    import pimm_fast
    from ..models import build_model as by_name

    field_dims = data.model_field_dims  # single-valued fields, then multi-valued ones (mean-pooled bags)
    pooling = ["sum"] * len(data.field_dims) + ["mean"] * len(data.bag_names)
    kwargs = {"embed_dim": config.embed_dim, "backend": config.backend, "task_names": data.task_names}
    if data.dense is not None:
        kwargs.update(num_dense=data.num_dense, dense_names=data.dense_names)
    if config.tower_dims is not None:
        kwargs["tower_dims"] = config.tower_dims
    if config.dropout:
        kwargs["dropout"] = config.dropout
    if config.embedding == "torchrec" or sharded:
        kwargs["embedding"] = torchrec_embedding(config, data, device, sharded=sharded, training=training)
    elif config.embedding_optimizer != "dense":
        kwargs["embedding"] = pimm_fast.FusedEmbedding(
            field_dims, config.embed_dim, optimizer=config.embedding_optimizer, pooling=pooling,
            lr=config.embedding_lr if config.embedding_lr is not None else config.lr, backend=config.backend)
    elif data.bags:
        kwargs["embedding"] = pimm_fast.FieldEmbedding(field_dims, config.embed_dim, backend=config.backend,
                                                       pooling=pooling)
    name = config.model.strip().lower().replace("-", "_")
    if name == "pimm":
        kwargs["curriculum"] = pimm_fast.Curriculum(config.alpha, config.step, config.floor)
        if config.backbone is not None:
            kwargs["backbone"] = config.backbone
    elif config.backbone is not None:
        raise UsageError("--backbone applies to --model pimm only")
    try:
        model = by_name(name, field_dims, num_tasks=data.num_tasks, **kwargs)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if model.dense_input is not None:  # standardisation fitted on the training split only
        model.dense_input.fit(data.dense)
    return model


def build(config: RunConfig, data, device: str, training: bool = False):
    """The model ``config`` names, over ``data``'s fields, on ``device``."""
    return build_model(config, data, device, training=training).to(device)


# --------------------------------------------------------------------------------------------------------
# a run directory read back (evaluate, predict, export)

@dataclass
class SavedRun:
    """A run directory (or .pt file) opened without its data: the configuration, the weights' path, the
    checkpoint's payload (None for ``train --distributed``, whose weights are sharded), its vocabulary."""

    config: RunConfig
    path: Path
    payload: Optional[dict]
    vocabulary: object  # pimm_fast.data.Vocabulary, or None for a run trained before vocabularies were saved

    @property
    def model_info(self) -> dict:
        return (self.payload or {}).get("model_info", {})


def open_run(directory: Path) -> SavedRun:
    """:class:`SavedRun` of a run directory: ``best.pt`` (else ``checkpoint.pt``), or a ``train --distributed
    --out`` directory (config.json + sharded weights, read without TorchRec), or a .pt file."""
    import json

    from ..distributed.checkpoint import is_run_directory, is_sharded_checkpoint, run_weights

    directory = Path(directory)
    if is_run_directory(directory):  # train --distributed --out: sharded weights
        try:
            stored = json.loads((directory / ckpt.CONFIG).read_text())
        except (OSError, ValueError) as err:
            raise UsageError(f"{directory / ckpt.CONFIG} is not a readable run configuration ({err})") from None
        config = RunConfig.from_dict(stored, directory / ckpt.CONFIG)
        return SavedRun(config, run_weights(directory), None, run_vocabulary(directory, None, directory))
    if is_sharded_checkpoint(directory):
        raise UsageError(f"{directory} is a --sharded-checkpoint directory, which holds no run configuration; "
                         f"evaluate, predict and export read the run directory of train --distributed --out DIR")
    try:
        path = ckpt.model_checkpoint(directory)
        payload = ckpt.load(path)
    except ckpt.CheckpointError as err:
        raise UsageError(str(err)) from None
    if not payload.get("config"):
        raise UsageError(f"{path} holds no run configuration (it was not written by pimm-fast train)")
    return SavedRun(RunConfig.from_dict(payload["config"], path), path, payload,
                    run_vocabulary(directory, payload, path))


def run_vocabulary(directory: Path, payload: Optional[dict], where: Path):
    """The :class:`~pimm_fast.data.Vocabulary` a run was trained with (its checkpoint's, else the run
    directory's ``vocabulary.txt``), or None for a run trained before vocabularies were saved."""
    from ..data import DataFormatError, Vocabulary

    try:
        data = ckpt.run_vocabulary(directory, payload)
        return None if data is None else Vocabulary.from_bytes(data, where=f"the vocabulary of {where}")
    except (ckpt.CheckpointError, DataFormatError) as err:
        raise UsageError(str(err)) from None


def run_model(run: SavedRun, data, device: str, spec: Optional[str] = None):
    """The run's model over ``data``'s fields with its trained weights, on ``device``."""
    config = run.config
    where = f"the data {spec or config.data}"
    if run.payload is None:  # train --distributed: pimm_fast's FieldEmbedding holds the tables, read whole
        from ..distributed.checkpoint import read_sharded_weights

        local = dataclasses.replace(config, embedding=None, embedding_optimizer="dense", distributed=None)
        torch.manual_seed(config.seed)
        model = build(local, data, device)
        state = read_sharded_weights(run.path, config.embed_dim, len(data.model_field_dims))
        if tuple(state["embedding.weight"].shape) != tuple(model.embedding.weight.shape):
            raise UsageError(f"{where} does not fit the model in {run.path}: its tables have "
                             f"{state['embedding.weight'].shape[0]} rows in all, the data's fields "
                             f"{sum(data.model_field_dims)}")
    else:
        expected = run.model_info
        if list(data.model_field_dims) != list(expected.get("field_dims", data.model_field_dims)) or \
                list(data.task_names) != list(expected.get("task_names", data.task_names)):
            raise UsageError(f"{where} does not fit the model in {run.path}: fields {list(data.model_field_dims)} / "
                             f"tasks {list(data.task_names)}, the model has {expected.get('field_dims')} / "
                             f"{expected.get('task_names')}")
        trained_dense = expected.get("dense_names")
        if trained_dense is None and not any(k.startswith("dense_input.") for k in run.payload["model"]):
            trained_dense = []  # a checkpoint from before model_info named them: a model without dense input
        if trained_dense is not None and list(data.dense_names) != list(trained_dense):
            raise UsageError(
                f"{where} has the dense columns {list(data.dense_names)}, the model in {run.path} was trained with "
                f"{list(trained_dense)}" +
                (" (a run trained without dense columns, e.g. on rechub-csv before it read its D* columns, "
                 "evaluates with ?dense=none)" if not trained_dense else ""))
        torch.manual_seed(config.seed)
        model = build(config, data, device)
        state = run.payload["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise UsageError(f"{run.path} does not fit the model its configuration names: "
                         f"{str(err).strip().splitlines()[0][:200]}") from None
    return model.to(device)


def vocabulary_data(vocabulary):
    """A one-row stand-in for a run's data, made from its vocabulary alone (fields, sizes, tasks, dense
    columns): enough to build the model, whose trained weights and dense statistics are then loaded."""
    from ..data import CascadeData

    single = vocabulary.single_fields
    if vocabulary.bag_fields:  # a model with bags is rebuilt from its data (raw Ali-CCP)
        raise UsageError(f"the model has multi-valued fields {[f.name for f in vocabulary.bag_fields]}: score a "
                         f"data spec (--data aliccp-raw:DIR) instead of a file")
    K = len(vocabulary.dense_names)
    return CascadeData(x=torch.zeros(1, len(single), dtype=torch.int64), y=torch.zeros(1, len(vocabulary.task_names)),
                       field_dims=tuple(f.size for f in single), task_names=tuple(vocabulary.task_names),
                       dense=torch.zeros(1, K) if K else None, dense_names=tuple(vocabulary.dense_names))


def load_run_model(directory: Path, spec: Optional[str], device: str):
    """(model, config, weights path, test split, splits) of a run directory (or .pt file) evaluated on
    ``spec`` (default: the run's own data), encoded with the run's vocabulary (never one rebuilt from the data
    given, so codes mean what they meant in training and columns are matched by name)."""
    run = open_run(Path(directory))
    config = run.config
    request = DataRequest.parse(spec or config.data, config.samples, config.seed)
    splits = request.load(vocabulary=run.vocabulary)
    if run.vocabulary is None:
        request.check_unsaved_encoding(splits, run.path)
    model = run_model(run, splits.test, device, spec)
    return model, config, run.path, splits.test, splits


# --------------------------------------------------------------------------------------------------------
# reports

def fmt(value, width: int, digits: int = 4) -> str:
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
        lines.append(f"{name:<18}{fmt(get('auc'), 8)}{fmt(get('oracle_auc'), 12)}{fmt(get('conditional_auc'), 11)}"
                     f"{fmt(get('logloss'), 10)}{fmt(get('ece'), 9)}{fmt(get('funnel_violation'), 11, 3)}"
                     f"{result['positives'][t]:>11d}")
    return "\n".join(lines)


def report_run(config: RunConfig, backend: str, history: list, early: dict, result: dict, train, started: float,
               run_dir: Optional[Path], output: Optional[Path], **extra) -> None:
    """The end of a training run (train, train --distributed): the early-stopping line, the test table and the
    time; the report (``extra`` added) in ``run_dir``/results.json and ``output``."""
    import time

    from ..train.trainer import early_stopping_summary

    summary = early_stopping_summary(early, len(history), config.monitor)
    if summary is not None:
        print(summary, flush=True)
    print("\nheld-out test set\n" + format_table(result))
    print(f"\ntotal {time.perf_counter() - started:.1f} s")
    payload = jsonable({"config": config.to_dict(), "backend": backend, "history": history, "early_stopping": early,
                        "test": result, "data": {"report": train.meta.get("report", {}),
                                                 "dense_names": list(train.dense_names)}, **extra})
    if run_dir is not None:
        ckpt.save_json(Path(run_dir) / ckpt.RESULTS, payload)
    if output is not None:
        ckpt.save_json(Path(output), payload)


def jsonable(value):
    """NaN and infinities become None (JSON has no NaN); tuples become lists; paths strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return jsonable(value.tolist())
    return value
