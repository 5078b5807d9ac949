"""Label checks and the cascade policy shared by every loader.

Labels are ordered along the funnel (impression -> click -> conversion -> ...). A row breaks the cascade
when some stage is 1 while the stage before it is 0 (e.g. click = 0, conversion = 1). Policies:

* ``drop`` (default): such rows are removed and counted (``stats["cascade_dropped"]``);
* ``error``: the first such row is named in a :class:`DataFormatError`, with the total count;
* ``keep``: rows stay as they are (counted in ``stats["cascade_violations"]``); models that validate labels
  (PIMM) will refuse them in training.

Labels must be exactly 0 or 1: NaN, negative and other values are errors that name the row.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from ._bytes import DataFormatError

POLICIES = ("drop", "error", "keep")


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"unknown cascade policy {policy!r}; choose one of {POLICIES}")
    return policy


def _default_where(row: int) -> str:
    return f"row {row + 1}"


def check_labels(y: np.ndarray, task_names: Sequence[str], source: str,
                 where: Callable[[int], str] = _default_where) -> None:
    """Raise if a label is NaN, negative or anything but 0/1; ``where(i)`` names row i (0-based) in the message."""
    y = np.asarray(y)
    if y.ndim != 2 or y.shape[1] != len(task_names):
        raise ValueError(f"{source}: labels must be [N, {len(task_names)}], got shape {y.shape}")
    if y.dtype.kind in "iub":
        bad = (y != 0) & (y != 1)
    else:
        bad = ~((y == 0) | (y == 1))  # NaN compares false: caught here too
    if bad.any():
        flat = int(np.flatnonzero(bad.any(axis=1))[0])
        t = int(np.flatnonzero(bad[flat])[0])
        value = float(y[flat, t])
        kind = "NaN" if np.isnan(value) else ("negative" if value < 0 else "not 0/1")
        raise DataFormatError(f"{source}, {where(flat)}: label {task_names[t]!r} = {value:g} is {kind} "
                              f"({int(bad.any(axis=1).sum())} bad row(s) in all)")


def violations(y: np.ndarray) -> np.ndarray:
    """Boolean mask of rows that break the cascade (stage t = 1 while stage t - 1 = 0)."""
    y = np.asarray(y)
    if y.shape[1] < 2:
        return np.zeros(len(y), dtype=bool)
    return ((y[:, 1:] > 0.5) & (y[:, :-1] < 0.5)).any(axis=1)


def apply_policy(y: np.ndarray, policy: str, task_names: Sequence[str], source: str, stats: dict,
                 where: Callable[[int], str] = _default_where) -> Optional[np.ndarray]:
    """Apply the cascade policy; returns the boolean mask of rows to keep (None = keep all) and fills ``stats``."""
    check_policy(policy)
    bad = violations(y)
    count = int(bad.sum())
    stats["cascade_violations"] = stats.get("cascade_violations", 0) + count
    if count == 0:
        stats.setdefault("cascade_dropped", 0)
        return None
    if policy == "error":
        first = int(np.flatnonzero(bad)[0])
        pair = ", ".join(f"{n}={int(v)}" for n, v in zip(task_names, np.asarray(y)[first]))
        raise DataFormatError(f"{source}, {where(first)}: labels ({pair}) break the cascade "
                              f"({count} such row(s) in all; use the cascade policy 'drop' or 'keep')")
    if policy == "keep":
        stats.setdefault("cascade_dropped", 0)
        return None
    stats["cascade_dropped"] = stats.get("cascade_dropped", 0) + count
    return ~bad
