"""The training loop of cascade models: batches from :class:`pimm_fast.data.Batcher`, Adam on the dense
parameters (the fused embedding optimizes its own table in the backward), validation-driven early stopping
with the best epoch restored, an lr schedule, and checkpoints from which a run resumes bit for bit.

What makes a resumed run identical to an uninterrupted one (on the CPU): the order of epoch e is a
function of (seed, e) only; a checkpoint is taken between two steps and holds everything the next step
reads - the weights and buffers (fused-optimizer moments included), the dense optimizer's state, every
random generator (PIM's Philox keys and dropout draw from torch's), the epoch, the position in it, the
running loss of the epoch, the early-stopping record and the history. The lr and the curriculum's p are
functions of (epoch, step), recomputed rather than stored (both are also stored, for the reader).
"""
from __future__ import annotations

import copy
import hashlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm import tqdm

from ..data import Batcher, CascadeData
from ..metrics import auc, cascade_metrics
from ..modules import JaggedIds
from ..models.base import check_finite
from . import checkpoint as ckpt

LR_SCHEDULES = ("none", "cosine", "step")


@dataclass
class TrainConfig:
    """How to train. ``monitor`` picks the validation number early stopping and the best-epoch choice
    follow: "last" (the last task's AUC, default), "mean" (mean AUC over tasks), a task name (its AUC),
    or "logloss" (mean log loss over tasks, lower is better). ``patience``: stop after that many epochs
    without improvement (None: run every epoch; the best epoch is restored either way when there is
    validation data). ``lr_schedule``: "none", "cosine" (per step, from lr to lr * min_lr_ratio over the
    run) or "step" (lr * lr_gamma every lr_step_epochs epochs). ``checkpoint_every``: steps between
    checkpoints inside an epoch (0: only at epoch ends; needs an output directory)."""

    epochs: int = 3
    batch_size: int = 1024
    lr: float = 2e-3
    weight_decay: float = 0.0
    seed: int = 0
    per_step_curriculum: bool = False  # epoch E fractional (epoch + step / steps) in p = max(alpha - E S, beta)
    progress: bool = True
    eval_batch_size: int = 16384
    patience: Optional[int] = None
    monitor: str = "last"
    lr_schedule: str = "none"
    lr_gamma: float = 0.5
    lr_step_epochs: int = 1
    min_lr_ratio: float = 0.0
    checkpoint_every: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("epochs, batch_size and eval_batch_size must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 (or None), got {self.patience}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not 0 < self.lr_gamma <= 1 or self.lr_step_epochs < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("lr_gamma must lie in (0, 1], lr_step_epochs be >= 1, min_lr_ratio lie in [0, 1]")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")


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


def dense_kwargs(dense: Optional[torch.Tensor]) -> dict:
    """The model's ``dense=`` keyword for a batch: none when the data has no dense features."""
    return {} if dense is None else {"dense": dense}


def fit_dense_statistics(model: torch.nn.Module, train: CascadeData) -> None:
    """Fit the model's dense standardisation on the training split (once: a fitted model keeps its own)."""
    dense_input = getattr(model, "dense_input", None)
    if dense_input is not None and train.dense is not None and not bool(dense_input.fitted):
        dense_input.fit(train.dense)


