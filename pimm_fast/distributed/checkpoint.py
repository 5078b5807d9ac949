"""Reading a ``train --distributed`` run in one process, without TorchRec or a process group.

The run directory (``--out DIR``) holds ``config.json``, ``results.json`` and ``sharded/`` (``epoch-N/``,
``latest``, ``best/``: torch.distributed.checkpoint directories). Their files are plain torch, so
evaluate, predict and export read them here with ``torch.distributed.checkpoint`` alone; only training
(``parallel.py``, ``loop.py``) needs TorchRec.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UsageError
from ..train.checkpoint import CONFIG, SHARDED

TABLE_KEY = "embedding.ebc.embedding_bags.t{}.weight"  # TorchRecEmbedding's table of field f


def is_run_directory(path: Path) -> bool:
    """A run directory written by ``train --distributed --out``: config.json and the sharded checkpoints."""
    path = Path(path)
    return (path / CONFIG).is_file() and (path / SHARDED).is_dir()


def is_sharded_checkpoint(path: Path) -> bool:
    """A --sharded-checkpoint directory (``latest`` pointer) or one of its checkpoints (``.metadata``)."""
    path = Path(path)
    return path.is_dir() and ((path / "latest").is_file() or (path / ".metadata").is_file())


def run_weights(directory: Path) -> Path:
    """The checkpoint a distributed run stands for: ``DIR/sharded/best`` (the best validation epoch) when the
    run kept one, else the last epoch's (``DIR/sharded/latest`` names it)."""
    sharded = Path(directory) / SHARDED
    best = sharded / "best"
    if (best / ".metadata").is_file():
        return best
    pointer = sharded / "latest"
    if not pointer.is_file():
        raise UsageError(f"{directory} holds no finished epoch yet ({sharded} has no 'latest' checkpoint)")
    path = sharded / pointer.read_text().strip()
    if not (path / ".metadata").is_file():
        raise UsageError(f"{path} (named by {pointer}) is not a torch.distributed.checkpoint directory (no .metadata)")
    return path


def load_in_one_process(state: dict, path: Path) -> None:
    """``dcp.load`` of ``state`` from ``path`` without a process group (its warning that it assumes one
    process is silenced: it does)."""
    import warnings

    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*load in a single process")
        dcp.load(state, checkpoint_id=str(path), no_dist=True)


def read_sharded_weights(path: Path, embed_dim: int, num_fields: int) -> dict:
    """The model part of a sharded checkpoint as a one-process state_dict: the TorchRec tables t0..t{F-1}
    (stored D_pad wide) become FieldEmbedding's ``embedding.weight`` [sum of rows, D], the dense parameters
    and buffers keep their names. torch.distributed.checkpoint reassembles each table from whatever ranks
    saved its shards; this reads whole tables, so they must fit in this process's memory."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    except Exception as err:  # noqa: BLE001: unreadable or foreign metadata
        raise UsageError(f"{path} is not a readable torch.distributed.checkpoint ({type(err).__name__}: {err})") \
            from None
    state = {key[len("model."):]: torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
             for key, meta in saved.items() if key.startswith("model.") and isinstance(meta, TensorStorageMetadata)}
    missing = [TABLE_KEY.format(f) for f in range(num_fields) if TABLE_KEY.format(f) not in state]
    if missing:
        raise UsageError(f"{path} does not hold the tables of the run's {num_fields} fields (missing {missing[0]})")
    load_in_one_process({"model": state}, path)
    tables = [state.pop(TABLE_KEY.format(f))[:, :embed_dim] for f in range(num_fields)]
    state["embedding.weight"] = torch.cat(tables)
    return state
