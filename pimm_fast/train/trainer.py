"""A small, fast training loop for cascade models: batches from :class:`pimm_fast.data.Batcher`, Adam."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from tqdm import tqdm

from ..data import Batcher, CascadeData
from ..modules import JaggedIds
from ..metrics import auc
from ..models.base import check_finite


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 1024
    lr: float = 2e-3
    weight_decay: float = 0.0
    seed: int = 0
    per_step_curriculum: bool = False  # epoch E fractional (epoch + step / steps) in p = max(alpha - E S, beta)
    progress: bool = True
    eval_batch_size: int = 16384

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("epochs, batch_size and eval_batch_size must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def _batcher(data: CascadeData, batch_size: int, device: torch.device, shuffle: bool, seed: int = 0) -> Batcher:
    """Batches by slicing (one permutation per epoch when shuffled); page-locked copies to a CUDA device."""
    on_cuda = device.type == "cuda"
    return Batcher(data, batch_size, shuffle=shuffle, seed=seed, device=device if on_cuda else None,
                   pin_memory=on_cuda and shuffle, bags=bool(data.bags))


def model_input(batch: tuple, data: CascadeData) -> tuple:
    """(model input, labels, dense) of a batch of ``data`` (dense: [B, K] raw floats, or None when the data
    has no dense features). With multi-valued fields the input is ``JaggedIds``: the single-valued fields,
    then the bags, in the order of ``data.model_field_dims``."""
    dense = None
    if data.dense is not None:
        *batch, dense = batch
    if not data.bags:
        x, y = batch
        return x, y, dense
    x, y, bags = batch
    fields = [x[:, f] for f in range(x.shape[1])] + [bags[name] for name in data.bag_names]
    return JaggedIds.from_fields(fields), y, dense


def _dense_kw(dense: Optional[torch.Tensor]) -> dict:
    return {} if dense is None else {"dense": dense}


def fit_dense_statistics(model: torch.nn.Module, train: CascadeData) -> None:
    """Fit the model's dense standardisation on the training split (once: a fitted model keeps its own)."""
    dense_input = getattr(model, "dense_input", None)
    if dense_input is not None and train.dense is not None and not bool(dense_input.fitted):
        dense_input.fit(train.dense)


@torch.no_grad()
def predict(model: torch.nn.Module, data: CascadeData, batch_size: int = 16384) -> torch.Tensor:
    """Probabilities [N, T] in eval mode (no labels: what inference sees)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for batch in _batcher(data, batch_size, device, shuffle=False):
        x, _, dense = model_input(batch, data)
        out.append(model(x, **_dense_kw(dense)).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, data.num_tasks)


def evaluate(model: torch.nn.Module, data: CascadeData, batch_size: int = 16384) -> dict:
    """Per-task AUC and log loss of the model on ``data``, with the oracle AUC where it is known."""
    probs = predict(model, data, batch_size)
    check_finite(probs)  # a diverged model stops here, before a NaN reaches a metric or a file
    y = data.y
    logloss = [torch.nn.functional.binary_cross_entropy(probs[:, t].clamp(1e-7, 1 - 1e-7), y[:, t]).item()
               for t in range(data.num_tasks)]
    return {
        "tasks": list(data.task_names),
        "auc": [auc(probs[:, t], y[:, t]) for t in range(data.num_tasks)],
        "logloss": logloss,
        "oracle_auc": data.oracle_auc(),
        "positives": [int(y[:, t].sum()) for t in range(data.num_tasks)],
        "samples": len(data),
    }


def fit(model: torch.nn.Module, train: CascadeData, config: TrainConfig = TrainConfig(),
        valid: Optional[CascadeData] = None, optimizer: Optional[torch.optim.Optimizer] = None,
        on_epoch_end: Optional[Callable[[int, dict], None]] = None) -> list[dict]:
    """Train ``model`` on ``train`` for ``config.epochs`` epochs; returns one record per epoch.

    Models with ``set_epoch`` (PIMM) follow their curriculum; the order of batches is drawn from
    ``config.seed``, so a run is reproducible given torch.manual_seed.
    """
    device = next(model.parameters()).device
    if optimizer is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    fit_dense_statistics(model, train)
    batcher = _batcher(train, config.batch_size, device, shuffle=True, seed=config.seed)
    steps = len(batcher)
    history = []
    for epoch in range(config.epochs):
        model.train()
        if hasattr(model, "set_epoch"):
            model.set_epoch(epoch)
        start = time.perf_counter()
        total, seen = 0.0, 0
        batcher.set_epoch(epoch)  # the order of epoch e depends only on (config.seed, e)
        bar = tqdm(batcher, total=steps, disable=not config.progress,
                   desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, mininterval=0.5)
        for step, batch in enumerate(bar):
            x, y, dense = model_input(batch, train)
            if config.per_step_curriculum and hasattr(model, "set_epoch"):
                model.set_epoch(epoch + step / steps)
            probs = model(x, labels=y, **_dense_kw(dense))
            loss = model.loss(probs, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}, step {step}")
            total += loss.item() * len(y)
            seen += len(y)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{total / seen:.4f}", p=f"{getattr(model, 'p', 0.0):.3f}")
        record = {"epoch": epoch, "train_loss": total / max(seen, 1), "seconds": time.perf_counter() - start,
                  "samples_per_second": seen / max(time.perf_counter() - start, 1e-9)}
        if hasattr(model, "p"):
            record["p"] = model.p
        if valid is not None:
            record["valid"] = evaluate(model, valid, config.eval_batch_size)
        history.append(record)
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
    return history
