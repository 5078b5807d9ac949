"""``pimm-fast train``: every option checked before any data are read, then one process's run (a fresh one,
or ``--resume DIR`` of its checkpoint); ``--distributed`` goes on in :mod:`.distributed`."""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..errors import UsageError
from ..train import checkpoint as ckpt
from ..train.trainer import Trainer, evaluate
from . import distributed
from .run import (RUN_KEYS, DataRequest, RunConfig, build, check_output_path, check_unused_options, check_validation,
                  fmt, report_run)


def check_train_args(args: argparse.Namespace) -> DataRequest:
    """Every option of ``train`` checked before any data are read; a bad one raises UsageError. Returns the
    data spec, parsed and checked."""
    from ..models import MODELS

    check_numbers(args, ("epochs", "batch_size", "embed_dim", "samples", "threads"))
    model = args.model.strip().lower().replace("-", "_")
    if model not in MODELS:
        raise UsageError(f"unknown --model {args.model!r}; choose one of {', '.join(MODELS)}")
    if args.backbone is not None and model != "pimm":
        raise UsageError("--backbone applies to --model pimm only")
    check_device(args.device, args.backend)
    request = DataRequest.parse(args.data, args.samples, args.seed)
    request.check()
    check_policy(request, [model])
    check_unused_options(getattr(args, "_given", {}), args, [model])
    check_output_path(args.output)
    return request


