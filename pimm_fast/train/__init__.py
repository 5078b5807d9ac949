"""Training loop (early stopping, lr schedules, exact-resume checkpoints), evaluation, experiments."""
from ..metrics import auc, cascade_metrics
from .checkpoint import CheckpointError
from .trainer import TrainConfig, Trainer, evaluate, fit, predict

__all__ = ["auc", "cascade_metrics", "CheckpointError", "TrainConfig", "Trainer", "evaluate", "fit", "predict"]
