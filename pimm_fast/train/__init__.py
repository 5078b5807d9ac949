"""Training loop, evaluation and metrics."""
from ..metrics import auc
from .trainer import TrainConfig, evaluate, fit, predict

__all__ = ["auc", "TrainConfig", "evaluate", "fit", "predict"]
