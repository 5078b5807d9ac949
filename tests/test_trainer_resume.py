"""Exact resume: a run killed with SIGKILL mid-epoch and resumed ends bit-identical to an uninterrupted one."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pimm_fast.cli import main

ROOT = Path(__file__).resolve().parents[1]

# Runs the CLI, but dies with SIGKILL when the second step checkpoint is due: the latest checkpoint on
# disk is then the first step checkpoint, and the steps since are lost, as in a real crash. With
# KILL_WHILE_WRITING=1 it dies halfway through writing the second one (a torn temporary file).
KILLER = r"""
import os, signal, sys
from pathlib import Path
from pimm_fast.train import checkpoint
original = checkpoint.save
saved = []
def save(path, payload):
    if payload.get("kind") == "checkpoint":
        if saved:
            if os.environ.get("KILL_WHILE_WRITING") == "1":
                torn = Path(path).with_name(f".{Path(path).name}.tmp{os.getpid()}")
                torn.write_bytes(b"PK\x03\x04 half a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)
        saved.append(payload["train_state"]["position"])
    return original(path, payload)
checkpoint.save = save
from pimm_fast.cli import main
sys.exit(main(sys.argv[1:]))
"""

RUN = ["--samples", "6000", "--epochs", "3", "--batch-size", "256", "--tower-dims", "16,8", "--threads", "1",
       "--checkpoint-every", "4", "--dropout", "0.1", "--lr-schedule", "cosine", "--per-step-curriculum",
       "--patience", "2", "--no-progress"]
VOLATILE = {"seconds", "samples_per_second", "epoch_seconds"}  # wall-clock figures


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def assert_identical(a, b, where="checkpoint"):
    assert type(a) is type(b), f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for key in a:
            if key not in VOLATILE:
                assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


@pytest.mark.parametrize("while_writing", [False, True], ids=["between-steps", "while-writing"])
def test_resume_after_sigkill_is_bit_identical(tmp_path, one_thread, capsys, while_writing):
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    env = dict(os.environ, PYTHONPATH=str(ROOT), KILL_WHILE_WRITING="1" if while_writing else "0")
    proc = subprocess.run([sys.executable, "-c", KILLER, "train", *RUN, "--out", str(killed)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    state = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert state["train_state"]["epoch"] == 0 and state["train_state"]["position"] == 4  # mid-epoch
    assert not state["train_state"]["finished"]
    assert bool(list(killed.glob(".*.tmp*"))) == while_writing

    assert main(["train", "--resume", str(killed), "--threads", "1", "--no-progress"]) == 0
    assert "resumed" in capsys.readouterr().out
    assert not list(killed.glob(".*.tmp*"))
    assert main(["train", *RUN, "--out", str(reference)]) == 0

    final, expected = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (killed, reference))
    assert final["train_state"]["finished"]
    assert_identical(final, expected)
    assert_identical(*(torch.load(d / "best.pt", weights_only=True) for d in (killed, reference)), "best.pt")
    assert final["model"].keys() == expected["model"].keys() and len(final["model"]) > 10
