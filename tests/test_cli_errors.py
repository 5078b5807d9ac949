"""User errors of the command line: one line `pimm-fast: error: ...`, exit 2, before any work is done."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pimm_fast.cli import main

FAST = ["--epochs", "1", "--tower-dims", "8", "--no-progress", "--samples", "3000"]


def one_line_error(capsys, argv, match):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pimm-fast: error: "), err
    assert match in lines[0], lines[0]
    return out


@pytest.mark.parametrize("argv, match", [
    (["--alpha", "2"], "--alpha/--step/--floor"),
    (["--floor", "0.9"], "floor <= alpha"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--batch-size", "-3"], "--batch-size must be >= 1"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--lr", "0"], "--lr must be a finite number > 0"),
    (["--embed-dim", "0"], "--embed-dim must be >= 1"),
    (["--device", "tpu:x"], "--device"),
    (["--device", "cuda:7"], "--device cuda:7"),
    (["--backend", "fast"], "invalid choice: 'fast'"),
    (["--epochs", "three"], "invalid int value: 'three'"),
    (["--model", "xgboost"], "unknown --model 'xgboost'"),
])
def test_bad_options_fail_before_the_data_are_read(capsys, tmp_path, argv, match):
    # the data spec names a file that does not exist: the option error must come first
    out = one_line_error(capsys, ["train", "--data", f"csv:{tmp_path / 'absent.csv'}", "--labels", "a,b", *argv],
                         match)
    assert "data:" not in out and "epoch" not in out


def test_data_spec_errors_before_training(capsys, tmp_path):
    one_line_error(capsys, ["train", "--data", f"csv:{tmp_path / 'absent.csv'}", "--labels", "a,b"], "not found")
    path = tmp_path / "t.csv"
    path.write_text("u,click,buy\na,1,0\n")
    one_line_error(capsys, ["train", "--data", f"csv:{path}"], "--labels")
    one_line_error(capsys, ["train", "--data", f"csv:{path}?labels=click,buy&test_fraction=0"],
                   "test_fraction must be in (0, 1)")
    one_line_error(capsys, ["train", "--data", f"csv:{path}?labels=click,buy&test_fraction=-0.2"],
                   "test_fraction must be in (0, 1)")
    one_line_error(capsys, ["train", "--data", f"csv:{path}?labels=click,buy&valid_fraction=0.5&test_fraction=0.5"],
                   "leave no training rows")
    # ?labels= in the spec and --labels disagreeing is an error, not "the last one wins"
    one_line_error(capsys, ["train", "--data", f"csv:{path}?labels=click,buy", "--labels", "buy,click"],
                   "given twice with different values")


def test_output_path_is_checked_before_training(capsys, tmp_path):
    out = one_line_error(capsys, ["train", *FAST, "--output", str(tmp_path)], "is a directory")
    assert "epoch" not in out
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = one_line_error(capsys, ["train", *FAST, "--output", str(blocker / "r.json")], "not a directory")
    assert "epoch" not in out
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        one_line_error(capsys, ["train", *FAST, "--output", str(locked / "r.json")], "cannot create files in")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"] + (["locked"] if os.geteuid() != 0 else [])


def test_diverging_loss_stops_with_a_message_and_writes_nothing(capsys, tmp_path):
    result = tmp_path / "r.json"
    one_line_error(capsys, ["train", *FAST, "--lr", "1e6", "--output", str(result)], "training diverged")
    assert list(tmp_path.iterdir()) == []


def cascade_csv(path, n=400, broken=40, seed=0):
    rng = np.random.default_rng(seed)
    click = rng.random(n) < 0.4
    buy = click & (rng.random(n) < 0.5)
    buy[:broken] = True
    click[:broken] = False  # these rows break the cascade
    lines = ["user,item,click,buy"] + [f"u{rng.integers(0, 9)},i{rng.integers(0, 5)},{int(c)},{int(b)}"
                                       for c, b in zip(click, buy)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_drop_report_on_screen_and_in_the_results(capsys, tmp_path):
    path = cascade_csv(tmp_path / "t.csv")
    result = tmp_path / "r.json"
    assert main(["train", "--data", f"csv:{path}", "--labels", "click,buy", "--cache-dir", "none",
                 "--epochs", "1", "--tower-dims", "8", "--no-progress", "--output", str(result)]) == 0
    out = capsys.readouterr().out
    dropped = json.loads(result.read_text())["data"]["report"]["dropped"]
    reason = "labels break the cascade (cascade policy 'drop')"
    assert set(dropped) == {"train", "valid", "test"} and sum(d[reason] for d in dropped.values()) == 40
    for split, d in dropped.items():
        if d[reason]:
            assert f"data: dropped {d[reason]} {split} row(s): {reason}" in out


def test_keep_policy_trains_models_without_a_cascade_and_refuses_the_others(capsys, tmp_path):
    path = cascade_csv(tmp_path / "t.csv")
    base = ["train", "--data", f"csv:{path}", "--labels", "click,buy", "--cache-dir", "none",
            "--cascade-policy", "keep", "--epochs", "1", "--tower-dims", "8", "--no-progress"]
    for model in ("pimm", "esmm", "aitm", "mncm"):
        one_line_error(capsys, base + ["--model", model], "use --model shared_bottom / mmoe / ple")
    for model in ("shared_bottom", "mmoe", "ple"):
        assert main(base + ["--model", model]) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert "held-out test set" in out and "no row dropped" in out
        assert "row(s): labels break the cascade (cascade policy 'keep': trained as they are)" in out


def test_empty_splits_are_errors(capsys, tmp_path):
    header_only = tmp_path / "h.csv"
    header_only.write_text("user,click,buy\n")
    one_line_error(capsys, ["train", "--data", f"csv:{header_only}", "--labels", "click,buy", "--cache-dir", "none",
                            *FAST], "no data rows (only a header line)")
    broken = tmp_path / "b.csv"
    broken.write_text("user,click,buy\n" + "a,0,1\n" * 30)
    one_line_error(capsys, ["train", "--data", f"csv:{broken}", "--labels", "click,buy", "--cache-dir", "none",
                            *FAST], "split is empty after dropping")


def test_rechub_csv_takes_the_default_seed(capsys, tmp_path):
    header = "click,purchase," + ",".join(["101", "121", "122", "124", "125", "126", "127", "128", "129", "205",
                                           "206", "207", "210", "216", "508", "509", "702", "853", "301",
                                           "109_14", "110_14", "127_14", "150_14"])
    rng = np.random.default_rng(0)
    for stem in ("train", "val", "test"):
        rows = []
        for _ in range(60):
            c = int(rng.random() < 0.5)
            rows.append(f"{c},{c * int(rng.random() < 0.3)}," + ",".join(str(rng.integers(0, 9)) for _ in range(23)))
        (tmp_path / f"ali_ccp_{stem}_sample.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    assert main(["train", "--data", f"rechub-csv:{tmp_path}", "--cache-dir", "none", "--epochs", "1",
                 "--tower-dims", "8", "--no-progress"]) == 0, capsys.readouterr().err


def test_cache_list_and_clear(capsys, tmp_path):
    path = cascade_csv(tmp_path / "t.csv")
    cache = tmp_path / "cache"
    assert main(["train", "--data", f"csv:{path}", "--labels", "click,buy", "--cache-dir", str(cache), *FAST]) == 0
    capsys.readouterr()
    assert main(["cache", "list", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "1 entry" in out and "csv-" in out
    one_line_error(capsys, ["cache", "clear", "nope", "--cache-dir", str(cache)], "no cache entry")
    assert main(["cache", "clear", "--cache-dir", str(cache)]) == 0
    assert "removed 1 entry" in capsys.readouterr().out and not any(cache.iterdir())


def test_no_traceback_from_the_entry_point(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pimm_fast", "train", "--epochs", "0"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "pimm-fast: error: --epochs must be >= 1, got 0"
