"""The training loop of a sharded model: each rank its shard of every global batch, exact metrics over all ranks.

Rank r trains on samples perm[r], perm[r + W], ... of each epoch's permutation (``Batcher(shard=(r, W))``),
so global batch b is the union of the ranks' batch b, the one-process batch of size W * B_local. The loss
is each rank's batch mean; DDP averages the dense gradients and TorchRec divides the sharded tables'
gradients by W, so one step equals a one-process step on the global batch (the SGD test checks this).
Every rank runs the same number of steps (the batcher pads the tail by wrapping around).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist

from ..data import Batcher, CascadeData
from ..metrics import cascade_metrics
from ..models.base import check_finite
from ..train.trainer import (TrainConfig, check_monitor, dense_kwargs, early_stopping_step, lr_factor, model_input,
                             monitor_value)
from .parallel import (BEST, DistributedInputError, ShardedModel, agree, all_sum, gather_predictions, load_checkpoint,
                       restore, save_checkpoint, snapshot)


def batch_problem(sm: ShardedModel, x, y: Optional[torch.Tensor]) -> Optional[str]:
    """The model's own id and label checks, run before any collective; None when the batch is fine."""
    problem = sm.embedding.bad_ids(x)
    if problem is None and y is not None:
        try:
            sm.model.validate_labels(y, x)
        except (ValueError, TypeError, IndexError) as err:
            problem = str(err)
    return problem


def local_batcher(sm: ShardedModel, data: CascadeData, batch_size: int, shuffle: bool, seed: int = 0) -> Batcher:
    on_cuda = sm.device.type == "cuda"
    return Batcher(data, batch_size, shuffle=shuffle, seed=seed, shard=(sm.rank, sm.world),
                   device=sm.device if on_cuda else None, bags=bool(data.bags))


def check_global_batch(batch_size: int, world: int) -> int:
    if batch_size % world:
        raise ValueError(f"the global batch size {batch_size} must be a multiple of the number of processes {world}")
    return batch_size // world


RESUME_KEYS = ("batch_size", "seed", "lr", "weight_decay", "per_step_curriculum", "patience", "monitor", "lr_schedule",
               "lr_gamma", "lr_step_epochs", "min_lr_ratio")


