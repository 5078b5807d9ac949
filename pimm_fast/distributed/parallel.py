"""Process group, sharding (planner + DistributedModelParallel), optimizers, checkpoints, gathers.

``shard_model(model, ...)`` takes a pimm_fast model whose ``embedding`` is a ``TorchRecEmbedding(sharded=True)``
and returns a ``ShardedModel``: the tables sharded table-wise or row-wise (never ``data_parallel``: the
in-backward optimizer would silently skip such a table), the dense part under DDP, a keyed optimizer
(fused table optimizers + Adam on the dense parameters) whose state ``torch.distributed.checkpoint`` saves
and reshards.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

from . import require_torchrec
from .checkpoint import load_in_one_process
from .embedding import TorchRecEmbedding, table_init

require_torchrec()

from torch.distributed._shard.sharded_tensor import ShardedTensor  # noqa: E402
from torchrec.distributed.embedding_types import EmbeddingComputeKernel  # noqa: E402
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder  # noqa: E402
from torchrec.distributed.model_parallel import DistributedModelParallel  # noqa: E402
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology  # noqa: E402
from torchrec.distributed.types import ShardingEnv, ShardingType  # noqa: E402
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper  # noqa: E402
from torchrec.optim.optimizers import in_backward_optimizer_filter  # noqa: E402

SHARDINGS = {"table_wise": ShardingType.TABLE_WISE.value, "row_wise": ShardingType.ROW_WISE.value}
DEFAULT_TIMEOUT_S = 300.0


class DistributedInputError(RuntimeError):
    """A rank found bad input (or another rank did): raised on every rank, so none waits in a collective."""


# ----------------------------------------------------------------------------------------------------
# process group
# ----------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(timeout_s: float = DEFAULT_TIMEOUT_S, device: Optional[str] = None) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process; gloo on CPU, NCCL on GPU.

    Under torchrun the rank and world come from its environment; run directly, the process is rank 0 of
    a world of 1. ``timeout_s`` bounds every collective: a rank left waiting (another rank failed or took
    a different number of steps) gets an error instead of hanging for torch's default 30 minutes.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_type = torch.device(device).type
    if device_type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    backend = "nccl" if device_type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=float(timeout_s))
    if not dist.is_initialized():
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend, timeout=timeout)
        else:
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                                    timeout=timeout)
    return dist.get_rank(), dist.get_world_size(), dev


def close_process_group() -> None:
    """Destroy the process group (a rank that exits with it alive may abort at interpreter exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def agree(problem: Optional[str], device: torch.device, what: str = "input") -> None:
    """Every rank learns whether any rank found a problem (one small all-reduce), and all raise together.

    Without it, a rank that raises leaves the others waiting in the next collective until the timeout.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    flags = torch.zeros(world, dtype=torch.int32, device=device)
    if problem is not None:
        flags[rank] = 1
    dist.all_reduce(flags)
    bad = flags.nonzero().flatten().tolist()
    if not bad:
        return
    if problem is not None:
        others = [r for r in bad if r != rank]
        raise DistributedInputError(f"rank {rank}: bad {what}: {problem}" +
                                    (f" (ranks {others} also found bad {what})" if others else ""))
    raise DistributedInputError(f"rank {rank}: stopped because rank(s) {bad} found bad {what} (see their error)")


def explain_timeout(err: BaseException, timeout_s: float) -> Optional[str]:
    """A message for a collective that timed out, or None when ``err`` is something else."""
    text = str(err).lower()
    if isinstance(err, (RuntimeError, dist.DistError)) and ("timed out" in text or "timeout" in text):
        return (f"rank {dist.get_rank() if dist.is_initialized() else '?'}: a collective waited longer than "
                f"{timeout_s:g} s (--dist-timeout): another rank failed or ran a different number of steps; "
                f"see the other ranks' errors ({str(err).splitlines()[0][:200]})")
    return None


# ----------------------------------------------------------------------------------------------------
# sharding
# ----------------------------------------------------------------------------------------------------
class _Sharder(EmbeddingBagCollectionSharder):
    """The fused FBGEMM kernel only, and the sharding types asked for. TorchRec offers row-wise only on
    GPU; on CPU with gloo it works too, so it is allowed here. ``data_parallel`` is never offered: such a
    table gets an ordinary gradient that the in-backward optimizer never applies."""

    def __init__(self, sharding_types: Sequence[str]):
        super().__init__()
        self._types = list(sharding_types)

    def sharding_types(self, compute_device_type: str) -> list[str]:
        return list(self._types)

    def compute_kernels(self, sharding_type: str, compute_device_type: str) -> list[str]:
        return [EmbeddingComputeKernel.FUSED.value]


@dataclass
class ShardedModel:
    """A model sharded over the process group: call ``dmp`` (forward, with DDP's hooks), use ``model`` (the
    bare model: ``loss``, ``set_epoch``), step ``optimizer``."""

    dmp: DistributedModelParallel
    embedding: TorchRecEmbedding
    optimizer: CombinedOptimizer
    dense_optimizer: KeyedOptimizerWrapper
    plan: dict
    device: torch.device
    rank: int
    world: int
    seed: int = 0
    timeout_s: float = DEFAULT_TIMEOUT_S
    base_lrs: list = field(default_factory=list)  # the dense optimizer's param groups, as built
    base_fused_lrs: list = field(default_factory=list)  # the fused table optimizers' param groups, as built

    @property
    def model(self) -> nn.Module:
        return self.dmp.module

    def set_lr(self, factor: float) -> None:
        """Every lr at ``factor`` times its value as built: the dense optimizer's, and the fused table
        optimizers' (pushed into FBGEMM now with their ``step()``, which only sets the lr, so the next
        backward already uses it)."""
        for group, base in zip(self.dense_optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        fused = self.dmp.fused_optimizer
        for group, base in zip(fused.param_groups, self.base_fused_lrs):
            group["lr"] = base * factor
        fused.step()

    def seed_rank(self, epoch: int) -> None:
        """Each rank its own random stream (PIMM's Philox seeds, dropout), fixed by (seed, rank, epoch): a run
        resumed at an epoch draws what the uninterrupted run drew."""
        torch.manual_seed((self.seed * 1_000_003 + epoch) * 65_537 + self.rank + 1)


def _embedding_of(model: nn.Module) -> TorchRecEmbedding:
    emb = getattr(model, "embedding", None)
    if not isinstance(emb, TorchRecEmbedding) or not emb.sharded:
        raise TypeError("shard_model needs a model whose embedding is TorchRecEmbedding(..., sharded=True)")
    return emb


def _move_dense(model: nn.Module, emb: TorchRecEmbedding, device: torch.device) -> None:
    """model.to(device) except the collection, which stays on the meta device until it is sharded."""
    ebc = emb.ebc
    del emb._modules["ebc"]
    try:
        model.to(device)
    finally:
        emb._modules["ebc"] = ebc


def _local_shards(t) -> list[tuple[list[int], torch.Tensor]]:
    if isinstance(t, ShardedTensor):
        return [(list(s.metadata.shard_offsets), s.tensor) for s in t.local_shards()]
    if isinstance(t, torch.Tensor):
        return [([0] * t.dim(), t)]
    raise TypeError(f"unexpected table state {type(t).__name__}")


def plan_summary(plan) -> dict:
    """{table name: (sharding type, ranks holding it)} of a TorchRec sharding plan."""
    out = {}
    for module_plan in plan.plan.values():
        for name, ps in module_plan.items():
            ranks = sorted({int(s.placement.rank()) for s in ps.sharding_spec.shards}) if ps.sharding_spec else ps.ranks
            out[name] = (ps.sharding_type, ranks)
    return out


@torch.no_grad()
def init_tables(dmp: DistributedModelParallel, emb: TorchRecEmbedding, prefix: str) -> None:
    """Write the deterministic initial rows (``table_init``) into this rank's shards."""
    state = dmp.state_dict()
    for f, rows in enumerate(emb.field_dims):
        key = f"{prefix}ebc.embedding_bags.t{f}.weight"
        if key not in state:
            raise KeyError(f"sharded state has no {key!r}")
        for (r0, c0), shard in _local_shards(state[key]):
            full = table_init(f, rows, emb.embed_dim, emb.table_dim, emb.init_std, emb.seed, r0, r0 + shard.shape[0],
                              dtype=shard.dtype)
            shard.copy_(full[:, c0:c0 + shard.shape[1]].to(shard.device))


def shard_model(model: nn.Module, device: torch.device, sharding: str = "auto", lr: float = 2e-3,
                weight_decay: float = 0.0, batch_size: Optional[int] = None, seed: int = 0,
                timeout_s: float = DEFAULT_TIMEOUT_S,
                dense_optimizer: Optional[Callable[[list], torch.optim.Optimizer]] = None) -> ShardedModel:
    """Shard ``model``'s TorchRec tables over the default process group and wrap the rest in DDP.

    ``sharding``: "auto" lets the planner choose table-wise or row-wise per table; "table_wise" /
    "row_wise" force one. The dense optimizer, ``dense_optimizer(params)`` or by default Adam(lr,
    weight_decay), covers the parameters that have no in-backward optimizer (TorchRec's filter), so every
    table is trained by its fused optimizer and nothing else.
    """
    if sharding != "auto" and sharding not in SHARDINGS:
        raise ValueError(f"unknown sharding {sharding!r}; choose auto, {', '.join(SHARDINGS)}")
    emb = _embedding_of(model)
    rank, world = dist.get_rank(), dist.get_world_size()
    types = list(SHARDINGS.values()) if sharding == "auto" else [SHARDINGS[sharding]]
    sharder = _Sharder(types)
    _move_dense(model, emb, device)
    constraints = {t.name: ParameterConstraints(sharding_types=types,
                                                compute_kernels=[EmbeddingComputeKernel.FUSED.value])
                   for t in emb.tables}
    topology = Topology(world_size=world, compute_device=device.type,
                        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    planner = EmbeddingShardingPlanner(topology=topology, batch_size=batch_size, constraints=constraints, debug=False)
    plan = planner.collective_plan(model, [sharder], dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(model, env=ShardingEnv.from_process_group(dist.GroupMember.WORLD), device=device,
                                   plan=plan, sharders=[sharder])
    prefix = next(name for name, m in dmp.module.named_modules() if m is emb)
    init_tables(dmp, emb, prefix + "." if prefix else "")
    if dense_optimizer is None:
        def dense_optimizer(params):
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    dense = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(dmp.named_parameters())), dense_optimizer)
    optimizer = CombinedOptimizer([dmp.fused_optimizer, dense])
    return ShardedModel(dmp=dmp, embedding=emb, optimizer=optimizer, dense_optimizer=dense,
                        plan=plan_summary(plan), device=device, rank=rank, world=world, seed=seed, timeout_s=timeout_s,
                        base_lrs=[g["lr"] for g in dense.param_groups],
                        base_fused_lrs=[g["lr"] for g in dmp.fused_optimizer.param_groups])


# ----------------------------------------------------------------------------------------------------
# gathers
# ----------------------------------------------------------------------------------------------------
def gather_predictions(probs: torch.Tensor, index: torch.Tensor, total: int) -> Optional[torch.Tensor]:
    """Rank 0: the [total, T] predictions of all ranks, row i from the rank that scored sample i (a sample
    scored twice, by the padding that evens out the ranks, has the same prediction both times). Other ranks:
    None. Every rank must call it with the same number of rows."""
    world = dist.get_world_size()
    device = probs.device
    probs_all = [torch.empty_like(probs) for _ in range(world)]
    index_all = [torch.empty_like(index) for _ in range(world)]
    dist.all_gather(probs_all, probs.contiguous())
    dist.all_gather(index_all, index.to(device).contiguous())
    if dist.get_rank() != 0:
        return None
    out = torch.full((total, probs.shape[1]), float("nan"), dtype=probs.dtype)
    out[torch.cat(index_all).cpu()] = torch.cat(probs_all).cpu()
    if bool(torch.isnan(out).any()):
        raise RuntimeError("gather_predictions: some samples were scored by no rank")
    return out


def all_sum(values: Sequence[float], device: torch.device) -> list[float]:
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# ----------------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------------
LATEST = "latest"
BEST = "best"


def save_checkpoint(sm: ShardedModel, directory: Path, name: str, progress: dict, model_only: bool = False,
                    latest: bool = True) -> Path:
    """Save the sharded model and optimizer state with torch.distributed.checkpoint into
    ``directory/name`` (written as ``name.tmp``, renamed when every rank is done), then point
    ``directory/latest`` at it (unless ``latest=False``). ``progress`` (JSON: epoch, configuration) goes
    beside it. ``model_only``: the weights without the optimizer state (the best epoch's copy)."""
    directory = Path(directory)
    final, tmp, old = directory / name, directory / f"{name}.tmp", directory / f"{name}.old"
    if sm.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    state = {"model": sm.dmp.state_dict()}
    if not model_only:
        state["optim"] = sm.optimizer.state_dict()
    dcp.save(state, checkpoint_id=str(tmp))
    dist.barrier()
    if sm.rank == 0:
        (tmp / "progress.json").write_text(json.dumps(progress, indent=2) + "\n")
        if final.exists():  # moved aside, not removed, until the new one is in place
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        if latest:
            pointer = directory / f".{LATEST}.tmp"
            pointer.write_text(name + "\n")
            os.replace(pointer, directory / LATEST)
    dist.barrier()
    return final


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint directory, or a directory of them whose ``latest`` names one."""
    path = Path(path)
    if (path / LATEST).is_file():
        path = path / (path / LATEST).read_text().strip()
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(f"{path} is not a torch.distributed.checkpoint directory (no .metadata)")
    return path


def load_checkpoint(sm: ShardedModel, path: Path, model_only: bool = False) -> dict:
    """Load a checkpoint of ``save_checkpoint`` into ``sm`` (saved by any number of ranks: the tables are
    resharded to this run's plan). Returns its progress record. ``model_only``: the weights alone, the
    optimizers left as they are (restoring the best epoch)."""
    path = resolve_checkpoint(path)
    if not model_only:
        sm.dense_optimizer.init_state()  # Adam's state is lazy: create it so that it can be loaded in place
    state = {"model": sm.dmp.state_dict()}
    saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    if not model_only and any(key.startswith("optim.") for key in saved):  # plain SGD everywhere has no state
        state["optim"] = sm.optimizer.state_dict()
    dcp.load(state, checkpoint_id=str(path))
    sm.dmp.load_state_dict(state["model"])
    if "optim" in state:
        sm.optimizer.load_state_dict(state["optim"])
    progress_file = path / "progress.json"
    return json.loads(progress_file.read_text()) if progress_file.is_file() else {}


@torch.no_grad()
def snapshot(sm: ShardedModel) -> dict:
    """A copy of this rank's part of the model state (its table shards, the dense parameters and buffers):
    the best epoch's weights kept in memory when the run has no checkpoint directory."""
    return {key: [t.detach().clone() for _, t in _local_shards(value)]
            for key, value in sm.dmp.state_dict().items() if isinstance(value, (torch.Tensor, ShardedTensor))}


@torch.no_grad()
def restore(sm: ShardedModel, saved: dict) -> None:
    """Write a ``snapshot`` back in place (the state_dict's tensors are views of the model's storage)."""
    state = sm.dmp.state_dict()
    for key, tensors in saved.items():
        shards = _local_shards(state[key])
        if len(shards) != len(tensors):
            raise RuntimeError(f"snapshot of {key!r} has {len(tensors)} shard(s), the model {len(shards)}")
        for (_, dst), src in zip(shards, tensors):
            dst.copy_(src)


def load_into_local(model: nn.Module, path: Path) -> None:
    """Load the model part of a sharded checkpoint into a one-process model (its embedding a
    ``TorchRecEmbedding(sharded=False)`` with the same fields): no process group needed."""
    path = resolve_checkpoint(path)
    state = {"model": model.state_dict()}
    load_in_one_process(state, path)
    model.load_state_dict(state["model"])
