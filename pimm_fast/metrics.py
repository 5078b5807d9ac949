"""Evaluation metrics."""
from __future__ import annotations

import math

import torch


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve, ties counted as one half (the Mann-Whitney U statistic).

    nan when the labels hold a single class (AUC is undefined then).
    """
    scores = scores.detach().reshape(-1).double().cpu()
    labels = labels.detach().reshape(-1).cpu()
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels differ in size: {scores.numel()} vs {labels.numel()}")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    positive = labels > 0.5
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = torch.argsort(scores)
    _, inverse, counts = torch.unique_consecutive(scores[order], return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2  # 1-based average rank of each group of ties
    rank_sum = mean_rank[inverse][positive[order]].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
