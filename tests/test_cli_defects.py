"""Defects of the command line found by a new user's trial (issue 17): each refused with one line and exit 2
before any work, or handled without a traceback."""
import subprocess
import sys
import warnings

import pytest

from pimm_fast import cli
from pimm_fast.cli import main

from . import test_cli_errors as cli_errors

FAST = ["--epochs", "1", "--tower-dims", "8", "--no-progress", "--samples", "3000"]


def one_line_error(capsys, argv, match):
    """One line `pimm-fast: error: ...` holding ``match``, exit 2, before any data were read."""
    out = cli_errors.one_line_error(capsys, argv, match)
    assert "epoch" not in out and "data:" not in out


def test_compare_checks_every_model_before_any_run(capsys, tmp_path):
    data = tmp_path / "x.csv"
    data.write_text("u,a,b\nx,1,0\ny,0,1\n" * 20)  # row 2 breaks the cascade: kept by policy=keep
    # mmoe trains on the kept rows; pimm cannot
    one_line_error(capsys, ["compare", "--models", "mmoe,pimm", "--data", f"csv:{data}?labels=a,b&policy=keep",
                            "--out", str(tmp_path / "c"), "--no-progress"], "keeps rows that break the cascade, which "
                                                                             "pimm cannot train on")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("argv, match", [
    (["train", *FAST, "--output", "/proc/nope/x.json"], "cannot create files in /proc"),
    (["compare", "--models", "mmoe", "--out", "/proc/nope", "--no-progress"], "cannot create files in /proc"),
])
def test_an_unwritable_output_is_refused_first(capsys, argv, match):
    one_line_error(capsys, argv, match)


@pytest.mark.parametrize("argv, match", [
    (["train", *FAST, "--embedding-optimizer", "dense", "--embedding-lr", "0.01"], "leave --embedding-lr out"),
    (["train", *FAST, "--lr-gamma", "0.1"], "--lr-gamma applies to --lr-schedule step; the schedule is none"),
    (["train", *FAST, "--lr-schedule", "cosine", "--lr-step-epochs", "2"], "--lr-step-epochs applies to"),
    (["train", *FAST, "--model", "mmoe", "--alpha", "0.4"], "--alpha sets PIMM's curriculum; mmoe has none"),
    (["train", *FAST, "--model", "esmm", "--per-step-curriculum"], "--per-step-curriculum sets PIMM's curriculum"),
    (["compare", "--models", "esmm,mmoe", "--floor", "0.1", "--out", "o"], "esmm, mmoe have none"),
    (["compare", "--models", "pimm", "--lr", "0.01", "--lr-sweep", "0.001,0.002", "--out", "o"],
     "--lr with --lr-sweep"),
])
def test_options_that_would_be_ignored_are_refused(capsys, tmp_path, monkeypatch, argv, match):
    monkeypatch.chdir(tmp_path)
    one_line_error(capsys, argv, match)
    assert list(tmp_path.iterdir()) == []


def test_options_that_apply_are_accepted(capsys, tmp_path):
    out = tmp_path / "r.json"
    assert main(["train", *FAST, "--lr-schedule", "step", "--lr-gamma", "0.1", "--embedding-lr", "0.01",
                 "--output", str(out)]) == 0
    assert out.is_file()


def test_resume_names_an_unset_option_plainly(capsys, tmp_path):
    run = tmp_path / "run"
    assert main(["train", *FAST, "--out", str(run)]) == 0
    capsys.readouterr()
    one_line_error(capsys, ["train", "--resume", str(run), "--backbone", "mmoe"],
                   "--backbone mmoe contradicts the checkpoint, whose run left --backbone unset; leave it out")


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`pimm-fast cache list | head`: the reader is gone before the listing is written."""
    env = {"PIMM_FAST_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-m", "pimm_fast", "cache", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and "BrokenPipeError" not in err, err


def test_warnings_are_one_line(capsys, monkeypatch):
    def command(args):
        warnings.warn("task 'buy' has a single class\nin the evaluation set", RuntimeWarning)
        return 0

    monkeypatch.setattr(cli, "_run", command)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["info"]) == 0
    err = capsys.readouterr().err
    assert err == "pimm-fast: warning: task 'buy' has a single class in the evaluation set\n", err


def test_single_class_validation_is_said_and_does_not_stop_the_run(capsys, tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    for split, rows, buy_rate in (("train", 600, 0.3), ("valid", 100, 0.0), ("test", 200, 0.3)):
        click = rng.random(rows) < 0.5
        buy = click & (rng.random(rows) < buy_rate)
        lines = ["user,click,buy"] + [f"u{rng.integers(0, 20)},{int(c)},{int(b)}" for c, b in zip(click, buy)]
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")
    assert main(["train", "--data", f"csv:{tmp_path}", "--labels", "click,buy", "--epochs", "3", "--patience", "1",
                 "--tower-dims", "8", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert out.count("epoch ") >= 3 and "epoch 3/3" in out  # before: stopped after epoch 1 without a word
    assert "validation last was undefined in all 3 epoch(s)" in out and "the last weights are scored" in out
    assert "Traceback" not in err and "RuntimeWarning" not in err


def test_docs_say_what_runs_do():
    """--threads' help claimed "all cores" (runs take one thread per 8192 samples of the batch); docs/data.md
    said synthetic specs carve no validation (they carve valid_fraction, 10 %)."""
    from pathlib import Path

    import pimm_fast.runtime as runtime

    parser = cli.build_parser()
    train = next(a for a in parser._actions if a.dest == "command").choices["train"]
    text = next(a for a in train._actions if a.dest == "threads").help
    assert "all cores" not in text and str(runtime.SAMPLES_PER_THREAD) in text
    data_md = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    assert "synthetic specs too carve `valid_fraction` (10 %)" in data_md

    from pimm_fast.data import load

    splits = load("synthetic:demo", samples=2000, seed=0)
    assert splits.valid is not None and len(splits.valid) == 200 and len(splits.train) == 1400  # 10 % and 70 %
