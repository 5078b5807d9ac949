"""A run continues, or scores a data spec, only over data numbered as it was trained: a resumed run whose file
was edited (same rows, other values) is refused, in one process and with --resume-sharded; a run saved
without its vocabulary is refused where this pimm_fast numbers its data otherwise (Parquet integer ids)."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pimm_fast.cli import main

from .test_distributed import requires_torchrec

ROOT = Path(__file__).resolve().parents[1]
CITIES = ["paris", "lagos", "lima", "oslo"]


def write_csv(path: Path, rows: int = 1200, seed: int = 0, cities=CITIES[:3]) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["click", "buy", "user", "city", "item"])
        for _ in range(rows):
            click = int(rng.random() < 0.3)
            buy = int(click and rng.random() < 0.4)
            w.writerow([click, buy, f"u{rng.integers(0, 40)}", cities[rng.integers(0, len(cities))],
                        int(rng.integers(0, 150))])


def unfinish(directory: Path) -> None:
    """Mark a finished run's checkpoint as interrupted, so that --resume takes it."""
    payload = torch.load(directory / "checkpoint.pt", weights_only=True)
    payload["train_state"]["finished"] = False
    torch.save(payload, directory / "checkpoint.pt")


def strip_vocabulary(directory: Path) -> None:
    """The run as pimm_fast saved it before vocabularies were kept."""
    (directory / "vocabulary.txt").unlink()
    for name in ("checkpoint.pt", "best.pt"):
        payload = torch.load(directory / name, weights_only=True)
        del payload["vocabulary"]
        torch.save(payload, directory / name)


TRAIN = ["--labels", "click,buy", "--epochs", "1", "--tower-dims", "8", "--no-progress", "--threads", "1"]


@pytest.fixture
def interrupted_run(tmp_path):
    """(data file, run directory) of a CSV run whose checkpoint --resume takes."""
    data = tmp_path / "a.csv"
    write_csv(data)
    run = tmp_path / "run"
    assert main(["train", "--data", f"csv:{data}", *TRAIN, "--out", str(run)]) == 0
    unfinish(run)
    return data, run


def test_resume_over_an_edited_file_is_refused(interrupted_run, capsys):
    data, run = interrupted_run
    data.write_text(data.read_text().replace(",lima,", ",oslo,"))  # same rows, one value renamed
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "the data are numbered otherwise than when the checkpoint was taken (field 'city': code 2 is 'oslo' " \
           "against 'lima'" in err and "they changed since" in err


def test_resume_over_the_same_file_is_taken(interrupted_run, capsys):
    _, run = interrupted_run
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "resumed" in capsys.readouterr().out


@pytest.fixture
def parquet_run(tmp_path):
    """A run on a Parquet file with an integer id column whose ids have 1 to 3 digits (numeric order and
    the order of their decimal text differ), saved as pimm_fast saved runs before vocabularies were kept."""
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow.csv as pacsv

    source = tmp_path / "a.csv"
    write_csv(source)
    data = tmp_path / "a.parquet"
    pq.write_table(pacsv.read_csv(source), data)
    run = tmp_path / "run"
    assert main(["train", "--data", f"csv:{data}", *TRAIN, "--out", str(run)]) == 0
    return data, run


def test_a_run_without_vocabulary_on_renumbered_parquet_ids_is_refused(parquet_run, tmp_path, capsys):
    data, run = parquet_run
    assert main(["evaluate", "--checkpoint", str(run)]) == 0  # with its vocabulary: fine
    strip_vocabulary(run)
    capsys.readouterr()
    for argv in (["evaluate", "--checkpoint", str(run)],
                 ["predict", "--checkpoint", str(run), "--out", str(tmp_path / "p.csv")],
                 ["export", "--checkpoint", str(run), "--out", str(tmp_path / "m.pt2")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "was saved without its vocabulary" in err and "field 'item': its integer ids were numbered in " \
            "numeric order then" in err and "retrain it" in err, (argv, err)
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "m.pt2").exists()
    unfinish(run)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert "field 'item': its integer ids were numbered in numeric order then" in capsys.readouterr().err


@requires_torchrec
def test_resume_sharded_over_an_edited_file_is_refused(tmp_path):
    data = tmp_path / "a.csv"
    write_csv(data)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pimm_fast", "train", "--distributed", "--data", f"csv:{data}", *TRAIN,
               "--model", "shared_bottom"]
    proc = subprocess.run(command + ["--out", str(run)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "vocabulary.txt").is_file()
    data.write_text(data.read_text().replace(",lima,", ",oslo,"))
    proc = subprocess.run(command[:-2] + ["--epochs", "2", "--model", "shared_bottom", "--resume-sharded", str(run)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"--resume-sharded {run}: the data are numbered otherwise than when the checkpoint was taken (field " \
           f"'city'" in proc.stderr
