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
                       help="--distributed: save a torch.distributed.checkpoint here after every epoch")
    group.add_argument("--resume-sharded", type=Path, default=None,
                       help="--distributed: continue from a checkpoint of --sharded-checkpoint (any number of "
                            "processes)")


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
        for name in ("out", "resume", "patience"):
            if getattr(args, name, None) is not None:
                raise fail(f"--{name} is not supported with --distributed (sharded runs save and resume with "
                           f"--sharded-checkpoint / --resume-sharded)")
        if getattr(args, "checkpoint_every", 0):
            raise fail("--checkpoint-every is not supported with --distributed (checkpoints are per epoch)")
        if getattr(args, "lr_schedule", "none") != "none":
            raise fail("--lr-schedule is not supported with --distributed")
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
    from ..train import TrainConfig
    from ..train.checkpoint import save_json
    from ..train.commands import _jsonable, format_table
    from .loop import check_global_batch, evaluate_distributed, fit_distributed
    from .parallel import load_checkpoint, shard_model

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
    args.embedding = "torchrec"
    model = cli.build_model(args, train)
    sm = shard_model(model, device, sharding=args.sharding, lr=args.lr, batch_size=local_batch, seed=args.seed,
                     timeout_s=args.dist_timeout)
    optimizer = sm.embedding.optimizer
    placements = {}
    for kind, _ in sm.plan.values():
        placements[kind] = placements.get(kind, 0) + 1
    print(f"{type(sm.model).__name__} on {args.data}: {len(train):,} train / {len(test):,} test impressions, "
          f"{len(train.field_dims)} fields" + (f" + {len(train.bag_names)} multi-valued" if train.bags else "") +
          f", tasks {' -> '.join(train.task_names)}; {world} process(es) ({'nccl' if device.type == 'cuda' else 'gloo'}), "
          f"global batch {args.batch_size} = {world} x {local_batch}, {torch.get_num_threads()} threads each; "
          f"TorchRec tables: {', '.join(f'{n} {k}' for k, n in placements.items())}, fused {optimizer}"
          + (f" (dim {sm.embedding.embed_dim} stored as {sm.embedding.table_dim})"
             if sm.embedding.table_dim != sm.embedding.embed_dim else ""), flush=True)
    start_epoch = 0
    if args.resume_sharded is not None:
        progress = load_checkpoint(sm, args.resume_sharded)
        start_epoch = int(progress.get("epoch", 0))
        print(f"resumed from {args.resume_sharded} at epoch {start_epoch} (saved by {progress.get('world', '?')} "
              f"process(es))", flush=True)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         per_step_curriculum=args.per_step_curriculum, progress=False)

    def report(epoch: int, record: dict) -> None:
        print(f"epoch {epoch + 1}/{args.epochs}: loss {record['train_loss']:.4f}, p {record.get('p', 0):.3f}, "
              f"{record['samples_per_second']:,.0f} samples/s over {world} process(es)", flush=True)

    history = fit_distributed(sm, train, config, valid=valid, start_epoch=start_epoch,
                              checkpoint_dir=args.sharded_checkpoint, on_epoch_end=report)
    result = evaluate_distributed(sm, test)
    if rank == 0:
        print("\nheld-out test set\n" + format_table(result))
        print(f"\ntotal {time.perf_counter() - started:.1f} s")
        if args.output is not None:
            save_json(args.output, _jsonable({
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("_")},
                "backend": "torchrec", "processes": world, "plan": {k: [v[0], v[1]] for k, v in sm.plan.items()},
                "history": history, "test": result,
                "data": {"report": train.meta.get("report", {}), "dense_names": list(train.dense_names)}}))