def check_numbers(args: argparse.Namespace, at_least_one: Sequence[str]) -> None:
    """Counts >= 1, learning rates finite and > 0, the curriculum's alpha/step/floor (train and compare)."""
    import pimm_fast

    for name in at_least_one:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for name in ("lr", "embedding_lr"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number > 0, got {value}")
    try:
        pimm_fast.Curriculum(args.alpha, args.step, args.floor)
    except ValueError as err:
        raise UsageError(f"--alpha/--step/--floor: {err}") from None


def check_device(text: str, backend: str) -> torch.device:
    """--device names a device of this machine and --backend can run there."""
    import pimm_fast

    try:
        device = torch.device(text)
    except RuntimeError:
        raise UsageError(f"--device {text!r} is not a device (cpu, cuda, cuda:0, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UsageError(f"--device {text}: only cpu and cuda devices are supported")
    try:
        pimm_fast.ops.resolve_backend(backend, device)
    except (ValueError, RuntimeError) as err:
        raise UsageError(f"--backend {backend}: {err}") from None
    return device


def check_policy(request: DataRequest, models: Sequence[str]) -> None:
    """``policy=keep`` keeps rows that break the cascade: refused for every model that assumes the cascade."""
    from ..models import MODELS

    bound = [m for m in models if MODELS[m].requires_cascade]
    if request.options.get("policy") == "keep" and bound:
        need = [n for n, cls in MODELS.items() if cls.requires_cascade]
        free = [n for n, cls in MODELS.items() if not cls.requires_cascade]
        raise UsageError(f"--cascade-policy keep keeps rows that break the cascade, which {', '.join(bound)} cannot "
                         f"train on ({', '.join(need)} assume the cascade: PIMM feeds y_(t-1), ESMM multiplies stages, "
                         f"AITM/MNCM calibrate yhat_t <= yhat_(t-1)); use --model {' / '.join(free)}, or "
                         f"--cascade-policy drop")


def cmd_train(args: argparse.Namespace) -> int:
    distributed.check_args(args)
    if args.resume is None:  # a resumed run's options come from its checkpoint
        request = check_train_args(args)
    else:
        check_output_path(args.output)
        request = None
    return distributed.run(args, request) if args.distributed else train(args, request)


def _resume_config(args: argparse.Namespace, payload: dict, source: Path) -> RunConfig:
    """The checkpoint's configuration; an option given on the command line that contradicts it is an error."""
    stored = dict(payload["config"])
    given = {k: v for k, v in getattr(args, "_given", {}).items() if k in RUN_KEYS}
    for key, value in given.items():
        if key == "tower_dims" and value is not None:
            value = list(value)
        if key == "data" and value != stored.get("data"):
            value = value.replace(argparse.SUPPRESS, "")
            raise UsageError(f"--resume: the data ({value}) contradicts the checkpoint's {stored.get('data')!r}; "
                             f"leave the data options out to continue that run")
        if stored.get(key) != value:
            flag = "--" + key.replace("_", "-")
            had = (f"the checkpoint's {stored[key]!r}" if stored.get(key) is not None else
                   f"the checkpoint, whose run left {flag} unset")
            raise UsageError(f"--resume: {flag} {value} contradicts {had}; leave it out to continue the run as it "
                             f"was configured")
    return RunConfig.from_dict(stored, source)


def train(args: argparse.Namespace, request: Optional[DataRequest]) -> int:
    """One process's run: ``request`` is the checked data of a fresh run, None for ``--resume``."""
    import pimm_fast

    payload = None
    if args.resume is not None:
        out = Path(args.resume)
        if args.out is not None and Path(args.out) != out:
            raise UsageError(f"--out {args.out} with --resume {out}: a resumed run continues in its own directory")
        try:
            path = ckpt.run_checkpoint(out)
            payload = ckpt.load(path, kind="checkpoint")
        except ckpt.CheckpointError as err:
            raise UsageError(str(err)) from None
        config = _resume_config(args, payload, path)
        for stale in out.glob(".*.tmp*"):  # what a process killed while writing left behind
            stale.unlink(missing_ok=True)
        if payload["train_state"].get("finished"):
            raise UsageError(f"the run in {out} already finished (epoch {payload['train_state']['epoch']}); nothing "
                             f"to resume (pimm-fast evaluate --checkpoint {out} prints its metrics)")
        request = DataRequest.parse(config.data, config.samples, config.seed)
    else:
        config = RunConfig.from_args(args)
        out = args.out
        if out is not None and (Path(out) / ckpt.CHECKPOINT).exists():
            raise UsageError(f"{out} already holds a run ({ckpt.CHECKPOINT}); continue it with --resume {out} or "
                             f"choose another --out")
    if config.checkpoint_every and out is None:
        raise UsageError("--checkpoint-every needs --out DIR (where the checkpoints go)")
    from ..runtime import configure_threads

    # --threads, else OMP_NUM_THREADS, else one thread per 8192 samples of the batch (at most one per core)
    configure_threads(args.threads, batch_size=config.batch_size)
    device = args.device
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    splits = request.load()
    if payload is not None and ckpt.run_vocabulary(out, payload) is None:
        request.check_unsaved_encoding(splits, out)
    train, valid, test = splits.train, splits.valid, splits.test
    check_validation(config, valid, train.task_names)
    model = build(config, train, device, training=True)
    backend = pimm_fast.ops.resolve_backend(config.backend, device)
    print(f"{type(model).__name__} on {config.data}: {len(train):,} train / "
          f"{0 if valid is None else len(valid):,} valid / {len(test):,} test impressions, "
          f"{len(train.field_dims)} fields" + (f" + {len(train.bag_names)} multi-valued" if train.bags else "") +
          (f" + {train.num_dense} dense" if train.dense is not None else "") +
          f", tasks {' -> '.join(train.task_names)}; backend {backend} on {device}, {torch.get_num_threads()} threads, "
          f"embedding optimizer {config.embedding_optimizer}", flush=True)
    tc = config.train_config(progress=not args.no_progress)

    def report(epoch: int, record: dict) -> None:
        p = f"p {record['p']:.3f}, " if "p" in record else ""  # PIMM's curriculum; other models have none
        line = (f"epoch {epoch + 1}/{tc.epochs}: loss {record['train_loss']:.4f}, {p}"
                f"{record['samples_per_second']:,.0f} samples/s")
        if "valid" in record:
            line += f", valid {tc.monitor} {fmt(record['monitor'], 0)}"
        print(line, flush=True)

    try:
        trainer = Trainer(model, train, tc, valid=valid, out=out, run_config=config.to_dict(), on_epoch_end=report,
                          vocabulary=splits.vocabulary)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if payload is not None:
        try:
            trainer.load_state_dict(payload)
        except ckpt.CheckpointError as err:
            raise UsageError(str(err)) from None
        print(f"resumed {out} at epoch {trainer.state['epoch'] + 1}, step {trainer.state['position']}", flush=True)
    elif out is not None:
        ckpt.save_json(Path(out) / ckpt.CONFIG, config.to_dict())
        if splits.vocabulary is not None:
            ckpt.save_vocabulary(Path(out), splits.vocabulary)
    history = trainer.run()
    result = evaluate(model, test)
    report_run(config, backend, history, trainer.early, result, train, started, out, args.output)
    return 0
