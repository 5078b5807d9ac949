"""Fast batches of a :class:`CascadeData`: one permutation per epoch, then slices; no per-sample Python.

* shuffled: batch b is ``x[perm[b * B:(b + 1) * B]]``, one ``index_select`` per tensor (a row gather);
* not shuffled: batches are views of contiguous slices (no copy at all);
* ``device``: batches are moved there; with ``resident=True`` the whole split is moved once and batches are
  gathered on the device (the fastest path on a GPU that holds the data);
* ``pin_memory``: CPU batches are gathered straight into page-locked memory, so the copy to a CUDA device
  is asynchronous (``non_blocking``); torch's caching host allocator keeps a buffer until its copy is done;
* ``shard=(rank, world)``: every rank draws the same permutation (same seed and epoch) and takes every
  world-th sample from position rank; ranks get equal counts (the tail is padded by wrapping around, or cut
  with ``drop_last``), so distributed ranks run the same number of steps.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional

import torch

from .core import CascadeData


class Batcher:
    """Iterate ``(x, y)`` batches (``(x, y, bags)`` with ``bags=True``) of ``data`` in a new order per epoch;
    with ``dense`` (default: when the data has dense features) the batch's dense rows come last:
    ``(x, y, dense)`` or ``(x, y, bags, dense)``.

    The order of epoch e depends only on (seed, e): ``set_epoch(e)`` picks it (as DistributedSampler does);
    otherwise each new iteration takes the next epoch.
    """

    def __init__(self, data: CascadeData, batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, device: Optional[torch.device | str] = None, pin_memory: bool = False,
                 shard: Optional[tuple[int, int]] = None, bags: bool = False, resident: bool = False,
                 dense: Optional[bool] = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if shard is not None:
            rank, world = shard
            if world < 1 or not 0 <= rank < world:
                raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
        if bags and not data.bags:
            raise ValueError("bags=True, but the data has no multi-valued fields")
        if dense and data.dense is None:
            raise ValueError("dense=True, but the data has no dense features")
        self.dense = data.dense is not None if dense is None else bool(dense)
        self.data = data
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.device = torch.device(device) if device is not None else None
        self.shard = shard
        self.bags = bags
        on_accelerator = self.device is not None and self.device.type != "cpu"
        if pin_memory and not torch.cuda.is_available():
            raise RuntimeError("pin_memory=True needs CUDA (page-locked memory only helps copies to a GPU)")
        self.pin_memory = pin_memory and not (resident and on_accelerator)
        self.resident = resident and on_accelerator
        x, y = data.x, data.y
        if self.resident:
            x, y = x.to(self.device), y.to(self.device)
        d = data.dense if self.dense else None
        if d is not None and self.resident:
            d = d.to(self.device)
        self._x, self._y, self._d = x, y, d
        self._epoch = 0

    # ------------------------------------------------------------------------------------------------------
    def _samples(self) -> int:
        n = len(self.data)
        if self.shard is None:
            return n
        world = self.shard[1]
        return n // world if self.drop_last else math.ceil(n / world)

    def __len__(self) -> int:
        m = self._samples()
        return m // self.batch_size if self.drop_last else math.ceil(m / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)

    def order(self, epoch: int) -> Optional[torch.Tensor]:
        """The sample indices this shard visits in ``epoch`` (None: all samples in order, unsharded)."""
        n = len(self.data)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=gen)
        elif self.shard is None:
            return None
        else:
            order = torch.arange(n)
        if self.shard is not None:
            rank, world = self.shard
            m = self._samples()
            if not self.drop_last and m * world > n:  # pad by wrapping around: every rank gets m samples
                order = torch.cat([order, order[:m * world - n]])
            order = order[rank:m * world:world]
        return order

    def __iter__(self) -> Iterator[tuple]:
        epoch = self._epoch
        self._epoch += 1
        order = self.order(epoch)
        m = self._samples()
        stop = (m // self.batch_size) * self.batch_size if self.drop_last else m
        if order is not None and self.resident:
            order = order.to(self.device)
        x_all, y_all = self._x, self._y
        device = self.device
        move = device is not None and not self.resident and device.type != "cpu"
        for start in range(0, stop, self.batch_size):
            end = min(start + self.batch_size, stop)
            if order is None:
                idx = None
                xb, yb = x_all[start:end], y_all[start:end]
            else:
                idx = order[start:end]
                if self.pin_memory:
                    xb = torch.empty((end - start, x_all.shape[1]), dtype=x_all.dtype, pin_memory=True)
                    yb = torch.empty((end - start, y_all.shape[1]), dtype=y_all.dtype, pin_memory=True)
                    torch.index_select(x_all, 0, idx, out=xb)
                    torch.index_select(y_all, 0, idx, out=yb)
                else:
                    xb = torch.index_select(x_all, 0, idx)
                    yb = torch.index_select(y_all, 0, idx)
            db = None
            if self._d is not None:
                if idx is None:
                    db = self._d[start:end]
                elif self.pin_memory:
                    db = torch.empty((end - start, self._d.shape[1]), dtype=self._d.dtype, pin_memory=True)
                    torch.index_select(self._d, 0, idx, out=db)
                else:
                    db = torch.index_select(self._d, 0, idx)
            if move:
                xb = xb.to(device, non_blocking=self.pin_memory)
                yb = yb.to(device, non_blocking=self.pin_memory)
                if db is not None:
                    db = db.to(device, non_blocking=self.pin_memory)
            tail = () if db is None else (db,)
            if not self.bags:
                yield (xb, yb) + tail
                continue
            rows = torch.arange(start, end) if idx is None else idx.cpu()
            bags = {}
            for table in self.data.bags:
                for name, (ids, offsets) in table.gather(rows).items():
                    if device is not None and device.type != "cpu":
                        ids, offsets = ids.to(device), offsets.to(device)
                    bags[name] = (ids, offsets)
            yield (xb, yb, bags) + tail
