"""``pimm-fast train --distributed`` (under ``torchrun --nproc_per_node N -m pimm_fast train --distributed``)
and ``--embedding torchrec`` in one process. pimm_fast/cli.py calls ``add_arguments`` and ``run``."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from ..errors import UsageError
from . import torchrec_error

SHARDING_CHOICES = ("auto", "table_wise", "row_wise")
CONFIG = "config.json"
RESULTS = "results.json"
SHARDED = "sharded"  # DIR/sharded: epoch-N/, latest, best/ (torch.distributed.checkpoint directories)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TorchRec (docs/distributed.md)")
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


def fail(message: str) -> UsageError:
    """A user error to raise: pimm_fast.cli.main prints it as one line and returns 2."""
    return UsageError(message)


def _optimizer_given(args: argparse.Namespace) -> bool:
    return any(a == "--embedding-optimizer" or a.startswith("--embedding-optimizer=") for a in getattr(args, "_argv", ()))


def fused_optimizer_name(args: argparse.Namespace, device: torch.device) -> str:
    """The TorchRec table optimizer: --embedding-optimizer when given; else (and for "dense": the table
    trained by the dense Adam, which TorchRec does not do) lazy Adam on GPU and row-wise Adagrad on CPU,
    where FBGEMM fuses no Adam."""
    if args.embedding_optimizer != "dense" and (_optimizer_given(args) or device.type == "cuda"):
        return args.embedding_optimizer
    return "adam" if device.type == "cuda" else "rowwise_adagrad"


def torchrec_embedding_from_args(args: argparse.Namespace, train, sharded: bool):
    """The TorchRecEmbedding that cli.build_model gives the model for --embedding torchrec / --distributed."""
    error = torchrec_error()
    if error is not None:
        raise fail(error)
    from .embedding import TorchRecEmbedding

    pooling = ["sum"] * len(train.field_dims) + ["mean"] * len(train.bag_names)
    device = torch.device(args.device)
    optimizer = args.embedding_optimizer = fused_optimizer_name(args, device)
    try:
        return TorchRecEmbedding(train.model_field_dims, args.embed_dim, optimizer=optimizer, pooling=pooling,
                                 lr=args.embedding_lr if args.embedding_lr is not None else args.lr,
                                 seed=args.seed, sharded=sharded, device="cpu" if sharded else device)
    except ValueError as err:
        raise fail(str(err)) from None


def check_args(args: argparse.Namespace) -> None:
    """Option combinations that make no sense, refused before any data is read. A TorchRec table on the
    CPU without an explicit --embedding-optimizer trains with row-wise Adagrad (FBGEMM has no CPU Adam)."""
    if args.distributed or getattr(args, "embedding", None) == "torchrec":
        try:
            device = torch.device(args.device)
        except RuntimeError:
            raise fail(f"--device {args.device!r} is not a device (cpu, cuda, cuda:0, ...)") from None
        if not _optimizer_given(args):
            args.embedding_optimizer = fused_optimizer_name(args, device)
    if args.distributed:
        if getattr(args, "resume", None) is not None:
            raise fail("--resume is not supported with --distributed: continue a sharded run with --resume-sharded "
                       "DIR (the run directory of --out, or a --sharded-checkpoint directory)")
        if getattr(args, "checkpoint_every", 0):
            raise fail("--checkpoint-every is not supported with --distributed: a sharded run checkpoints at every "
                       "epoch end (--out DIR or --sharded-checkpoint DIR) and --resume-sharded continues from there")
        out = getattr(args, "out", None)
        if out is not None and args.sharded_checkpoint is not None:
            raise fail(f"--out {out} keeps the sharded checkpoints in {out}/sharded: drop --sharded-checkpoint")
    if getattr(args, "embedding", None) == "torchrec" and getattr(args, "resume", None) is not None:
        raise fail("--resume with --embedding torchrec: the fused TorchRec optimizer state is not in the checkpoint, "
                   "so the run could not continue exactly; train again, or use --distributed with --resume-sharded")
    if not args.distributed:
        for name in ("sharded_checkpoint", "resume_sharded"):
            if getattr(args, name) is not None:
                raise fail(f"--{name.replace('_', '-')} needs --distributed")
        if args.sharding != "auto":
            raise fail("--sharding needs --distributed")
        return
    error = torchrec_error()
    if error is not None:
        raise fail(f"--distributed needs TorchRec. {error}")
    if args.embedding == "pimm":
        raise fail("--distributed shards TorchRec tables: drop --embedding pimm")
    if not args.dist_timeout > 0:
        raise fail(f"--dist-timeout must be > 0, got {args.dist_timeout}")
    if args.embedding_optimizer == "adam" and torch.device(args.device).type == "cpu":
        raise fail("FBGEMM fuses 'adam' only on GPU; on CPU use --embedding-optimizer rowwise_adagrad or sgd")
    if args.resume_sharded is not None and not args.resume_sharded.exists():
        raise fail(f"--resume-sharded: {args.resume_sharded} does not exist")
    _run_directory(args)


def is_run_directory(path: Path) -> bool:
    """A run directory written by ``train --distributed --out``: config.json and the sharded checkpoints."""
    path = Path(path)
    return (path / CONFIG).is_file() and (path / SHARDED).is_dir()


def _run_directory(args: argparse.Namespace) -> None:
    """Sets ``args.run_dir`` (where config.json and results.json go, or None) and ``args.checkpoint_dir`` (where
    the sharded checkpoints go, or None). --resume-sharded of a run directory continues in it."""
    out, resume = getattr(args, "out", None), args.resume_sharded
    if resume is not None and is_run_directory(resume):
        if out is not None and Path(out).resolve() != Path(resume).resolve():
            raise fail(f"--out {out} with --resume-sharded {resume}: a resumed run continues in its own directory")
        if args.sharded_checkpoint is not None:
            raise fail(f"--resume-sharded {resume} is a run directory, whose checkpoints stay in {resume}/{SHARDED}: "
                       f"drop --sharded-checkpoint")
        out = resume
    elif out is not None and (Path(out) / "checkpoint.pt").exists():
        raise fail(f"{out} already holds a one-process run (checkpoint.pt); choose another --out")
    elif out is not None and any((Path(out) / name).exists() for name in (CONFIG, SHARDED)):
        raise fail(f"{out} already holds a run; continue it with --resume-sharded {out} or choose another --out")
    args.run_dir = None if out is None else Path(out)
    args.checkpoint_dir = args.run_dir / SHARDED if out is not None else args.sharded_checkpoint


def quiet_libraries() -> None:
    """TorchRec, FBGEMM and torch.distributed warn about their own internals (deprecations, the planner's
    topology, DDP's static graph) on every rank: noise in a training log. Errors still show."""
    import logging
    import warnings

    for module in (r"torchrec(\..*)?", r"fbgemm_gpu(\..*)?", r"torch\.distributed(\..*)?", r"torch\.fx(\..*)?"):
        warnings.filterwarnings("ignore", module=module)
    for name in ("torchrec", "fbgemm_gpu", "torch.distributed", "torch.fx"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run(args: argparse.Namespace) -> int:
    """The --distributed training run; every rank runs it, rank 0 prints and writes files. Exits the process
    explicitly after destroying the process group (ranks that leave it alive may abort at exit)."""
    check_args(args)
    quiet_libraries()
    from . import parallel

    code = 0
    try:
        rank, world, device = parallel.init_process_group(args.dist_timeout, args.device)
    except (RuntimeError, ValueError) as err:
        raise fail(f"could not join the process group: {err}") from None
    if rank != 0:
        sys.stdout = open(os.devnull, "w")
    try:
        _train(args, rank, world, device)
    except UsageError as err:  # bad options or data: the same one line on every rank
        print(f"pimm-fast: error: rank {rank}: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
        code = 2
    except Exception as err:  # noqa: BLE001: every failure ends the rank with one line, not a hang
        message = parallel.explain_timeout(err, args.dist_timeout) or f"rank {rank}: {type(err).__name__}: {err}"
        if not message.startswith("rank "):
            message = f"rank {rank}: {message}"
        print(f"pimm-fast: error: {message}", file=sys.stderr, flush=True)
        code = 1
    finally:
        try:
            parallel.close_process_group()
        except Exception:  # noqa: BLE001
            pass
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _train(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> None:
    from .. import cli
    from ..train.checkpoint import save_json
    from ..train.commands import _jsonable, format_table, run_config, train_config
    from ..train.trainer import check_monitor
    from .loop import DistributedTrainer, check_global_batch, evaluate_distributed
    from .parallel import BEST, load_checkpoint, resolve_checkpoint, shard_model

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        local_batch = check_global_batch(args.batch_size, world)
    except ValueError as err:
        raise fail(str(err)) from None
    torch.manual_seed(args.seed)  # the same dense initialisation on every rank (DDP also broadcasts rank 0's)
    started = time.perf_counter()
    splits = cli.load_data(args.data, args.samples, args.seed)
    train, valid, test = splits.train, splits.valid, splits.test
    if args.patience is not None and valid is None:
        raise fail("--patience needs a validation split; the data has none (valid_fraction=0)")
    try:
        check_monitor(args.monitor, train.task_names)
    except ValueError as err:
        raise fail(f"--monitor: {err}") from None
    args.embedding = "torchrec"
    model = cli.build_model(args, train)
    sm = shard_model(model, device, sharding=args.sharding, lr=args.lr, weight_decay=args.weight_decay,
                     batch_size=local_batch, seed=args.seed, timeout_s=args.dist_timeout)
    optimizer = sm.embedding.optimizer
    placements = {}
    for kind, _ in sm.plan.values():
        placements[kind] = placements.get(kind, 0) + 1
    print(f"{type(sm.model).__name__} on {args.data}: {len(train):,} train / "
          f"{0 if valid is None else len(valid):,} valid / {len(test):,} test impressions, "
          f"{len(train.field_dims)} fields" + (f" + {len(train.bag_names)} multi-valued" if train.bags else "") +
          f", tasks {' -> '.join(train.task_names)}; {world} process(es) ({'nccl' if device.type == 'cuda' else 'gloo'}), "
          f"global batch {args.batch_size} = {world} x {local_batch}, {torch.get_num_threads()} threads each; "
          f"TorchRec tables: {', '.join(f'{n} {k}' for k, n in placements.items())}, fused {optimizer}"
          + (f" (dim {sm.embedding.embed_dim} stored as {sm.embedding.table_dim})"
             if sm.embedding.table_dim != sm.embedding.embed_dim else ""), flush=True)
    config = run_config(args)
    config["distributed"] = {"processes": world, "sharding": args.sharding, "plan": {k: [v[0], v[1]] for k, v in sm.plan.items()},
                             "lr_schedule_applies_to": "dense optimizer and fused table optimizers"}
    tc = train_config(config, progress=False)

    def report(epoch: int, record: dict) -> None:
        line = (f"epoch {epoch + 1}/{tc.epochs}: loss {record['train_loss']:.4f}, p {record.get('p', 0):.3f}, "
                f"{record['samples_per_second']:,.0f} samples/s over {world} process(es)")
        if "valid" in record:
            value = record["monitor"]
            line += f", valid {tc.monitor} {'n/a' if value is None else f'{value:.4f}'}"
        print(line, flush=True)

    try:
        trainer = DistributedTrainer(sm, train, tc, valid=valid, checkpoint_dir=args.checkpoint_dir, on_epoch_end=report)
    except ValueError as err:
        raise fail(str(err)) from None
    if args.resume_sharded is not None:
        source = args.resume_sharded / SHARDED if is_run_directory(args.resume_sharded) else args.resume_sharded
        try:
            source = resolve_checkpoint(source)
        except FileNotFoundError as err:
            raise fail(f"--resume-sharded: {err}") from None
        progress = load_checkpoint(sm, source)
        try:
            trainer.load_state(progress, best=source.parent / BEST)
        except ValueError as err:
            raise fail(f"--resume-sharded {args.resume_sharded}: {err}") from None
        print(f"resumed from {source} at epoch {trainer.epoch} (saved by {progress.get('world', '?')} "
              f"process(es))", flush=True)
    if args.run_dir is not None and rank == 0 and not (args.run_dir / CONFIG).exists():
        save_json(args.run_dir / CONFIG, _jsonable(config))
    history = trainer.run()
    early = trainer.early
    result = evaluate_distributed(sm, test)
    if rank != 0:
        return
    if early["best_epoch"] is not None:
        stop = f"stopped early after epoch {len(history)}; " if early["stopped"] else ""
        print(f"{stop}best validation epoch {early['best_epoch'] + 1} ({tc.monitor} {early['best']:.4f}), restored",
              flush=True)
    print("\nheld-out test set\n" + format_table(result))
    print(f"\ntotal {time.perf_counter() - started:.1f} s")
    payload = _jsonable({
        "config": config, "backend": "torchrec", "processes": world, "plan": config["distributed"]["plan"],
        "history": history, "early_stopping": early, "test": result,
        "data": {"report": train.meta.get("report", {}), "dense_names": list(train.dense_names)},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("_")}})
    if args.run_dir is not None:
        save_json(args.run_dir / RESULTS, payload)
    if args.output is not None:
        save_json(args.output, payload)


# ----------------------------------------------------------------------------------------------------
# evaluate / predict / export of a distributed run directory (no TorchRec, no process group needed)
# ----------------------------------------------------------------------------------------------------
TABLE_KEY = "embedding.ebc.embedding_bags.t{}.weight"


def is_sharded_checkpoint(path: Path) -> bool:
    """A --sharded-checkpoint directory (``latest`` pointer) or one of its checkpoints (``.metadata``)."""
    path = Path(path)
    return path.is_dir() and ((path / "latest").is_file() or (path / ".metadata").is_file())


def run_weights(directory: Path) -> Path:
    """The checkpoint a distributed run stands for: ``DIR/sharded/best`` (the best validation epoch) when the
    run kept one, else the last epoch's (``DIR/sharded/latest`` names it)."""
    sharded = Path(directory) / SHARDED
    best = sharded / "best"
    if (best / ".metadata").is_file():
        return best
    pointer = sharded / "latest"
    if not pointer.is_file():
        raise fail(f"{directory} holds no finished epoch yet ({sharded} has no 'latest' checkpoint)")
    path = sharded / pointer.read_text().strip()
    if not (path / ".metadata").is_file():
        raise fail(f"{path} (named by {pointer}) is not a torch.distributed.checkpoint directory (no .metadata)")
    return path


def read_sharded_weights(path: Path, embed_dim: int, num_fields: int) -> dict:
    """The model part of a sharded checkpoint as a one-process state_dict: the TorchRec tables t0..t{F-1}
    (stored D_pad wide) become FieldEmbedding's ``embedding.weight`` [sum of rows, D], the dense parameters
    and buffers keep their names. torch.distributed.checkpoint reassembles each table from whatever ranks
    saved its shards; this reads whole tables, so they must fit in this process's memory."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from .parallel import load_in_one_process

    try:
        saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    except Exception as err:  # noqa: BLE001: unreadable or foreign metadata
        raise fail(f"{path} is not a readable torch.distributed.checkpoint ({type(err).__name__}: {err})") from None
    state = {key[len("model."):]: torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
             for key, meta in saved.items() if key.startswith("model.") and isinstance(meta, TensorStorageMetadata)}
    missing = [TABLE_KEY.format(f) for f in range(num_fields) if TABLE_KEY.format(f) not in state]
    if missing:
        raise fail(f"{path} does not hold the tables of the run's {num_fields} fields (missing {missing[0]})")
    load_in_one_process({"model": state}, path)
    tables = [state.pop(TABLE_KEY.format(f))[:, :embed_dim] for f in range(num_fields)]
    state["embedding.weight"] = torch.cat(tables)
    return state


def load_run_model(directory: Path, spec, device: str):
    """``pimm_fast.train.commands.load_run_model`` for a ``train --distributed --out`` directory: (model,
    config, weights path, test split, splits). The model is the run's model with pimm_fast's own
    ``FieldEmbedding`` holding the tables (read whole, see ``read_sharded_weights``), so ``evaluate``,
    ``predict`` and ``export`` score it like a one-process run; the training state (optimizer) is not read."""
    import json

    from ..train.commands import build, fail as usage, load_splits

    directory = Path(directory)
    try:
        config = json.loads((directory / CONFIG).read_text())
    except (OSError, ValueError) as err:
        usage(f"{directory / CONFIG} is not a readable run configuration ({err})")
    path = run_weights(directory)
    splits = load_splits(spec or config["data"], config["samples"], config["seed"])
    test = splits.test
    build_config = {k: v for k, v in config.items() if k != "distributed"}
    build_config.update(embedding=None, embedding_optimizer="dense")  # FieldEmbedding, no TorchRec
    torch.manual_seed(config["seed"])
    model = build(build_config, test, device)
    state = read_sharded_weights(path, config["embed_dim"], len(test.model_field_dims))
    if tuple(state["embedding.weight"].shape) != tuple(model.embedding.weight.shape):
        usage(f"the data {spec or config['data']} does not fit the model in {path}: its tables have "
              f"{state['embedding.weight'].shape[0]} rows in all, the data's fields {sum(test.model_field_dims)}")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        usage(f"{path} does not fit the model its configuration names: {str(err).strip().splitlines()[0][:200]}")
    return model.to(device), config, path, test, splits
