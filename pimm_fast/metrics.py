"""Evaluation metrics of cascade predictions, computed exactly over the whole evaluation set.

* ``auc``: area under the ROC curve, ties counted as one half (the Mann-Whitney U statistic), in float64;
* ``log_loss``: mean binary cross-entropy, probabilities clipped to [eps, 1 - eps];
* ``conditional_auc``: the AUC of stage t among the samples that passed stage t - 1 (purchase among
  clicks): how well the model ranks *within* the previous stage, which the entire-space AUC mixes with
  ranking the previous stage itself;
* ``expected_calibration_error``: sum over equal-width probability bins of (bin share) * |mean predicted
  - observed rate|;
* ``funnel_violations``: the share of samples whose prediction rises along the funnel
  (yhat_t > yhat_{t-1}), which a cascade never does with its true probabilities (0 is consistent).

``cascade_metrics`` gathers all of them per task; an undefined value (a task with a single class in the
evaluation set) is ``None`` there, with a warning, so that it serialises as JSON ``null``.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence

import torch


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).cpu()


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve, ties counted as one half (the Mann-Whitney U statistic).

    nan when the labels hold a single class (AUC is undefined then).
    """
    scores = _flat(scores).double()
    labels = _flat(labels)
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


def log_loss(probs: torch.Tensor, labels: torch.Tensor, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy in float64, probabilities clipped to [eps, 1 - eps]; nan for no samples."""
    p = _flat(probs).double().clamp(eps, 1 - eps)
    y = _flat(labels).double()
    if p.shape != y.shape:
        raise ValueError(f"probs and labels differ in size: {p.numel()} vs {y.numel()}")
    if p.numel() == 0:
        return math.nan
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


def conditional_auc(scores: torch.Tensor, labels: torch.Tensor, passed: torch.Tensor) -> float:
    """AUC of ``scores`` against ``labels`` among the samples with ``passed`` = 1 (e.g. the clicked ones)."""
    keep = _flat(passed) > 0.5
    return auc(_flat(scores)[keep], _flat(labels)[keep])


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """sum_b n_b / N * |mean(p in b) - mean(y in b)| over ``bins`` equal-width bins of [0, 1]."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    p = _flat(probs).double()
    y = _flat(labels).double()
    if p.shape != y.shape:
        raise ValueError(f"probs and labels differ in size: {p.numel()} vs {y.numel()}")
    if p.numel() == 0:
        return math.nan
    which = (p * bins).long().clamp(0, bins - 1)
    sum_p = torch.bincount(which, weights=p, minlength=bins)
    sum_y = torch.bincount(which, weights=y, minlength=bins)
    return float((sum_p - sum_y).abs().sum() / p.numel())  # n_b |mean_p - mean_y| = |sum_p - sum_y|


def funnel_violations(probs: torch.Tensor) -> list[float]:
    """For t = 1..T-1: the share of samples with probs[:, t] > probs[:, t - 1]."""
    if probs.dim() != 2:
        raise ValueError(f"probs must be [N, T], got {list(probs.shape)}")
    p = probs.detach().cpu()
    if p.shape[0] == 0:
        return [math.nan] * (p.shape[1] - 1)
    return [float((p[:, t] > p[:, t - 1]).double().mean()) for t in range(1, p.shape[1])]


def _none_if_nan(value: float) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else float(value)


def cascade_metrics(probs: torch.Tensor, labels: torch.Tensor, task_names: Optional[Sequence[str]] = None,
                    oracle: Optional[torch.Tensor] = None, ece_bins: int = 15, warn: bool = True) -> dict:
    """Every metric of the module, per task, for predictions ``probs`` [N, T] of labels [N, T].

    Returns lists indexed by task: ``auc``, ``logloss``, ``conditional_auc`` (None for task 0),
    ``ece``, ``funnel_violation`` (None for task 0), ``oracle_auc`` (AUC of ``oracle``, the true
    probabilities, where given), ``positives``; plus ``tasks`` and ``samples``. Undefined values are
    None; a task with a single class in the set is named in a warning.
    """
    if probs.dim() != 2 or probs.shape != labels.shape:
        raise ValueError(f"probs and labels must both be [N, T], got {list(probs.shape)} and {list(labels.shape)}")
    T = probs.shape[1]
    names = list(task_names) if task_names is not None else [f"task{t}" for t in range(T)]
    if len(names) != T:
        raise ValueError(f"{len(names)} task names for {T} tasks")
    probs, labels = probs.detach().cpu(), labels.detach().cpu()
    out = {"tasks": names, "auc": [], "logloss": [], "conditional_auc": [], "ece": [], "funnel_violation": [],
           "oracle_auc": [], "positives": [], "samples": int(probs.shape[0])}
    violations = funnel_violations(probs) if T > 1 else []
    for t, name in enumerate(names):
        value = auc(probs[:, t], labels[:, t])
        if math.isnan(value) and warn:
            warnings.warn(f"task {name!r} has a single class in the evaluation set ({probs.shape[0]} samples): "
                          f"its AUC is undefined (null)", RuntimeWarning, stacklevel=2)
        out["auc"].append(_none_if_nan(value))
        out["logloss"].append(_none_if_nan(log_loss(probs[:, t], labels[:, t])))
        out["conditional_auc"].append(None if t == 0 else
                                      _none_if_nan(conditional_auc(probs[:, t], labels[:, t], labels[:, t - 1])))
        out["ece"].append(_none_if_nan(expected_calibration_error(probs[:, t], labels[:, t], ece_bins)))
        out["funnel_violation"].append(None if t == 0 else _none_if_nan(violations[t - 1]))
        out["oracle_auc"].append(None if oracle is None else _none_if_nan(auc(oracle[:, t], labels[:, t])))
        out["positives"].append(int((labels[:, t] > 0.5).sum()))
    return out