class DistributedTrainer:
    """One sharded training run, with the single-process Trainer's validation, early stopping and lr schedule.

    Every rank runs it. Validation: rank 0 computes the metrics over the whole validation split (predictions
    gathered from every rank) and broadcasts them, so every rank applies the same rule to the same numbers
    and the ranks stop after the same epoch. Early stopping as in ``pimm_fast.train.Trainer``: a strictly
    better ``config.monitor`` value keeps the weights (``checkpoint_dir/best``, or a copy of each rank's
    shards in memory without a checkpoint directory), ``config.patience`` epochs without one stop the run,
    and the best epoch's weights are restored at the end either way. The lr schedule scales the dense
    optimizer's lr and the fused table optimizers' lr, as a function of (epoch, step).

    With ``checkpoint_dir`` the state is saved after every epoch (``epoch-N``; see ``save_checkpoint``) with a
    progress record holding the history and the early-stopping record; ``load_state`` continues from it
    so that the resumed run trains, validates and stops as the uninterrupted one.
    """

    def __init__(self, sm: ShardedModel, train: CascadeData, config: TrainConfig, valid: Optional[CascadeData] = None,
                 checkpoint_dir=None, on_epoch_end: Optional[Callable[[int, dict], None]] = None,
                 max_steps: Optional[int] = None):
        check_monitor(config.monitor, train.task_names)
        if config.patience is not None and valid is None:
            raise ValueError("patience needs a validation split")
        if config.checkpoint_every:
            raise ValueError("checkpoint_every: the distributed loop checkpoints at epoch ends only")
        local = check_global_batch(config.batch_size, sm.world)
        self.sm, self.train, self.valid, self.config = sm, train, valid, config
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.on_epoch_end = on_epoch_end
        self.batcher = local_batcher(sm, train, local, shuffle=True, seed=config.seed)
        self.steps = len(self.batcher) if max_steps is None else min(len(self.batcher), max_steps)
        self.epoch = 0
        self.history: list[dict] = []
        self.early = {"monitor": config.monitor, "best": None, "best_epoch": None, "bad_epochs": 0, "stopped": False,
                      "undefined_epochs": 0}
        self._best_in_memory: Optional[dict] = None
        self._best_path: Optional[Path] = None  # where the best epoch's weights are on disk, if they are

    # -- resume ------------------------------------------------------------------------------------------
    def progress(self) -> dict:
        """The JSON record saved beside each epoch checkpoint."""
        return {"epoch": self.epoch, "world": self.sm.world, "seed": self.sm.seed,
                "record": self.history[-1] if self.history else None, "history": self.history,
                "early_stopping": dict(self.early), "train_config": asdict(self.config),
                "steps_per_epoch": self.steps, "samples": len(self.train)}

    def load_state(self, progress: dict, best: Optional[Path] = None) -> None:
        """Continue after the epoch a checkpoint's progress record names (the weights and optimizer state are
        loaded by ``load_checkpoint``). ``best``: where the run kept its best epoch's weights (the ``best``
        checkpoint beside the one resumed; default ``checkpoint_dir/best``). A checkpoint without the
        record's newer entries (history, early stopping) continues with empty ones. Raises ValueError when
        the run it continues was configured otherwise, had already stopped early, or its best epoch's
        weights are missing."""
        saved = progress.get("train_config")
        if saved is not None:
            keys = RESUME_KEYS + (("epochs",) if self.config.lr_schedule == "cosine" else ())
            for key in keys:
                if key in saved and saved[key] != getattr(self.config, key):
                    raise ValueError(f"the checkpoint was trained with {key} = {saved[key]!r}, this run has "
                                     f"{getattr(self.config, key)!r}: a resumed run must be configured as the one "
                                     f"it continues" + (" (the cosine schedule spans the planned epochs)"
                                                        if key == "epochs" else ""))
            if progress.get("samples", len(self.train)) != len(self.train) or \
                    progress.get("steps_per_epoch", self.steps) != self.steps:
                raise ValueError(f"the checkpoint was taken over {progress.get('samples')} training rows in "
                                 f"{progress.get('steps_per_epoch')} steps per epoch; this run has {len(self.train)} "
                                 f"rows in {self.steps} steps")
        early = progress.get("early_stopping")
        if early is not None and early.get("stopped"):
            raise ValueError(f"the run stopped early after epoch {progress.get('epoch')} (no better validation "
                             f"{early.get('monitor')} for {early.get('bad_epochs')} epochs); nothing to resume")
        if early is not None and early.get("best_epoch") is not None:
            if best is None and self.checkpoint_dir is not None:
                best = self.checkpoint_dir / BEST
            if best is None or not (Path(best) / ".metadata").is_file():
                raise ValueError(f"the run's best epoch ({early['best_epoch'] + 1}) was kept in a 'best' checkpoint "
                                 f"beside the one resumed, which is missing ({best})")
            self._best_path = Path(best)
        self.epoch = int(progress.get("epoch", 0))
        self.history = list(progress.get("history", []))
        if early is not None:
            self.early = dict(early)

    # -- best epoch --------------------------------------------------------------------------------------
    def _save_best(self, epoch: int, value: float) -> None:
        if self.checkpoint_dir is None:
            self._best_in_memory, self._best_path = snapshot(self.sm), None
        else:
            self._best_in_memory = None
            self._best_path = save_checkpoint(
                self.sm, self.checkpoint_dir, BEST,
                {"epoch": epoch, "monitor": self.config.monitor, "value": value, "world": self.sm.world},
                model_only=True, latest=False)

    def _restore_best(self) -> None:
        if self.early["best_epoch"] is None:
            return
        if self._best_in_memory is not None:
            restore(self.sm, self._best_in_memory)
        elif self._best_path is not None:
            load_checkpoint(self.sm, self._best_path, model_only=True)
        else:
            raise RuntimeError(f"the best epoch ({self.early['best_epoch'] + 1}) has no saved weights")

    def _validate(self, epoch: int, record: dict) -> None:
        """The validation metrics of rank 0, broadcast: every rank takes the same early-stopping decision."""
        metrics = evaluate_distributed(self.sm, self.valid, self.config.eval_batch_size)
        box = [metrics]
        dist.broadcast_object_list(box, src=0)
        metrics = box[0]
        value = monitor_value(metrics, self.config.monitor)
        record["valid"], record["monitor"] = metrics, value
        if early_stopping_step(self.early, value, epoch, self.config.patience, self.config.epochs):
            self._save_best(epoch, value)

    def _forward_loss(self, x, y, dense, epoch: int, step: int) -> tuple[torch.Tensor, float]:
        """The step's loss and its value. An error in one rank's forward or loss (a diverged model: its
        output or PIM's prior not finite) is agreed on before the backward, so that every rank stops
        there; raised alone, it would leave the others waiting in the backward's collectives until
        --dist-timeout. The failing rank raises its own error, the others DistributedInputError."""
        sm = self.sm
        error, loss, value = None, None, 0.0
        try:
            loss = sm.model.loss(sm.dmp(x, labels=y, **dense_kwargs(dense)), y)
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"loss became {value} at epoch {epoch}, step {step}")
        except Exception as err:  # noqa: BLE001  (re-raised below, after every rank knows)
            error = err
        try:
            agree(None if error is None else f"{type(error).__name__}: {error}", sm.device, "output")
        except DistributedInputError:
            if error is not None:
                raise error
            raise
        return loss, value

    # -- the loop ----------------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        """Train epochs [self.epoch, config.epochs) or until early stopping; restore the best epoch; the history."""
        sm, model, cfg, steps = self.sm, self.sm.model, self.config, self.steps
        while self.epoch < cfg.epochs and not self.early["stopped"]:
            epoch = self.epoch
            sm.dmp.train()
            sm.seed_rank(epoch)
            if hasattr(model, "set_epoch"):
                model.set_epoch(epoch)
            self.batcher.set_epoch(epoch)
            total, seen = 0.0, 0
            start = time.perf_counter()
            for step, batch in enumerate(self.batcher):
                if step >= steps:
                    break
                x, y, dense = model_input(batch, self.train)
                agree(batch_problem(sm, x, y), sm.device, "input")
                if cfg.per_step_curriculum and hasattr(model, "set_epoch"):
                    model.set_epoch(epoch + step / steps)
                if cfg.lr_schedule != "none":
                    sm.set_lr(lr_factor(cfg, epoch, step, steps))
                loss, value = self._forward_loss(x, y, dense, epoch, step)
                sm.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                sm.optimizer.step()
                total += value * len(y)
                seen += len(y)
            total, seen = all_sum([total, seen], sm.device)
            seconds = time.perf_counter() - start
            factor = lr_factor(cfg, epoch, steps - 1, steps)
            record = {"epoch": epoch, "train_loss": total / max(seen, 1), "seconds": seconds,
                      "samples_per_second": seen / max(seconds, 1e-9), "processes": sm.world,
                      "lr": sm.base_lrs[0] * factor if sm.base_lrs else None,
                      "embedding_lr": sm.embedding.lr * factor}
            if hasattr(model, "p"):
                record["p"] = model.p
            if self.valid is not None:
                self._validate(epoch, record)
            self.history.append(record)
            self.epoch = epoch + 1
            if self.checkpoint_dir is not None:
                save_checkpoint(sm, self.checkpoint_dir, f"epoch-{epoch + 1}", self.progress())
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch, record)
        self._restore_best()
        return self.history


