"""pimm_fast.distributed: TorchRec tables (FBGEMM, fused optimizer) in one process and sharded over 2 CPU
processes (gloo), checked against pimm_fast's own FusedEmbedding run in one process.

The 2-process checks share one launch (``sharded_run``, about 20 s on 2 cores): importing TorchRec
dominates, so every check reads the files that one pair of ranks wrote. Tolerances: the sharded run sums
the same float32 gradients in another order (DDP averages two half-batch means; row-wise shards split
the table), so parameters and probabilities agree to 1e-5, not bit for bit.
"""
from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import traceback
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import pimm_fast
from pimm_fast import distributed as pdist
from pimm_fast.data import Batcher
from pimm_fast.data.core import BagTable
from pimm_fast.data.synthetic import PRESETS, generate
from pimm_fast.metrics import auc
from pimm_fast.train.trainer import TrainConfig, model_input

ROOT = Path(__file__).resolve().parents[1]
requires_torchrec = pytest.mark.skipif(not pdist.is_available(), reason=pdist.INSTALL_HINT)

EMBED_DIM, LR, STEPS, GLOBAL_BATCH, SEED = 5, 0.5, 4, 128, 7
TOL = 1e-5


# ------------------------------------------------------------------------------------------------------
# a small cascade with one multi-valued field (mean-pooled bags, some empty)
# ------------------------------------------------------------------------------------------------------
def make_data():
    n = 1024 + 256
    data = generate(n, PRESETS["demo"], seed=3)
    gen = torch.Generator().manual_seed(5)
    lengths = torch.randint(0, 4, (n,), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    values = torch.randint(0, 20, (int(offsets[-1]),), generator=gen, dtype=torch.int32)
    data = replace(data, bags=(BagTable(("tags",), (20,), (offsets,), (values,), torch.arange(n)),))
    return data.subset(slice(0, 1024)), data.subset(slice(1024, n))


def pooling(data):
    return ["sum"] * len(data.field_dims) + ["mean"] * len(data.bag_names)


def make_model(embedding, data):
    torch.manual_seed(SEED)  # the same dense initialisation wherever the embedding came from
    model = pimm_fast.PIMM(data.model_field_dims, num_tasks=2, embed_dim=EMBED_DIM, tower_dims=(16, 8),
                           curriculum=pimm_fast.Curriculum.constant(0.0), embedding=embedding)
    # float32 towers: the comparisons below hold runs over other batch splits to 1e-5, finer than bf16 rounding
    return pimm_fast.modules.tower.set_tower_precision(model, "fp32")


def torchrec_model(data, sharded: bool, seed: int = 0, optimizer: str = "sgd", lr: float = LR):
    emb = pdist.TorchRecEmbedding(data.model_field_dims, EMBED_DIM, optimizer=optimizer, lr=lr, pooling=pooling(data),
                                  seed=seed, sharded=sharded)
    return make_model(emb, data)


def initial_table(dims, seed: int = 0) -> torch.Tensor:
    table_dim = pdist.padded_dim(EMBED_DIM)
    return torch.cat([pdist.table_init(f, n, EMBED_DIM, table_dim, 0.01, seed)[:, :EMBED_DIM] for f, n in enumerate(dims)])


def one_process_reference(train):
    """pimm_fast's own FusedEmbedding + SGD in one process on the global batches of the sharded run."""
    fused = pimm_fast.FusedEmbedding(train.model_field_dims, EMBED_DIM, optimizer="sgd", lr=LR, pooling=pooling(train))
    with torch.no_grad():
        fused.weight.copy_(initial_table(train.model_field_dims))
    model = make_model(fused, train)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    batcher = Batcher(train, GLOBAL_BATCH, shuffle=True, seed=SEED, bags=True)
    batcher.set_epoch(0)
    model.train()
    model.set_epoch(0)
    for step, batch in enumerate(batcher):
        if step == STEPS:
            break
        x, y = model_input(batch, train)[:2]
        loss = model.loss(model(x, labels=y), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@torch.no_grad()
def predict_one_process(model, data):
    model.eval()
    out = [model(model_input(b, data)[0]) for b in Batcher(data, 100, shuffle=False, bags=True)]
    return torch.cat(out)


# ------------------------------------------------------------------------------------------------------
# 2-process workers (torch.multiprocessing, gloo)
# ------------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_worker(body, rank: int, world: int, port: int, out: str) -> None:
    """Join the group, run body, write its error if any; always destroy the group and exit explicitly."""
    import torch.distributed as dist

    code = 0
    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=120))
        body(rank, world, Path(out))
    except BaseException:  # noqa: BLE001
        Path(out, f"error{rank}.txt").write_text(traceback.format_exc())
        code = 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _sharded_body(rank: int, world: int, out: Path) -> None:
    import torch.distributed as dist
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    from pimm_fast.distributed.loop import evaluate_distributed, fit_distributed, predict_distributed
    from pimm_fast.distributed.parallel import load_checkpoint, save_checkpoint, shard_model

    train, test = make_data()

    def sharded(sharding: str, seed: int):
        model = torchrec_model(train, sharded=True, seed=seed)
        return shard_model(model, torch.device("cpu"), sharding=sharding, batch_size=GLOBAL_BATCH // world, seed=SEED,
                           dense_optimizer=lambda params: torch.optim.SGD(params, lr=LR))

    sm = sharded("row_wise", 0)
    fit_distributed(sm, train, TrainConfig(epochs=1, batch_size=GLOBAL_BATCH, seed=SEED, progress=False), max_steps=STEPS)
    dense = {name: p.detach().clone() for name, p in in_backward_optimizer_filter(sm.dmp.named_parameters())}
    every_rank = [None] * world
    dist.all_gather_object(every_rank, dense)
    sm.seed_rank(0)
    draws = [None] * world
    dist.all_gather_object(draws, torch.randint(0, 2**62, (4,)))  # PIMM's Philox seeds come from this stream
    result = evaluate_distributed(sm, test, batch_size=100)  # 256 rows: 50 per rank and batch, a short tail
    probs = predict_distributed(sm, test, batch_size=100)
    save_checkpoint(sm, out / "checkpoints", "after", {"epoch": 1})
    other = sharded("table_wise", 1)  # another initialisation, another placement
    before = predict_distributed(other, test, batch_size=100)
    load_checkpoint(other, out / "checkpoints")
    after = predict_distributed(other, test, batch_size=100)
    if rank == 0:
        torch.save({"every_rank": every_rank, "draws": draws, "result": result, "probs": probs, "before": before, "after": after,
                    "plans": [sm.plan, other.plan]}, out / "result.pt")


