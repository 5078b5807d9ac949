"""train --distributed at parity with the one-process trainer: early stopping decided alike on every rank,
the best epoch restored, the lr schedule on dense and fused optimizers, exact resume of all of it, and
the --out run directory that evaluate / predict / export read. 2 CPU processes (gloo), as in
test_distributed.py; the loop-level checks share one launch (``runs``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pimm_fast.train.trainer import TrainConfig, monitor_value

from .test_distributed import (GLOBAL_BATCH, ROOT, SEED, _free_port, launched, make_data,
                               requires_torchrec, torchrec_model)

EPOCHS, INTERRUPT_AFTER = 5, 3
CONFIG = dict(epochs=EPOCHS, batch_size=GLOBAL_BATCH, seed=SEED, progress=False, patience=2, monitor="mean",
              lr_schedule="cosine")
WALL_CLOCK = ("seconds", "samples_per_second")


class Interrupted(Exception):
    """What a killed run leaves: the checkpoint of its last epoch end and nothing after it."""


def _parity_body(rank: int, world: int, out: Path) -> None:
    import torch.distributed as dist

    from pimm_fast.distributed.loop import DistributedTrainer, evaluate_distributed, predict_distributed
    from pimm_fast.distributed.parallel import load_checkpoint, shard_model, snapshot

    train, valid = make_data()

    def sharded(init_seed: int = 0):
        model = torchrec_model(train, sharded=True, seed=init_seed, optimizer="rowwise_adagrad", lr=0.3)
        return shard_model(model, torch.device("cpu"), sharding="table_wise", lr=0.02, batch_size=GLOBAL_BATCH // world,
                           seed=SEED)  # Adam on the dense part: its moments must survive the resume too


    config = TrainConfig(**CONFIG)
    # A: uninterrupted, the best epoch kept in memory
    a = sharded()
    trainer_a = DistributedTrainer(a, train, config, valid=valid)
    history_a = trainer_a.run()
    valid_after = evaluate_distributed(a, valid)  # the batch size of validation
    probs_a = predict_distributed(a, valid, batch_size=100)
    # B: the same run, killed after INTERRUPT_AFTER epochs, its best epoch on disk
    b = sharded()

    def kill(epoch, record):
        if epoch + 1 == INTERRUPT_AFTER:
            raise Interrupted

    try:
        DistributedTrainer(b, train, config, valid=valid, checkpoint_dir=out / "b", on_epoch_end=kill).run()
        raise AssertionError("the run was not interrupted")
    except Interrupted:
        pass
    # ... resumed by a fresh process pair (another initialisation, overwritten by the checkpoint)
    c = sharded(init_seed=1)
    progress = load_checkpoint(c, out / "b")
    trainer_c = DistributedTrainer(c, train, config, valid=valid, checkpoint_dir=out / "b")
    trainer_c.load_state(progress)
    history_c = trainer_c.run()
    probs_c = predict_distributed(c, valid, batch_size=100)
    # D: lr x 1e-30 after epoch 0 (step schedule): nothing moves, validation never improves, patience 2 stops
    # the run after epoch 3 of 6 on both ranks
    d = sharded()
    trainer_d = DistributedTrainer(d, train, TrainConfig(epochs=6, batch_size=GLOBAL_BATCH, seed=SEED, progress=False,
                                                         patience=2, lr_schedule="step", lr_gamma=1e-30),
                                   valid=valid)
    history_d = trainer_d.run()
    lrs = [[g["lr"] for g in d.dense_optimizer.param_groups], [g["lr"] for g in d.dmp.fused_optimizer.param_groups]]
    mine = {"early": [trainer_a.early, trainer_c.early, trainer_d.early], "epochs": [len(history_a), len(history_c),
                                                                                      len(history_d)],
            "monitors": [[r["monitor"] for r in h] for h in (history_a, history_c, history_d)]}
    every_rank = [None] * world
    dist.all_gather_object(every_rank, mine)
    if rank == 0:
        torch.save({"every_rank": every_rank, "history_a": history_a, "history_c": history_c, "history_d": history_d,
                    "early": mine["early"], "valid_after": valid_after, "probs_a": probs_a, "probs_c": probs_c,
                    "lrs": lrs, "progress": progress, "state_a": snapshot(a), "state_c": snapshot(c)},
                   out / "result.pt")
    else:  # rank 1's shards of the tables: table-wise, so each table is whole on one rank
        torch.save({"state_a": snapshot(a), "state_c": snapshot(c)}, out / "rank1.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return launched(_parity_body, tmp_path_factory, "parity")


def _without_wall_clock(history):
    return [{k: v for k, v in record.items() if k not in WALL_CLOCK} for record in history]


@requires_torchrec
def test_every_rank_takes_the_same_early_stopping_decision(runs):
    _, run = runs
    rank0, rank1 = run["every_rank"]
    assert rank0 == rank1  # the same records, epochs and monitored values, so both ranks left the loop together
    early = run["early"][2]
    assert early == {"monitor": "last", "best": run["history_d"][0]["monitor"], "best_epoch": 0, "bad_epochs": 2,
                     "stopped": True, "undefined_epochs": 0}
    assert len(run["history_d"]) == 3 and len({r["monitor"] for r in run["history_d"]}) == 1
    # the lr was scaled in both optimizers (the frozen run proves the fused table's lr follows too)
    assert [r["lr"] for r in run["history_d"]] == pytest.approx([0.02, 0.02e-30, 0.02e-60], rel=1e-9)
    dense_lrs, fused_lrs = run["lrs"]
    assert dense_lrs == pytest.approx([0.02e-60], rel=1e-9) and fused_lrs and max(fused_lrs) < 1e-60


@requires_torchrec
def test_early_stopping_record_is_the_single_process_one(runs):
    """best = the first maximum of the monitored value, bad epochs counted after it, stop at patience."""
    _, run = runs
    history, early = run["history_a"], run["early"][0]
    values = [monitor_value(r["valid"], "mean") for r in history]
    assert values == [r["monitor"] for r in history]
    best_epoch = max(range(len(values)), key=lambda e: (values[e], -e))
    assert early["best_epoch"] == best_epoch and early["best"] == values[best_epoch]
    assert early["bad_epochs"] == len(values) - 1 - best_epoch
    # stopped early: patience reached with epochs left (reaching it at the last epoch is no early stop)
    assert early["stopped"] == (early["bad_epochs"] >= CONFIG["patience"] and len(values) < EPOCHS)
    assert len(values) == (EPOCHS if not early["stopped"] else best_epoch + 1 + CONFIG["patience"])
    assert set(history[0]["valid"]) >= {"auc", "logloss", "conditional_auc", "ece", "funnel_violation", "oracle_auc"}


@requires_torchrec
def test_best_epoch_is_restored(runs):
    _, run = runs
    history, early = run["history_a"], run["early"][0]
    assert early["best_epoch"] < len(history) - 1, "the run must end after its best epoch for this check to bite"
    assert run["valid_after"] == history[early["best_epoch"]]["valid"]


@requires_torchrec
def test_cosine_schedule_reaches_the_fused_and_dense_optimizers(runs):
    _, run = runs
    lrs = [r["lr"] for r in run["history_a"]]
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[0] < 0.02
    assert [r["embedding_lr"] for r in run["history_a"]] == pytest.approx([x / 0.02 * 0.3 for x in lrs], rel=1e-12)


@requires_torchrec
def test_resumed_run_equals_uninterrupted_run(runs):
    """Killed after epoch 3 of 5 (its best, kept on disk), resumed by fresh ranks from the sharded checkpoint: the same history (loss,
    validation, lr), the same early stop and best epoch, bitwise the same restored weights and predictions."""
    out, run = runs
    assert run["progress"]["epoch"] == INTERRUPT_AFTER and len(run["progress"]["history"]) == INTERRUPT_AFTER
    assert len(run["history_a"]) > INTERRUPT_AFTER, "the run must go past the interruption for this check to bite"
    assert _without_wall_clock(run["history_c"]) == _without_wall_clock(run["history_a"])
    assert run["early"][1] == run["early"][0]
    assert torch.equal(run["probs_c"], run["probs_a"])
    rank1 = torch.load(out / "rank1.pt", weights_only=False)
    for states in (run, rank1):
        a, c = states["state_a"], states["state_c"]
        assert a.keys() == c.keys() and a
        for key in a:
            assert len(a[key]) == len(c[key]) and all(torch.equal(x, y) for x, y in zip(a[key], c[key])), key
    assert (out / "b" / "best" / ".metadata").is_file()
    best = json.loads((out / "b" / "best" / "progress.json").read_text())
    assert best["epoch"] == run["early"][0]["best_epoch"]


# ------------------------------------------------------------------------------------------------------
# the command line: --out, --patience, --lr-schedule, --resume-sharded DIR, evaluate / predict on the run
# ------------------------------------------------------------------------------------------------------
def _train_cmd(*extra: str) -> list[str]:
    return ["train", "--distributed", "--samples", "6000", "--batch-size", "256", "--lr", "0.02",
            "--model", "shared_bottom", "--tower-dims", "16,8", "--no-progress", "--threads", "1", *extra]


@requires_torchrec
def test_torchrun_run_directory(tmp_path, capsys):
    from pimm_fast.cli import main

    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "pimm_fast", *_train_cmd("--epochs", "1", "--out", str(run_dir), "--patience", "3",
                                          "--early-stopping-monitor", "mean",  # torchrun refuses --monitor
                                          "--lr-schedule", "step", "--lr-gamma", "0.5",
                                          "--output", str(tmp_path / "out.json"))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("held-out test set") == 1 and "valid mean" in proc.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results == json.loads((tmp_path / "out.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    assert results["config"] == config and config["distributed"]["processes"] == 2
    assert config["patience"] == 3 and config["lr_schedule"] == "step" and config["embedding"] == "torchrec"
    assert results["early_stopping"] == {"monitor": "mean", "best": results["history"][0]["monitor"], "best_epoch": 0,
                                         "bad_epochs": 0, "stopped": False,
                                         "undefined_epochs": 0}
    assert (run_dir / "sharded" / "latest").read_text().strip() == "epoch-1"
    assert (run_dir / "sharded" / "best" / ".metadata").is_file()

    # evaluate reads the sharded tables into a one-process model: the test metrics of the run
    assert main(["evaluate", "--checkpoint", str(run_dir), "--output", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())["test"]
    assert evaluated["auc"] == pytest.approx(results["test"]["auc"], abs=1e-6)
    assert main(["predict", "--checkpoint", str(run_dir), "--out", str(tmp_path / "p.csv")]) == 0
    assert len((tmp_path / "p.csv").read_text().splitlines()) == results["test"]["samples"] + 1
    capsys.readouterr()
    for argv, message in ((["evaluate", "--checkpoint", str(run_dir / "sharded")], "is a --sharded-checkpoint directory"),
                          (_train_cmd("--out", str(run_dir)), f"{run_dir} already holds a run; continue it with "
                                                              f"--resume-sharded {run_dir}")):
        assert main(argv) == 2
        assert message in capsys.readouterr().err

    # one process continues the run in its directory: epoch 2 with the step schedule's halved lr
    resume = [sys.executable, "-m", "pimm_fast", *_train_cmd("--epochs", "2", "--patience", "3", "--monitor", "mean",
                                                             "--lr-schedule", "step", "--lr-gamma", "0.5",
                                                             "--resume-sharded", str(run_dir))]
    proc = subprocess.run(resume, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at epoch 1 (saved by 2 process(es))" in proc.stdout and "epoch 2/2" in proc.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert [r["epoch"] for r in results["history"]] == [0, 1] and results["processes"] == 1
    assert [r["lr"] for r in results["history"]] == [0.02, 0.01]
    assert (run_dir / "sharded" / "latest").read_text().strip() == "epoch-2"
    # a changed schedule contradicts the checkpoint
    proc = subprocess.run(resume[:-2] + ["--lr-gamma", "0.1", "--resume-sharded", str(run_dir), "--epochs", "3"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2 and "lr_gamma = 0.5" in proc.stderr, proc.stderr[-2000:]


@requires_torchrec
def test_cli_refusals_point_to_the_sharded_options(capsys):
    from pimm_fast.cli import main

    for argv, message in (
            (["--resume", "runs/x"], "--resume is not supported with --distributed: continue a sharded run with "
                                     "--resume-sharded DIR (the run directory of --out, or a --sharded-checkpoint "
                                     "directory)"),
            (["--checkpoint-every", "10"], "--checkpoint-every is not supported with --distributed: a sharded run "
                                           "checkpoints at every epoch end (--out DIR or --sharded-checkpoint DIR) "
                                           "and --resume-sharded continues from there"),
            (["--out", "runs/x", "--sharded-checkpoint", "ck"], "--out runs/x keeps the sharded checkpoints in "
                                                                "runs/x/sharded: drop --sharded-checkpoint")):
        assert main(["train", "--distributed", *argv]) == 2
        assert capsys.readouterr().err.strip() == f"pimm-fast: error: {message}"


@requires_torchrec
def test_one_process_torchrec_table_follows_the_lr_schedule():
    """--embedding torchrec in one process: the Trainer's schedule reaches the fused FBGEMM table too (lr x 1e-30
    from epoch 1 on: the table trains in epoch 0, then stays as it is)."""
    from pimm_fast.train.trainer import Trainer

    train, _ = make_data()
    model = torchrec_model(train, sharded=False, lr=0.3)
    emb = model.embedding

    def tables():
        return torch.cat([emb.table(f) for f in range(len(train.model_field_dims))])

    seen = [tables()]
    trainer = Trainer(model, train, TrainConfig(epochs=2, batch_size=256, progress=False, lr_schedule="step",
                                                lr_gamma=1e-30), on_epoch_end=lambda epoch, record: seen.append(tables()))
    assert trainer.scaled == [emb]
    trainer.run()
    assert not torch.equal(seen[1], seen[0]) and torch.equal(seen[2], seen[1])
