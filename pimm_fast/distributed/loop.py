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
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..data import Batcher, CascadeData
from ..metrics import auc
from ..train.trainer import TrainConfig, dense_kwargs, model_input
from .parallel import ShardedModel, agree, all_sum, gather_predictions, save_checkpoint


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


def fit_distributed(sm: ShardedModel, train: CascadeData, config: TrainConfig, start_epoch: int = 0,
                    valid: Optional[CascadeData] = None, checkpoint_dir=None,
                    on_epoch_end: Optional[Callable[[int, dict], None]] = None, max_steps: Optional[int] = None) -> list[dict]:
    """Train for epochs [start_epoch, config.epochs); one record per epoch (loss and samples/s over all
    ranks). ``config.batch_size`` is the global batch. With ``checkpoint_dir`` a sharded checkpoint is
    saved after every epoch. ``max_steps`` stops each epoch early (tests)."""
    local = check_global_batch(config.batch_size, sm.world)
    batcher = local_batcher(sm, train, local, shuffle=True, seed=config.seed)
    steps = len(batcher) if max_steps is None else min(len(batcher), max_steps)
    model, history = sm.model, []
    for epoch in range(start_epoch, config.epochs):
        sm.dmp.train()
        sm.seed_rank(epoch)
        if hasattr(model, "set_epoch"):
            model.set_epoch(epoch)
        batcher.set_epoch(epoch)
        total, seen = 0.0, 0
        start = time.perf_counter()
        for step, batch in enumerate(batcher):
            if step >= steps:
                break
            x, y, dense = model_input(batch, train)
            agree(batch_problem(sm, x, y), sm.device, "input")
            if config.per_step_curriculum and hasattr(model, "set_epoch"):
                model.set_epoch(epoch + step / steps)
            probs = sm.dmp(x, labels=y, **dense_kwargs(dense))
            loss = model.loss(probs, y)
            sm.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            sm.optimizer.step()
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"rank {sm.rank}: loss became {value} at epoch {epoch}, step {step}")
            total += value * len(y)
            seen += len(y)
        total, seen = all_sum([total, seen], sm.device)
        seconds = time.perf_counter() - start
        record = {"epoch": epoch, "train_loss": total / max(seen, 1), "seconds": seconds,
                  "samples_per_second": seen / max(seconds, 1e-9), "processes": sm.world}
        if hasattr(model, "p"):
            record["p"] = model.p
        if valid is not None:
            record["valid"] = evaluate_distributed(sm, valid, config.eval_batch_size)
        if checkpoint_dir is not None:
            save_checkpoint(sm, checkpoint_dir, f"epoch-{epoch + 1}",
                            {"epoch": epoch + 1, "world": sm.world, "seed": sm.seed, "record": record})
        history.append(record)
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
    return history


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


def metrics(probs: torch.Tensor, data: CascadeData) -> dict:
    """Per-task AUC and log loss of predictions [N, T] (pimm_fast.train.evaluate's record)."""
    y = data.y
    return {
        "tasks": list(data.task_names),
        "auc": [auc(probs[:, t], y[:, t]) for t in range(data.num_tasks)],
        "logloss": [F.binary_cross_entropy(probs[:, t].clamp(1e-7, 1 - 1e-7), y[:, t]).item()
                    for t in range(data.num_tasks)],
        "oracle_auc": data.oracle_auc(),
        "positives": [int(y[:, t].sum()) for t in range(data.num_tasks)],
        "samples": len(data),
    }


def evaluate_distributed(sm: ShardedModel, data: CascadeData, batch_size: int = 16384) -> Optional[dict]:
    """Rank 0: the metrics of the gathered predictions (the AUC computed once, over all rows); others: None."""
    probs = predict_distributed(sm, data, batch_size)
    result = metrics(probs, data) if probs is not None else None
    if dist.get_world_size() > 1:
        dist.barrier()
    return result