def _bad_input_body(rank: int, world: int, out: Path) -> None:
    import torch.distributed as dist

    from pimm_fast.distributed.loop import fit_distributed
    from pimm_fast.distributed.parallel import explain_timeout, shard_model

    train, _ = make_data()
    x = train.x.clone()
    x[77, 2] = train.field_dims[2] + 3  # one sample, so one rank, sees it
    train = replace(train, x=x)
    sm = shard_model(torchrec_model(train, sharded=True), torch.device("cpu"), sharding="table_wise",
                     batch_size=GLOBAL_BATCH // world)
    messages = {}
    try:
        fit_distributed(sm, train, TrainConfig(epochs=1, batch_size=GLOBAL_BATCH, seed=SEED, progress=False))
        messages["fit"] = "no error"
    except Exception as err:  # noqa: BLE001
        messages["fit"] = f"{type(err).__name__}: {err}"
    # a model that diverges on rank 1 only (a dense weight poisoned after DDP's broadcast): both ranks stop
    # at the next agreement, none waits in the backward's collectives
    train, _ = make_data()
    sm = shard_model(torchrec_model(train, sharded=True), torch.device("cpu"), sharding="table_wise",
                     batch_size=GLOBAL_BATCH // world)
    if rank == 1:
        with torch.no_grad():
            next(p for name, p in sm.model.named_parameters() if "embedding" not in name).fill_(float("nan"))
    try:
        fit_distributed(sm, train, TrainConfig(epochs=1, batch_size=GLOBAL_BATCH, seed=SEED, progress=False))
        messages["diverged"] = "no error"
    except Exception as err:  # noqa: BLE001
        messages["diverged"] = f"{type(err).__name__}: {err}"
    # a rank that skips a collective: the other one gets the timeout, with the explanation
    group = dist.new_group(timeout=datetime.timedelta(seconds=2))
    if rank == 0:
        try:
            dist.all_reduce(torch.ones(1), group=group)
            messages["timeout"] = "no error"
        except Exception as err:  # noqa: BLE001
            messages["timeout"] = explain_timeout(err, 2.0) or f"unexplained {type(err).__name__}: {err}"
    Path(out, f"messages{rank}.json").write_text(json.dumps(messages))
    dist.barrier()


def launch(body, tmp_path: Path, world: int = 2) -> None:
    import torch.multiprocessing as mp

    port = _free_port()
    context = mp.get_context("spawn")
    procs = [context.Process(target=_run_worker, args=(body, r, world, port, str(tmp_path))) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    errors = "\n".join(f.read_text() for f in sorted(tmp_path.glob("error*.txt")))
    assert not alive, f"ranks still running after 240 s (a hang)\n{errors}"
    assert not errors, errors
    assert [p.exitcode for p in procs] == [0] * world


def launched(body, tmp_path_factory, name: str):
    """(folder, rank 0's result.pt) of ``body`` run on 2 ranks in a fresh folder: a module fixture's value."""
    if not pdist.is_available():
        pytest.skip(pdist.INSTALL_HINT)
    out = tmp_path_factory.mktemp(name)
    launch(body, out)
    return out, torch.load(out / "result.pt", weights_only=False)


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    return launched(_sharded_body, tmp_path_factory, "sharded")


# ------------------------------------------------------------------------------------------------------
# tests: 2 processes
# ------------------------------------------------------------------------------------------------------
@requires_torchrec
def test_dense_parameters_identical_on_both_ranks(sharded_run):
    _, run = sharded_run
    rank0, rank1 = run["every_rank"]
    assert rank0.keys() == rank1.keys() and len(rank0) > 10
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name


@requires_torchrec
def test_each_rank_draws_its_own_seeds(sharded_run):
    _, run = sharded_run
    rank0, rank1 = run["draws"]
    assert not torch.equal(rank0, rank1)


@requires_torchrec
def test_sharded_sgd_matches_one_process(sharded_run):
    """2 ranks x 64 samples, row-wise tables, SGD == pimm_fast FusedEmbedding + SGD on the 128-sample batches."""
    out, run = sharded_run
    train, test = make_data()
    assert {kind for kind, _ in run["plans"][0].values()} == {"row_wise"}
    reference = one_process_reference(train)
    for name, p in reference.named_parameters():
        if not name.startswith("embedding."):  # the table is compared below
            assert torch.allclose(run["every_rank"][0][name], p, atol=TOL, rtol=0), name
    local = torchrec_model(train, sharded=False)
    pdist.load_into_local(local, out / "checkpoints")  # 2 ranks -> 1 process
    tables = torch.cat([local.embedding.table(f) for f in range(len(train.model_field_dims))])
    assert (tables - reference.embedding.weight).abs().max() < TOL
    assert not torch.equal(tables, initial_table(train.model_field_dims))  # the tables did train
    assert (run["probs"] - predict_one_process(reference, test)).abs().max() < TOL


@requires_torchrec
def test_sharded_checkpoint_gives_same_predictions(sharded_run):
    out, run = sharded_run
    train, test = make_data()
    assert not torch.allclose(run["before"], run["probs"], atol=1e-4)
    # row-wise checkpoint loaded table-wise, 2 -> 2 ranks: row-wise pools partial sums of each bag on two
    # ranks and adds them, table-wise pools on one: the same numbers up to float32 rounding
    assert (run["after"] - run["probs"]).abs().max() < 1e-6
    assert {kind for kind, _ in run["plans"][1].values()} == {"table_wise"}
    local = torchrec_model(train, sharded=False)
    pdist.load_into_local(local, out / "checkpoints")
    assert (predict_one_process(local, test) - run["probs"]).abs().max() < 1e-6  # 2 ranks -> 1 process


@requires_torchrec
def test_global_auc_equals_one_process_auc(sharded_run):
    _, run = sharded_run
    _, test = make_data()
    probs, result = run["probs"], run["result"]
    assert probs.shape == (len(test), 2) and not torch.isnan(probs).any()
    assert result["samples"] == len(test)
    for t in range(2):
        assert result["auc"][t] == auc(probs[:, t], test.y[:, t])


@requires_torchrec
def test_bad_id_on_one_rank_stops_every_rank(tmp_path):
    launch(_bad_input_body, tmp_path)
    messages = [json.loads((tmp_path / f"messages{r}.json").read_text()) for r in range(2)]
    fits = [m["fit"] for m in messages]
    assert all(f.startswith("DistributedInputError") for f in fits), fits
    owner = [i for i, f in enumerate(fits) if "is outside [0, " in f]
    assert len(owner) == 1, fits
    assert "of field 2" in fits[owner[0]]
    assert f"rank(s) [{owner[0]}] found bad input" in fits[1 - owner[0]]
    # rank 1 raises its own error (PIM refuses the NaN prior), rank 0 stops with it, nobody hangs
    assert messages[1]["diverged"].startswith("ValueError: pim_attention: pred_prev contains NaN"), messages
    assert "rank 0: stopped because rank(s) [1] found bad output" in messages[0]["diverged"], messages
    assert "waited longer than 2 s" in messages[0]["timeout"], messages[0]


@requires_torchrec
def test_torchrun_cli(tmp_path):
    """The README command: 2 processes, rank 0 alone prints and writes, a sharded checkpoint per epoch."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "pimm_fast", "train", "--distributed", "--samples", "6000", "--epochs", "1", "--batch-size", "256",
           "--lr", "0.02",
           "--model", "shared_bottom", "--tower-dims", "16,8", "--no-progress", "--threads", "1",
           "--sharded-checkpoint", str(tmp_path / "ck"), "--output", str(tmp_path / "out.json")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("held-out test set") == 1 and "2 process(es) (gloo)" in proc.stdout
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["processes"] == 2 and 0.5 < result["test"]["auc"][0] <= 1.0
    assert (tmp_path / "ck" / "latest").read_text().strip() == "epoch-1"
    assert (tmp_path / "ck" / "epoch-1" / ".metadata").is_file()
    # resumed by one process (no torchrun: rank 0 of a world of 1) for the second epoch
    resume = [sys.executable, "-m", "pimm_fast", *cmd[cmd.index("train"):]]
    resume[resume.index("--epochs") + 1] = "2"
    resume += ["--resume-sharded", str(tmp_path / "ck")]
    proc = subprocess.run(resume, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "at epoch 1 (saved by 2 process(es))" in proc.stdout
    assert "epoch 2/2" in proc.stdout and "epoch 1/2" not in proc.stdout
    assert (tmp_path / "ck" / "latest").read_text().strip() == "epoch-2"


# ------------------------------------------------------------------------------------------------------
# tests: one process
# ------------------------------------------------------------------------------------------------------
@requires_torchrec
@pytest.mark.parametrize("optimizer", ["sgd", "rowwise_adagrad"])
def test_one_process_torchrec_matches_fused_embedding(optimizer):
    """D = 5 stored as 8 columns; row-wise Adagrad's lr / eps rescaled: the same updates as on 5 columns."""
    train, _ = make_data()
    dims = train.model_field_dims
    emb = pdist.torchrec_embedding(dims, EMBED_DIM, optimizer=optimizer, lr=0.3, pooling=pooling(train))
    fused = pimm_fast.FusedEmbedding(dims, EMBED_DIM, optimizer=optimizer, lr=0.3, pooling=pooling(train))
    with torch.no_grad():
        fused.weight.copy_(initial_table(dims))
    assert emb.table_dim == 8 and emb.output_dim == len(dims) * EMBED_DIM
    for step, batch in enumerate(Batcher(train, 200, shuffle=True, seed=1, bags=True)):
        x = model_input(batch, train)[0]
        a, b = emb(x), fused(x)
        assert (a - b).abs().max() < 1e-6, step
        grad = torch.randn_like(a)
        a.backward(grad)
        b.backward(grad)
    tables = torch.cat([emb.table(f) for f in range(len(dims))])
    assert (tables - fused.weight).abs().max() < 1e-6
    assert emb.ebc.embedding_bags["t0"].weight[:, EMBED_DIM:].abs().max() == 0  # the padding stays zero


@requires_torchrec
def test_fields_come_back_in_field_order_with_mixed_pooling():
    """FBGEMM groups tables by pooling mode (sum, mean, sum -> [sum, sum], [mean]): put back in field order."""
    dims, mode = [10, 7, 12], ["sum", "mean", "sum"]
    emb = pdist.torchrec_embedding(dims, 4, optimizer="sgd", pooling=mode)
    reference = pimm_fast.FieldEmbedding(dims, 4, pooling=mode, backend="reference")
    with torch.no_grad():
        reference.weight.copy_(torch.cat([emb.table(f) for f in range(3)]))
    x = pimm_fast.JaggedIds.from_fields([torch.tensor([1, 9]), (torch.tensor([0, 6, 3]), torch.tensor([0, 2, 3])),
                                         torch.tensor([11, 0])])
    assert torch.allclose(emb(x), reference(x), atol=1e-7, rtol=0)


@requires_torchrec
def test_torchrec_embedding_checks():
    emb = pdist.torchrec_embedding([10, 4], 4, optimizer="sgd")
    assert emb.table_dim == 4
    with pytest.raises(IndexError, match="id 4 of field 1 in sample 1 is outside"):
        emb(torch.tensor([[0, 1], [2, 4]]))
    with pytest.raises(IndexError, match="id -1 of field 0"):
        emb(pimm_fast.JaggedIds.from_fields([(torch.tensor([3, -1]), torch.tensor([0, 2])), torch.tensor([1])]))
    with pytest.raises(ValueError, match=r"expected ids of shape \[B, 2\]"):
        emb(torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="FBGEMM fuses 'adam' only on GPU"):
        pdist.torchrec_embedding([10], 4, optimizer="adam")
    with pytest.raises(ValueError, match="unknown fused optimizer"):
        pdist.torchrec_embedding([10], 4, optimizer="lamb")


@requires_torchrec
def test_any_model_takes_the_torchrec_embedding():
    dims = [30, 7, 5]
    x = torch.stack([torch.randint(0, n, (32,)) for n in dims], 1)
    y = torch.zeros(32, 2)
    y[:8, 0] = 1
    y[:3, 1] = 1
    for name in pimm_fast.models.registry.MODELS:
        emb = pdist.torchrec_embedding(dims, 5, optimizer="rowwise_adagrad", lr=0.1)
        model = pimm_fast.models.build_model(name, dims, num_tasks=2, embedding=emb)
        before = emb.table(0).clone()
        model.loss(model(x, labels=y), y).backward()
        assert not torch.equal(before, emb.table(0)), name  # the fused optimizer ran in the backward
        assert emb.ebc.embedding_bags["t0"].weight.grad is None


def test_without_torchrec_the_package_imports_and_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setattr(pdist, "_missing", f"{pdist.INSTALL_HINT} [import failed: test]")
    monkeypatch.delitem(pdist.__dict__, "shard_model", raising=False)
    with pytest.raises(ImportError, match="pip install torchrec==1.9.2"):
        pdist.shard_model  # noqa: B018
    from pimm_fast.cli import main

    assert main(["train", "--distributed"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pimm-fast: error: --distributed needs TorchRec") and "fbgemm-gpu-cpu" in err


@requires_torchrec
def test_cli_one_process_torchrec_embedding(tmp_path, capsys):
    from pimm_fast.cli import main

    out = tmp_path / "out.json"
    assert main(["train", "--embedding", "torchrec", "--samples", "3000", "--epochs", "1", "--batch-size", "256",
                 "--model", "esmm", "--tower-dims", "16,8", "--no-progress", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "embedding optimizer rowwise_adagrad" in printed  # the CPU default for a TorchRec table
    result = json.loads(out.read_text())
    assert result["config"]["embedding"] == "torchrec" and 0.0 <= result["test"]["auc"][0] <= 1.0


@requires_torchrec
def test_cli_distributed_options_checked_first(capsys):
    from pimm_fast.cli import main

    for argv, message in ((["--sharding", "row_wise"], "--sharding needs --distributed"),
                          (["--distributed", "--embedding-optimizer", "adam", "--device", "cpu"],
                           "FBGEMM fuses 'adam' only on GPU; on CPU use --embedding-optimizer rowwise_adagrad or sgd"),
                          (["--sharded-checkpoint", "ck"], "--sharded-checkpoint needs --distributed")):
        assert main(["train", *argv]) == 2
        assert capsys.readouterr().err.strip() == f"pimm-fast: error: {message}"