@torch.no_grad()
def predict(model: torch.nn.Module, data: CascadeData, batch_size: int = 16384) -> torch.Tensor:
    """Probabilities [N, T] in eval mode (no labels: what inference sees), in the data's row order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for batch in _batcher(data, batch_size, device, shuffle=False):
        x, _, dense = model_input(batch, data)
        out.append(model(x, **dense_kwargs(dense)).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, data.num_tasks)


def evaluate(model: torch.nn.Module, data: CascadeData, batch_size: int = 16384, warn: bool = True) -> dict:
    """Every metric of :func:`pimm_fast.metrics.cascade_metrics` on ``data`` (AUC, log loss, conditional
    AUC, ECE, funnel violations per task; the oracle AUC where the data knows the true probabilities).
    Undefined values are None."""
    probs = predict(model, data, batch_size)
    check_finite(probs)  # a diverged model stops here, before a NaN reaches a metric or a file
    return cascade_metrics(probs, data.y, data.task_names, oracle=data.probs, warn=warn)


def monitor_value(metrics: dict, monitor: str) -> Optional[float]:
    """The number early stopping follows, oriented so that larger is better (log loss is negated)."""
    if monitor == "last":
        return metrics["auc"][-1]
    if monitor == "mean":
        values = metrics["auc"]
        return None if any(v is None for v in values) else sum(values) / len(values)
    if monitor == "logloss":
        values = metrics["logloss"]
        return None if any(v is None for v in values) else -sum(values) / len(values)
    return metrics["auc"][list(metrics["tasks"]).index(monitor)]


def early_stopping_step(early: dict, value: Optional[float], epoch: int, patience: Optional[int],
                        epochs: Optional[int] = None) -> bool:
    """Record epoch ``epoch``'s monitored ``value`` in ``early`` (best, best_epoch, bad_epochs, stopped,
    undefined_epochs); True when it is the best so far.

    An undefined value (None: a validation split with one class has no AUC) is neither an improvement nor a
    bad epoch: it is counted in ``undefined_epochs`` and never stops the run, which would otherwise end after
    ``patience`` epochs having chosen nothing. ``stopped`` is set only when epochs remain (``epochs``: the
    run's length), so a run that reaches its last epoch did not stop early."""
    if value is None:
        early["undefined_epochs"] = early.get("undefined_epochs", 0) + 1
        return False
    improved = early["best"] is None or value > early["best"]
    if improved:
        early.update(best=value, best_epoch=epoch, bad_epochs=0)
    else:
        early["bad_epochs"] += 1
    if patience is not None and early["bad_epochs"] >= patience and (epochs is None or epoch + 1 < epochs):
        early["stopped"] = True
    return improved


def early_stopping_summary(early: dict, epochs_run: int, monitor: str) -> Optional[str]:
    """One line on what validation chose, or None without validation: the restored best epoch, whether the
    run stopped early, and why nothing was restored when the monitor was never defined."""
    undefined = early.get("undefined_epochs", 0)
    if early["best_epoch"] is None:
        if not undefined:
            return None
        return (f"validation {monitor} was undefined in all {undefined} epoch(s) (a validation split with a "
                f"single class has no AUC; try --monitor logloss): no epoch chosen, the last weights are scored")
    stop = f"stopped early after epoch {epochs_run}; " if early["stopped"] else ""
    note = f" ({monitor} undefined in {undefined} epoch(s))" if undefined else ""
    return f"{stop}best validation epoch {early['best_epoch'] + 1} ({monitor} {early['best']:.4f}), restored{note}"


def check_monitor(monitor: str, task_names) -> None:
    if monitor not in ("last", "mean", "logloss") and monitor not in tuple(task_names):
        raise ValueError(f"monitor must be 'last', 'mean', 'logloss' or a task name ({', '.join(task_names)}), "
                         f"got {monitor!r}")


def lr_factor(config: TrainConfig, epoch: int, step: int, steps: int) -> float:
    """The multiplier of the base lr at (epoch, step) of a run of ``steps`` steps per epoch: a function of
    the position only, so a resumed run recomputes it (also used by the distributed loop)."""
    if config.lr_schedule == "step":
        return config.lr_gamma ** (epoch // config.lr_step_epochs)
    if config.lr_schedule == "cosine":
        progress = (epoch * steps + step) / (config.epochs * steps)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def _fused_embeddings(model: torch.nn.Module) -> list:
    from ..modules import FusedEmbedding

    return [m for m in model.modules() if isinstance(m, FusedEmbedding)]


class Trainer:
    """One training run of ``model`` on ``train``: see :func:`fit`. ``out``: the run directory that
    receives ``checkpoint.pt`` and ``best.pt`` (None: nothing written, the best weights kept in memory).
    ``run_config``: JSON-able description of the run stored in every checkpoint (the CLI's options).
    ``vocabulary``: the id encoding of the training data (:class:`pimm_fast.data.Vocabulary` or its bytes),
    stored in every checkpoint and ``best.pt`` so that a trained model encodes new raw data as training did."""

    def __init__(self, model: torch.nn.Module, train: CascadeData, config: TrainConfig = TrainConfig(),
                 valid: Optional[CascadeData] = None, optimizer: Optional[torch.optim.Optimizer] = None,
                 out: Optional[Path] = None, run_config: Optional[dict] = None, vocabulary=None,
                 on_epoch_end: Optional[Callable[[int, dict], None]] = None,
                 desc: str = "train", position: int = 0):
        if len(train) == 0:
            raise ValueError("the training split is empty")
        check_monitor(config.monitor, train.task_names)
        if config.checkpoint_every and out is None:
            raise ValueError("checkpoint_every needs an output directory (out=...)")
        self.model, self.train, self.valid, self.config = model, train, valid, config
        fit_dense_statistics(model, train)  # before a resumed state: a checkpoint brings its own statistics
        self.device = next(model.parameters()).device
        self.optimizer = optimizer if optimizer is not None else torch.optim.Adam(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.fused = _fused_embeddings(model)
        self.base_fused_lrs = [m.lr for m in self.fused]
        self.scaled = [m for m in model.modules() if callable(getattr(m, "scale_lr", None))]  # TorchRec tables
        self.out = Path(out) if out is not None else None
        self.run_config = dict(run_config or {})
        self.vocabulary = vocabulary if vocabulary is None or isinstance(vocabulary, bytes) else vocabulary.to_bytes()
        self.on_epoch_end = on_epoch_end
        self.desc, self.position = desc, position
        self.batcher = _batcher(train, config.batch_size, self.device, shuffle=True, seed=config.seed)
        self.steps = len(self.batcher)
        self.state = {"epoch": 0, "position": 0, "global_step": 0, "loss_sum": 0.0, "seen": 0,
                      "epoch_seconds": 0.0, "finished": False}
        self.early = {"monitor": config.monitor, "best": None, "best_epoch": None, "bad_epochs": 0,
                      "stopped": False, "undefined_epochs": 0}
        self.history: list[dict] = []
        self.p_trace: list[tuple[float, float]] = []  # (fractional epoch, p) of the curriculum, for plots
        self._best_in_memory: Optional[dict] = None

    # -- schedules -----------------------------------------------------------------------------------------
    def lr_factor(self, epoch: int, step: int) -> float:
        return lr_factor(self.config, epoch, step, self.steps)

    def _set_lr(self, factor: float) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        for module, base in zip(self.fused, self.base_fused_lrs):
            module.lr = base * factor
        for module in self.scaled:
            module.scale_lr(factor)

    def _curriculum(self, epoch: float) -> None:
        if hasattr(self.model, "set_epoch"):
            self.model.set_epoch(epoch)

    def _order_digest(self, epoch: int) -> str:
        order = self.batcher.order(epoch)
        return hashlib.sha256(order.numpy().tobytes()).hexdigest() if order is not None else ""

    # -- checkpoints ---------------------------------------------------------------------------------------
    def _model_info(self) -> dict:
        return {"class": type(self.model).__name__, "field_dims": list(self.train.model_field_dims),
                "task_names": list(self.train.task_names), "num_dense": self.train.num_dense,
                "dense_names": list(self.train.dense_names)}

    def state_dict(self) -> dict:
        """The whole training state (a checkpoint's payload)."""
        model = self.model
        curriculum = ({"epoch": float(model.epoch), "p": float(model.p)} if hasattr(model, "set_epoch") else None)
        return {
            "format": ckpt.FORMAT, "version": ckpt.VERSION, "kind": "checkpoint",
            "model": model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "fused_embeddings": [{"optimizer": m.optimizer, "lr": m.lr, "base_lr": base,
                                  "betas": list(m.betas), "eps": m.eps}
                                 for m, base in zip(self.fused, self.base_fused_lrs)],
            "train_state": dict(self.state, curriculum=curriculum, steps_per_epoch=self.steps),
            "data_order": {"seed": self.config.seed, "epoch": self.state["epoch"],
                           "position": self.state["position"], "batch_size": self.config.batch_size,
                           "samples": len(self.train), "order_sha256": self._order_digest(self.state["epoch"])},
            "rng": ckpt.rng_state(),
            "early_stopping": dict(self.early),
            "history": copy.deepcopy(self.history),
            "p_trace": list(self.p_trace),
            "train_config": asdict(self.config),
            "config": self.run_config,
            "model_info": self._model_info(),
            "vocabulary": self.vocabulary,
        }

    def load_state_dict(self, payload: dict) -> None:
        """Continue from a checkpoint written by a run with the same model, data and configuration."""
        try:
            state, order = payload["train_state"], payload["data_order"]
            if order["samples"] != len(self.train) or order["batch_size"] != self.config.batch_size \
                    or order["seed"] != self.config.seed or state["steps_per_epoch"] != self.steps:
                raise ckpt.CheckpointError(
                    f"the checkpoint was taken over {order['samples']} training rows in batches of "
                    f"{order['batch_size']} (seed {order['seed']}); this run has {len(self.train)} rows, batches of "
                    f"{self.config.batch_size}, seed {self.config.seed}")
            ckpt.check_same_vocabulary(payload.get("vocabulary"), self.vocabulary)
            if not state["finished"] and order["order_sha256"] != self._order_digest(state["epoch"]):
                raise ckpt.CheckpointError("the data order of this run differs from the checkpoint's "
                                           "(another data split or batcher)")
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            self.state = {k: state[k] for k in self.state}
            self.early = dict(payload["early_stopping"])
            self.history = copy.deepcopy(payload["history"])
            self.p_trace = [tuple(x) for x in payload.get("p_trace", [])]
            ckpt.set_rng_state(payload["rng"])
        except KeyError as err:
            raise ckpt.CheckpointError(f"the checkpoint is damaged: it has no {err.args[0]!r} entry") from None
        except RuntimeError as err:  # load_state_dict: missing / unexpected / mis-shaped tensors
            first = str(err).strip().splitlines()[0]
            raise ckpt.CheckpointError(f"the checkpoint does not fit this model: {first[:200]}") from None

    def _save(self) -> None:
        if self.out is not None:
            ckpt.save(self.out / ckpt.CHECKPOINT, self.state_dict())

    def _save_best(self, epoch: int, value: float) -> None:
        state = self.model.state_dict()
        if self.out is None:
            self._best_in_memory = {k: v.detach().clone() for k, v in state.items()}
            return
        ckpt.save(self.out / ckpt.BEST, {"format": ckpt.FORMAT, "version": ckpt.VERSION, "kind": "best",
                                         "model": state, "epoch": epoch, "monitor": self.config.monitor,
                                         "value": value, "config": self.run_config,
                                         "model_info": self._model_info(), "vocabulary": self.vocabulary})

    def _restore_best(self) -> None:
        if self.early["best_epoch"] is None:
            return
        if self.out is None:
            state = self._best_in_memory
        else:
            state = ckpt.load(self.out / ckpt.BEST, kind="best")["model"]
        self.model.load_state_dict(state)

    # -- the loop ------------------------------------------------------------------------------------------
    def _end_of_epoch(self, epoch: int) -> dict:
        st = self.state
        record = {"epoch": epoch, "train_loss": st["loss_sum"] / max(st["seen"], 1),
                  "seconds": st["epoch_seconds"], "samples_per_second": st["seen"] / max(st["epoch_seconds"], 1e-9),
                  "lr": self.base_lrs[0] * self.lr_factor(epoch, self.steps - 1) if self.base_lrs else None}
        if hasattr(self.model, "p"):
            record["p"] = self.model.p
        if self.valid is not None:
            # an undefined AUC is reported once, by early_stopping_summary, not warned every epoch
            metrics = evaluate(self.model, self.valid, self.config.eval_batch_size, warn=False)
            record["valid"] = metrics
            value = monitor_value(metrics, self.config.monitor)
            record["monitor"] = value
            if early_stopping_step(self.early, value, epoch, self.config.patience, self.config.epochs):
                self._save_best(epoch, value)
        self.history.append(record)
        st.update(epoch=epoch + 1, position=0, loss_sum=0.0, seen=0, epoch_seconds=0.0)
        return record

    def run(self) -> list[dict]:
        """Train until the last epoch or early stopping; restore the best epoch; returns the history."""
        cfg, model, st = self.config, self.model, self.state
        if st["finished"]:
            return self.history
        bar = tqdm(total=cfg.epochs * self.steps, initial=st["global_step"], disable=not cfg.progress,
                   desc=self.desc, position=self.position, leave=False, mininterval=0.5)
        try:
            while st["epoch"] < cfg.epochs and not self.early["stopped"]:
                epoch = st["epoch"]
                model.train()
                self._curriculum(epoch)
                self.batcher.set_epoch(epoch)
                batches = iter(self.batcher)
                for _ in range(st["position"]):  # resumed mid-epoch: the same order, these are done
                    next(batches)
                started = time.perf_counter()
                for step in range(st["position"], self.steps):
                    x, y, dense = model_input(next(batches), self.train)
                    if cfg.per_step_curriculum:
                        self._curriculum(epoch + step / self.steps)
                    if hasattr(model, "p") and (step == 0 or cfg.per_step_curriculum and step % max(1, self.steps // 20) == 0):
                        self.p_trace.append((epoch + step / self.steps, float(model.p)))
                    self._set_lr(self.lr_factor(epoch, step))
                    probs = model(x, labels=y, **dense_kwargs(dense))
                    loss = model.loss(probs, y)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                    value = loss.item()
                    if not math.isfinite(value):
                        raise FloatingPointError(f"loss became {value} at epoch {epoch}, step {step}")
                    st["loss_sum"] += value * len(y)
                    st["seen"] += len(y)
                    st["position"] = step + 1
                    st["global_step"] += 1
                    bar.update(1)
                    if step % 50 == 0:
                        shown = {"p": f"{model.p:.3f}"} if hasattr(model, "p") else {}  # PIMM's curriculum
                        bar.set_postfix(epoch=epoch + 1, loss=f"{st['loss_sum'] / st['seen']:.4f}", **shown)
                    if cfg.checkpoint_every and st["global_step"] % cfg.checkpoint_every == 0 \
                            and step + 1 < self.steps:  # the epoch-end checkpoint follows the last step
                        st["epoch_seconds"] += time.perf_counter() - started
                        started = time.perf_counter()
                        self._save()
                st["epoch_seconds"] += time.perf_counter() - started
                record = self._end_of_epoch(epoch)
                if st["epoch"] >= cfg.epochs or self.early["stopped"]:
                    self._restore_best()
                    st["finished"] = True
                self._save()
                if self.on_epoch_end is not None:
                    self.on_epoch_end(epoch, record)
        finally:
            bar.close()
        return self.history


def fit(model: torch.nn.Module, train: CascadeData, config: TrainConfig = TrainConfig(),
        valid: Optional[CascadeData] = None, optimizer: Optional[torch.optim.Optimizer] = None,
        on_epoch_end: Optional[Callable[[int, dict], None]] = None, out: Optional[Path] = None,
        run_config: Optional[dict] = None) -> list[dict]:
    """Train ``model`` on ``train`` for ``config.epochs`` epochs; returns one record per epoch.

    Models with ``set_epoch`` (PIMM) follow their curriculum; the order of batches is drawn from
    ``config.seed``, so a run is reproducible given torch.manual_seed. With ``valid``, each epoch is
    evaluated there, early stopping follows ``config.monitor`` / ``config.patience``, and the best
    epoch's weights are restored at the end. ``out``: a run directory for checkpoints (see Trainer).
    """
    return Trainer(model, train, config, valid=valid, optimizer=optimizer, out=out, run_config=run_config,
                   on_epoch_end=on_epoch_end).run()


__all__ = ["LR_SCHEDULES", "TrainConfig", "Trainer", "auc", "evaluate", "fit", "lr_factor", "model_input",
           "monitor_value", "predict"]
