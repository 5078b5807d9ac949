"""Checkpoints: what a run directory holds, and the one-line errors for missing, truncated, foreign or
contradicted checkpoints (nothing in the directory is touched then)."""
import json

import pytest
import torch

from pimm_fast.cli import main
from pimm_fast.models import build_model

RUN = ["--samples", "4000", "--epochs", "2", "--batch-size", "512", "--tower-dims", "8", "--no-progress",
       "--checkpoint-every", "3"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    threads = torch.get_num_threads()
    assert main(["train", *RUN, "--out", str(out)]) == 0
    torch.set_num_threads(threads)
    return out


def snapshot(directory):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def fails_with(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pimm-fast: error: ") and "\n" not in err and message in err, err
    return err


def test_run_directory_layout(run_dir):
    assert {p.name for p in run_dir.iterdir()} == {"checkpoint.pt", "best.pt", "config.json", "results.json",
                                                   "vocabulary.txt"}
    payload = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    config = json.loads((run_dir / "config.json").read_text())
    assert payload["config"] == config and config["samples"] == 4000 and config["embedding_optimizer"] == "adam"
    for key in ("model", "optimizer", "train_state", "data_order", "rng", "early_stopping", "history"):
        assert key in payload
    assert set(payload["rng"]) == {"torch", "python", "numpy", "cuda"}
    assert payload["train_state"]["finished"] and payload["train_state"]["curriculum"]["p"] == 0.25
    assert payload["fused_embeddings"][0]["optimizer"] == "adam"
    assert "embedding.exp_avg" in payload["model"]  # the fused lazy Adam's moments travel with the weights
    # torch.load(...)["model"] is the state_dict of the model the config names
    model = build_model("pimm", payload["model_info"]["field_dims"], num_tasks=2, tower_dims=(8,),
                        embedding=__import__("pimm_fast").FusedEmbedding(payload["model_info"]["field_dims"], 5))
    model.load_state_dict(payload["model"])
    results = json.loads((run_dir / "results.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert len(results["test"]["auc"]) == 2 and len(results["history"]) == 2


def test_missing_checkpoints(tmp_path, capsys):
    fails_with(capsys, ["train", "--resume", str(tmp_path / "nope")], "no run directory at")
    fails_with(capsys, ["train", "--resume", str(tmp_path)], "no checkpoint at")
    fails_with(capsys, ["evaluate", "--checkpoint", str(tmp_path / "nope")], "no run directory or checkpoint")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign", "other-version", "empty"])
def test_damaged_checkpoints_give_one_line_and_touch_nothing(run_dir, tmp_path, capsys, damage):
    target = tmp_path / "run"
    target.mkdir()
    for p in run_dir.iterdir():
        (target / p.name).write_bytes(p.read_bytes())
    path = target / "checkpoint.pt"
    good = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all\n" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "foreign":
        torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, path)
    else:
        payload = torch.load(path, weights_only=True)
        payload["version"] = 99
        torch.save(payload, path)
    (target / "best.pt").unlink()  # evaluate then reads checkpoint.pt
    before = snapshot(target)
    expected = {"truncated": "truncated or not a torch checkpoint", "garbage": "truncated or not a torch checkpoint",
                "empty": "truncated or not a torch checkpoint", "foreign": "not a pimm_fast checkpoint",
                "other-version": "format version 99"}[damage]
    fails_with(capsys, ["train", "--resume", str(target)], expected)
    fails_with(capsys, ["evaluate", "--checkpoint", str(target)], expected)
    fails_with(capsys, ["predict", "--checkpoint", str(target), "--out", str(target / "p.csv")], expected)
    assert snapshot(target) == before


def test_resume_refuses_contradicting_options_and_finished_runs(run_dir, tmp_path, capsys):
    before = snapshot(run_dir)
    fails_with(capsys, ["train", "--resume", str(run_dir), "--lr", "0.5"], "--lr 0.5 contradicts the checkpoint's 0.002")
    fails_with(capsys, ["train", "--resume", str(run_dir), "--model", "aitm"], "contradicts")
    fails_with(capsys, ["train", "--resume", str(run_dir), "--data", "synthetic:demo3"], "contradicts")
    # the same values as stored, and execution options, are fine; this run is finished though
    fails_with(capsys, ["train", "--resume", str(run_dir), "--lr", "0.002", "--threads", "1"], "already finished")
    fails_with(capsys, ["train", *RUN, "--out", str(run_dir)], "already holds a run")
    fails_with(capsys, ["train", "--resume", str(run_dir), "--out", str(tmp_path / "x")], "its own directory")
    assert snapshot(run_dir) == before
    fails_with(capsys, ["train", "--samples", "2000", "--checkpoint-every", "2", "--no-progress"], "needs --out")
    fails_with(capsys, ["train", "--samples", "2000", "--monitor", "purchase", "--no-progress"], "--monitor")
