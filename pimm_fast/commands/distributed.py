"""``pimm-fast train --distributed`` (under ``torchrun --nproc_per_node N -m pimm_fast train --distributed``)
and the checks of ``--embedding torchrec`` in one process; :mod:`.train` calls ``check_args`` and ``run``."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from ..distributed import torchrec_error
from ..distributed.checkpoint import is_run_directory
from ..errors import UsageError
from ..train.checkpoint import (CHECKPOINT, CONFIG, SHARDED, CheckpointError, check_same_vocabulary, run_vocabulary,
                                save_json, save_vocabulary)
from .run import DataRequest, RunConfig, build_model, check_validation, fused_optimizer_name, jsonable, report_run


def check_args(args: argparse.Namespace) -> None:
    """Option combinations that make no sense, refused before any data is read. The TorchRec table optimizer
    is chosen here (``fused_optimizer_name``) and stored in the run configuration: without an explicit
    --embedding-optimizer, row-wise Adagrad on the CPU (FBGEMM has no CPU Adam), lazy Adam on GPU."""
    torchrec = args.distributed or getattr(args, "embedding", None) == "torchrec"
    if torchrec:
        try:
            device = torch.device(args.device)
        except RuntimeError:
            raise UsageError(f"--device {args.device!r} is not a device (cpu, cuda, cuda:0, ...)") from None
        given = "embedding_optimizer" in getattr(args, "_given", {})
        args.embedding_optimizer = fused_optimizer_name(args.embedding_optimizer, device, chosen=given)
    if args.distributed:
        if getattr(args, "resume", None) is not None:
            raise UsageError("--resume is not supported with --distributed: continue a sharded run with "
                             "--resume-sharded DIR (the run directory of --out, or a --sharded-checkpoint directory)")
        if getattr(args, "checkpoint_every", 0):
            raise UsageError("--checkpoint-every is not supported with --distributed: a sharded run checkpoints at "
                             "every epoch end (--out DIR or --sharded-checkpoint DIR) and --resume-sharded continues "
                             "from there")
        out = getattr(args, "out", None)
        if out is not None and args.sharded_checkpoint is not None:
            raise UsageError(f"--out {out} keeps the sharded checkpoints in {out}/sharded: drop --sharded-checkpoint")
    if getattr(args, "embedding", None) == "torchrec" and getattr(args, "resume", None) is not None:
        raise UsageError("--resume with --embedding torchrec: the fused TorchRec optimizer state is not in the "
                         "checkpoint, so the run could not continue exactly; train again, or use --distributed with "
                         "--resume-sharded")
    if not args.distributed:
        for name in ("sharded_checkpoint", "resume_sharded"):
            if getattr(args, name) is not None:
                raise UsageError(f"--{name.replace('_', '-')} needs --distributed")
        if args.sharding != "auto":
            raise UsageError("--sharding needs --distributed")
        if torchrec:
            _check_fused_adam(args.embedding_optimizer, device)
        return
    error = torchrec_error()
    if error is not None:
        raise UsageError(f"--distributed needs TorchRec. {error}")
    if args.embedding == "pimm":
        raise UsageError("--distributed shards TorchRec tables: drop --embedding pimm")
    if not args.dist_timeout > 0:
        raise UsageError(f"--dist-timeout must be > 0, got {args.dist_timeout}")
    _check_fused_adam(args.embedding_optimizer, device)
    if args.resume_sharded is not None and not args.resume_sharded.exists():
        raise UsageError(f"--resume-sharded: {args.resume_sharded} does not exist")
    _run_directory(args)


def _check_fused_adam(optimizer: str, device: torch.device) -> None:
    if optimizer == "adam" and device.type == "cpu":
        raise UsageError("FBGEMM fuses 'adam' only on GPU; on CPU use --embedding-optimizer rowwise_adagrad or sgd")


def _run_directory(args: argparse.Namespace) -> None:
    """Sets ``args.run_dir`` (where config.json and results.json go, or None) and ``args.checkpoint_dir`` (where
    the sharded checkpoints go, or None). --resume-sharded of a run directory continues in it."""
    out, resume = getattr(args, "out", None), args.resume_sharded
    if resume is not None and is_run_directory(resume):
        if out is not None and Path(out).resolve() != Path(resume).resolve():
            raise UsageError(f"--out {out} with --resume-sharded {resume}: a resumed run continues in its own "
                             f"directory")
        if args.sharded_checkpoint is not None:
            raise UsageError(f"--resume-sharded {resume} is a run directory, whose checkpoints stay in "
                             f"{resume}/{SHARDED}: drop --sharded-checkpoint")
        out = resume
    elif out is not None and (Path(out) / CHECKPOINT).exists():
        raise UsageError(f"{out} already holds a one-process run ({CHECKPOINT}); choose another --out")
    elif out is not None and any((Path(out) / name).exists() for name in (CONFIG, SHARDED)):
        raise UsageError(f"{out} already holds a run; continue it with --resume-sharded {out} or choose another "
                         f"--out")
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


def run(args: argparse.Namespace, request: DataRequest) -> int:
    """The --distributed training run (after ``check_args``) on the checked data ``request``; every rank runs
    it, rank 0 prints and writes files. Exits the process explicitly after destroying the process group (ranks
    that leave it alive may abort at exit)."""
    quiet_libraries()
    from ..distributed import parallel

    code = 0
    try:
        rank, world, device = parallel.init_process_group(args.dist_timeout, args.device)
    except (RuntimeError, ValueError) as err:
        raise UsageError(f"could not join the process group: {err}") from None
    if rank != 0:
        sys.stdout = open(os.devnull, "w")
    try:
        _train(args, request, rank, world, device)
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


def _train(args: argparse.Namespace, request: DataRequest, rank: int, world: int, device: torch.device) -> None:
    from ..distributed.loop import DistributedTrainer, check_global_batch, evaluate_distributed
    from ..distributed.parallel import BEST, load_checkpoint, resolve_checkpoint, shard_model

    args.embedding = "torchrec"
    config = RunConfig.from_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        local_batch = check_global_batch(config.batch_size, world)
    except ValueError as err:
        raise UsageError(str(err)) from None
    torch.manual_seed(config.seed)  # the same dense initialisation on every rank (DDP also broadcasts rank 0's)
    started = time.perf_counter()
    splits = request.load()
    if args.resume_sharded is not None and is_run_directory(args.resume_sharded):
        saved = run_vocabulary(args.resume_sharded)
        if saved is None:
            request.check_unsaved_encoding(splits, args.resume_sharded)
        try:
            check_same_vocabulary(saved, splits.vocabulary)
        except CheckpointError as err:
            raise UsageError(f"--resume-sharded {args.resume_sharded}: {err}") from None
    train, valid, test = splits.train, splits.valid, splits.test
    check_validation(config, valid, train.task_names)
    model = build_model(config, train, args.device, sharded=True, training=True)
    sm = shard_model(model, device, sharding=args.sharding, lr=config.lr, weight_decay=config.weight_decay,
                     batch_size=local_batch, seed=config.seed, timeout_s=args.dist_timeout)
    optimizer = sm.embedding.optimizer
    placements = {}
    for kind, _ in sm.plan.values():
        placements[kind] = placements.get(kind, 0) + 1
    print(f"{type(sm.model).__name__} on {config.data}: {len(train):,} train / "
          f"{0 if valid is None else len(valid):,} valid / {len(test):,} test impressions, "
          f"{len(train.field_dims)} fields" + (f" + {len(train.bag_names)} multi-valued" if train.bags else "") +
          f", tasks {' -> '.join(train.task_names)}; {world} process(es) ({'nccl' if device.type == 'cuda' else 'gloo'}), "
          f"global batch {config.batch_size} = {world} x {local_batch}, {torch.get_num_threads()} threads each; "
          f"TorchRec tables: {', '.join(f'{n} {k}' for k, n in placements.items())}, fused {optimizer}"
          + (f" (dim {sm.embedding.embed_dim} stored as {sm.embedding.table_dim})"
             if sm.embedding.table_dim != sm.embedding.embed_dim else ""), flush=True)
    config.distributed = {"processes": world, "sharding": args.sharding,
                          "plan": {k: [v[0], v[1]] for k, v in sm.plan.items()},
                          "lr_schedule_applies_to": "dense optimizer and fused table optimizers"}
    tc = config.train_config(progress=False)

    def report(epoch: int, record: dict) -> None:
        p = f"p {record['p']:.3f}, " if "p" in record else ""  # PIMM's curriculum; other models have none
        line = (f"epoch {epoch + 1}/{tc.epochs}: loss {record['train_loss']:.4f}, {p}"
                f"{record['samples_per_second']:,.0f} samples/s over {world} process(es)")
        if "valid" in record:
            value = record["monitor"]
            line += f", valid {tc.monitor} {'n/a' if value is None else f'{value:.4f}'}"
        print(line, flush=True)

    try:
        trainer = DistributedTrainer(sm, train, tc, valid=valid, checkpoint_dir=args.checkpoint_dir, on_epoch_end=report)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.resume_sharded is not None:
        source = args.resume_sharded / SHARDED if is_run_directory(args.resume_sharded) else args.resume_sharded
        try:
            source = resolve_checkpoint(source)
        except FileNotFoundError as err:
            raise UsageError(f"--resume-sharded: {err}") from None
        progress = load_checkpoint(sm, source)
        try:
            trainer.load_state(progress, best=source.parent / BEST)
        except ValueError as err:
            raise UsageError(f"--resume-sharded {args.resume_sharded}: {err}") from None
        print(f"resumed from {source} at epoch {trainer.epoch} (saved by {progress.get('world', '?')} "
              f"process(es))", flush=True)
    if args.run_dir is not None and rank == 0 and not (args.run_dir / CONFIG).exists():
        save_json(args.run_dir / CONFIG, jsonable(config.to_dict()))
        if splits.vocabulary is not None:  # the tables are sharded: the run directory holds the encoding
            save_vocabulary(args.run_dir, splits.vocabulary)
    history = trainer.run()
    result = evaluate_distributed(sm, test)
    if rank == 0:
        args_record = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if not k.startswith("_")}
        report_run(config, "torchrec", history, trainer.early, result, train, started, args.run_dir, args.output,
                   processes=world, plan=config.distributed["plan"], args=args_record)