def fit_distributed(sm: ShardedModel, train: CascadeData, config: TrainConfig, start_epoch: int = 0,
                    valid: Optional[CascadeData] = None, checkpoint_dir=None,
                    on_epoch_end: Optional[Callable[[int, dict], None]] = None, max_steps: Optional[int] = None,
                    progress: Optional[dict] = None) -> list[dict]:
    """Train for epochs [start_epoch, config.epochs) (see ``DistributedTrainer``); one record per epoch (loss
    and samples/s over all ranks, validation metrics). ``config.batch_size`` is the global batch. With
    ``checkpoint_dir`` a sharded checkpoint is saved after every epoch. ``progress``: the record of
    ``load_checkpoint``, to continue a run (its epoch, history and early-stopping state; then the history
    returned starts at the run's first epoch). ``max_steps`` stops each epoch early (tests)."""
    trainer = DistributedTrainer(sm, train, config, valid=valid, checkpoint_dir=checkpoint_dir,
                                 on_epoch_end=on_epoch_end, max_steps=max_steps)
    if progress is not None:
        trainer.load_state(progress)
    else:
        trainer.epoch = start_epoch
    return trainer.run()


@torch.no_grad()
def predict_distributed(sm: ShardedModel, data: CascadeData, batch_size: int = 16384) -> Optional[torch.Tensor]:
    """Rank 0: probabilities [N, T] in eval mode, each rank scoring its shard of the rows; other ranks: None."""
    local = max(1, batch_size // sm.world)
    batcher = local_batcher(sm, data, local, shuffle=False)
    index = batcher.order(0)
    was_training = sm.dmp.training
    sm.dmp.eval()
    out = []
    for batch in batcher:
        x, _, dense = model_input(batch, data)
        agree(sm.embedding.bad_ids(x), sm.device, "input")
        out.append(sm.dmp(x, **dense_kwargs(dense)).float())
    sm.dmp.train(was_training)
    probs = torch.cat(out) if out else torch.empty(0, data.num_tasks, device=sm.device)
    return gather_predictions(probs, index, len(data))


def metrics(probs: torch.Tensor, data: CascadeData, warn: bool = True) -> dict:
    """The record of ``pimm_fast.train.evaluate`` (``cascade_metrics``: AUC, log loss, conditional AUC, ECE,
    funnel violations, oracle AUC per task) of predictions [N, T] over all of ``data``."""
    check_finite(probs)  # a diverged model stops here, before a NaN reaches a metric or a file
    return cascade_metrics(probs, data.y, data.task_names, oracle=data.probs, warn=warn)


def evaluate_distributed(sm: ShardedModel, data: CascadeData, batch_size: int = 16384) -> Optional[dict]:
    """Rank 0: the metrics of the gathered predictions (the AUC computed once, over all rows); others: None.
    Non-finite predictions (a diverged model) stop every rank with the reason, not rank 0 alone."""
    probs = predict_distributed(sm, data, batch_size)
    result, problem = None, None
    if probs is not None:
        try:
            result = metrics(probs, data)
        except FloatingPointError as err:  # TrainingDiverged
            problem = str(err)
    agree(problem, sm.device, "predictions")
    return result
