"""Run directories and their checkpoints: written atomically, read with checks that name the problem.

A run directory (``--out DIR``) holds ``checkpoint.pt`` (the latest state, rewritten at every epoch end and
every ``checkpoint_every`` steps), ``best.pt`` (the weights of the best validation epoch) and
``config.json`` (the run's configuration). Both ``.pt`` files are dicts whose ``"model"`` is the model's
state_dict, so ``torch.load(DIR / "checkpoint.pt")["model"]`` works without pimm_fast; they hold only
tensors, numbers, strings, lists, tuples and dicts, so they load with ``weights_only=True``.

Every write goes to a temporary file in the same directory, is flushed and fsync'ed, then renamed over
the target (and the directory fsync'ed): a crash, SIGKILL or full disk leaves either the old file or
the new one, never a mix.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..data._bytes import fsync_dir

FORMAT = "pimm_fast.checkpoint"
VERSION = 1
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
CONFIG = "config.json"
RESULTS = "results.json"  # a run's (and compare's) report
VOCABULARY = "vocabulary.txt"  # the id encoding (pimm_fast.data.Vocabulary's text), also inside every checkpoint
SHARDED = "sharded"  # a train --distributed --out run directory's torch.distributed.checkpoint directories


class CheckpointError(Exception):
    """A checkpoint that cannot be used: missing, truncated, foreign, or not matching the run."""


def atomic_write(path: Path, write) -> None:
    """``write(f)`` into a temporary file beside ``path``, fsync, rename: a reader sees the old file or the
    whole new one, never a part (the temporary file is removed if anything fails)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # the rename itself survives a crash


def save(path: Path, payload: dict) -> None:
    """``torch.save(payload)`` to ``path`` atomically (temporary file, fsync, rename)."""
    atomic_write(path, lambda f: torch.save(payload, f))


def save_json(path: Path, payload: Any) -> None:
    """JSON to ``path`` atomically; NaN and infinities are refused (they are not JSON)."""
    text = json.dumps(payload, indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def load(path: Path, kind: Optional[str] = None) -> dict:
    """A pimm_fast checkpoint file, checked: CheckpointError with a one-line reason when it is missing,
    truncated or damaged, not a pimm_fast checkpoint, of another format version, or not of ``kind``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path} is truncated or not a torch checkpoint ({short_reason(err)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pimm_fast checkpoint (no format {FORMAT!r} in it)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} is a checkpoint of format version {payload.get('version')!r}; "
                              f"this pimm_fast reads version {VERSION}")
    for key in ("model", "config", "kind"):
        if key not in payload:
            raise CheckpointError(f"{path} is damaged: it has no {key!r} entry")
    if kind is not None and payload["kind"] != kind:
        raise CheckpointError(f"{path} is a {payload['kind']!r} checkpoint, not a {kind!r} one")
    return payload


def save_vocabulary(directory: Path, vocabulary) -> None:
    """``DIR/vocabulary.txt``, atomically: the run's id encoding (a Vocabulary or its bytes), readable
    without torch (the C++ scorer's format, docs/data.md)."""
    data = vocabulary if isinstance(vocabulary, bytes) else vocabulary.to_bytes()
    atomic_write(Path(directory) / VOCABULARY, lambda f: f.write(data))


def check_same_vocabulary(saved: Optional[bytes], current) -> None:
    """A resumed run must number its data as the run it continues did (``saved``: that run's vocabulary bytes,
    ``current``: this run's, bytes or a Vocabulary; None skips the check): the same rows with other values
    (an edited file) pass the row-count and order checks, and would train embeddings under other ids' codes."""
    if saved is None or current is None:
        return
    from ..data.vocab import Vocabulary

    now = current if isinstance(current, Vocabulary) else Vocabulary.from_bytes(current)
    if now.to_bytes() != saved:
        why = now.difference(Vocabulary.from_bytes(saved))
        raise CheckpointError(f"the data are numbered otherwise than when the checkpoint was taken ({why}; these "
                              f"data first, the checkpoint's second): they changed since; resume over the same data")


def run_vocabulary(directory: Path, payload: Optional[dict] = None) -> Optional[bytes]:
    """The vocabulary of a run: the checkpoint's own (``payload``), else ``DIR/vocabulary.txt``, else None (a
    run trained before vocabularies were saved)."""
    if payload is not None and payload.get("vocabulary"):
        return payload["vocabulary"]
    directory = Path(directory)
    path = (directory if directory.is_dir() else directory.parent) / VOCABULARY
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise CheckpointError(f"{path} cannot be read ({err})") from None


def short_reason(err: BaseException, limit: int = 200) -> str:
    """What went wrong, in one short line: torch's weights-only errors bury the cause ("Unsupported operand
    103", "unsupported GLOBAL os.stat_result") among lines of advice; other messages keep their first line,
    or its first sentence when longer than ``limit``, cut at a word boundary (with "...") if still too long."""
    text = str(err).strip()
    if not text:
        return type(err).__name__
    if text.startswith("Weights only load failed"):
        causes = [line.strip() for line in text.splitlines()[1:] if line.strip() and not line.startswith(
            ("Please file", "Check the documentation", "WeightsUnpickler error"))]
        text = "a weights-only load failed: " + (causes[0] if causes else "unsupported content")
    line = " ".join(text.splitlines()[0].split())
    if len(line) > limit and ". " in line:  # the first sentence says what; the rest is advice
        line = line[:line.index(". ")]
    if len(line) <= limit:
        return line
    return line[:limit].rsplit(" ", 1)[0] + " ..."


def run_checkpoint(directory: Path) -> Path:
    """``DIR/checkpoint.pt`` of a run directory, with a clear error when DIR is not one."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"no run directory at {directory}")
    return directory / CHECKPOINT


def model_checkpoint(directory: Path) -> Path:
    """The weights a finished or interrupted run stands for: ``best.pt`` when validation chose an epoch,
    else ``checkpoint.pt``. A path to a ``.pt`` file is taken as it is."""
    directory = Path(directory)
    if directory.is_file():
        return directory
    if not directory.is_dir():
        raise CheckpointError(f"no run directory or checkpoint file at {directory}")
    best = directory / BEST
    return best if best.is_file() else directory / CHECKPOINT


# ---------------------------------------------------------------------------------------------------------
# random number generators: every one that a run can draw from, in a form weights_only can load

def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "cuda": [torch.cuda.get_rng_state(d) for d in range(torch.cuda.device_count())]
             if torch.cuda.is_available() else []}
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    cuda = state.get("cuda", [])
    if cuda and torch.cuda.is_available():
        for device, s in enumerate(cuda[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, device)
