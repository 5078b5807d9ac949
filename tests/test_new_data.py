"""Train on one file, score a different, unlabelled file (issue 17's acceptance test): new ids, shuffled
column order, key columns passed through, every row in order; the checkpoint, the .pt2 package in a fresh
process and the C++ scorer agree; a renamed column is an error naming it."""
import csv
import subprocess
import sys

import numpy as np
import pyarrow.csv as pacsv
import pytest

from pimm_fast.cli import main

from .cpp_example import build_score_csv, run_score_csv

CITIES = ["paris", "tōkyō", "new york", "são paulo", "o'hare, il", "lagos"]


def write_train(path, rows=3000, seed=0):
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["click", "buy", "user", "item", "city", "price"])
        for _ in range(rows):
            user, item, city = rng.integers(0, 60), rng.integers(-20, 40), rng.integers(0, len(CITIES))
            click = int(rng.random() < 0.2 + 0.3 * (city % 2))
            buy = int(click and rng.random() < 0.3 + 0.01 * (user % 10))
            w.writerow([click, buy, f"u{user}", item, CITIES[city], f"{rng.gamma(2.0, 10.0):.2f}"])


def write_new(path, rows=257, seed=1, rename=None):
    """New rows: other and unseen ids, no labels, columns shuffled, two key columns."""
    rng = np.random.default_rng(seed)
    header = ["request_id", "city", "price", "session", "item", "user"]
    if rename:
        header = [rename.get(h, h) for h in header]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in range(rows):
            w.writerow([f"req-{r:04d}", CITIES[rng.integers(0, len(CITIES))] if r % 7 else "berlin",
                        "" if r % 11 == 0 else f"{rng.gamma(2.0, 10.0):.2f}", f"s{r % 13}",
                        int(rng.integers(-30, 60)), f"u{rng.integers(0, 90)}"])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A PIMM trained on file A (string, negative-integer and dense columns)."""
    root = tmp_path_factory.mktemp("newdata")
    train_file = root / "a.csv"
    write_train(train_file)
    out = root / "run"
    assert main(["train", "--data", f"csv:{train_file}", "--labels", "click,buy", "--dense", "price",
                 "--epochs", "1", "--tower-dims", "8", "--no-progress", "--out", str(out)]) == 0
    return root, out


def read_csv(path) -> dict:
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=False)).to_pydict()


def test_vocabulary_travels_with_the_run(run):
    import torch

    from pimm_fast.data import Vocabulary

    _, out = run
    on_disk = Vocabulary.from_bytes((out / "vocabulary.txt").read_bytes())
    assert on_disk.field_names == ("user", "item", "city") and on_disk.dense_names == ("price",)
    for name in ("checkpoint.pt", "best.pt"):
        payload = torch.load(out / name, weights_only=True)
        assert Vocabulary.from_bytes(payload["vocabulary"]) == on_disk
    sizes = dict(zip(on_disk.field_names, on_disk.field_dims))
    assert sizes["city"] == len(CITIES) + 1 and sizes["user"] == 61  # u0..u59 and the unseen code


def test_predict_scores_every_row_of_a_new_unlabelled_file(run, capsys):
    root, out = run
    new = root / "b.csv"
    write_new(new)
    preds = root / "b_pred.csv"
    assert main(["predict", "--checkpoint", str(out), "--data", str(new), "--out", str(preds)]) == 0
    printed = capsys.readouterr().out
    assert "257 rows" in printed and "unseen in training" in printed and "city " in printed
    table = read_csv(preds)
    assert list(table) == ["request_id", "session", "p_click", "p_buy"]
    assert table["request_id"] == [f"req-{r:04d}" for r in range(257)]  # every row, in order
    p = np.array([table["p_click"], table["p_buy"]]).T
    assert np.isfinite(p).all() and ((p > 0) & (p < 1)).all()
    # the same scores as the model applied to the codes the training vocabulary gives the raw values
    from pimm_fast.commands.run import open_run, run_model, vocabulary_data
    from pimm_fast.data import read_for_scoring
    import torch

    saved = open_run(out)
    codes = read_for_scoring(new, saved.vocabulary)
    model = run_model(saved, vocabulary_data(saved.vocabulary), "cpu").eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(codes.x), dense=torch.from_numpy(codes.dense)).numpy()
    np.testing.assert_allclose(p, expected, rtol=1e-6, atol=1e-7)
    assert codes.unseen["city"] == sum(1 for r in range(257) if r % 7 == 0)  # 'berlin' never trained


def test_keep_columns_and_parquet(run, capsys):
    import pyarrow.parquet as pq

    root, out = run
    new = root / "b.csv"
    write_new(new, rows=50)
    preds = root / "b_pred.parquet"
    assert main(["predict", "--checkpoint", str(out), "--data", f"csv:{new}", "--keep-columns", "user,request_id",
                 "--out", str(preds)]) == 0
    table = pq.read_table(preds).to_pydict()
    assert list(table) == ["user", "request_id", "p_click", "p_buy"] and len(table["user"]) == 50


def test_a_renamed_column_is_an_error_naming_it(run, capsys):
    root, out = run
    new = root / "renamed.csv"
    write_new(new, rename={"city": "town"})
    preds = root / "never.csv"
    assert main(["predict", "--checkpoint", str(out), "--data", str(new), "--out", str(preds)]) == 2
    err = capsys.readouterr().err
    assert "city" in err and err.startswith("pimm-fast: error:") and not preds.exists()


def test_evaluate_matches_columns_by_name(run, tmp_path, capsys):
    """The training file with its columns in another order evaluates to the same metrics (before, swapped
    columns of equal sizes were scored silently with each other's codes); a renamed one is an error."""
    import json

    root, out = run
    rows = list(csv.reader(open(root / "a.csv")))
    order = [5, 4, 0, 3, 2, 1]  # price, city, click, item, user, buy
    shuffled = tmp_path / "shuffled.csv"
    with open(shuffled, "w", newline="") as f:
        csv.writer(f).writerows([[row[i] for i in order] for row in rows])
    results = []
    for data in (f"csv:{root / 'a.csv'}", f"csv:{shuffled}"):
        report = tmp_path / f"{len(results)}.json"
        assert main(["evaluate", "--checkpoint", str(out), "--data", data, "--output", str(report)]) == 0
        results.append(json.loads(report.read_text())["test"])
    assert results[0] == results[1]
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(shuffled.read_text().replace("item", "sku", 1))
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out), "--data", f"csv:{renamed}"]) == 2
    assert "item" in capsys.readouterr().err


def write_labelled(path, rows=400, seed=3, broken=(5, 17, 18)):
    """New labelled rows (unseen ids among them), columns in another order than training's; the rows
    ``broken`` have buy=1 with click=0 (they break the cascade)."""
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "buy", "request_id", "price", "click", "item", "city"])
        for r in range(rows):
            city = rng.integers(0, len(CITIES))
            click = int(rng.random() < 0.2 + 0.3 * (city % 2))
            buy = 1 if r in broken else int(click and rng.random() < 0.4)
            if r in broken:
                click = 0
            w.writerow([f"u{rng.integers(0, 90)}", buy, f"req-{r}", f"{rng.gamma(2.0, 10.0):.2f}", click,
                        int(rng.integers(-30, 60)), CITIES[city] if r % 9 else "berlin"])


def test_evaluate_measures_every_row_of_a_new_labelled_file(run, tmp_path, capsys):
    """evaluate --data FILE: every row of the file (no split), encoded with the run's vocabulary, the rows that
    break the cascade dropped by the run's policy ('drop') and counted; the metrics are those of predict's
    probabilities on the same rows (AUC and log loss checked against scikit-learn)."""
    import json

    sk = pytest.importorskip("sklearn.metrics")
    _, out = run
    new = tmp_path / "week2.csv"
    write_labelled(new)
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(new), "--output", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "400 rows; 3 dropped: labels break the cascade" in printed and "every row of" in printed
    saved = json.loads(report.read_text())
    result = saved["test"]
    assert saved["rows"] == 400 and saved["cascade_dropped"] == 3 and result["samples"] == 397
    preds = tmp_path / "p.csv"
    assert main(["predict", "--checkpoint", str(out), "--data", str(new), "--out", str(preds)]) == 0
    table = read_csv(preds)  # the labels come back as key columns by default
    keep = [r not in (5, 17, 18) for r in range(400)]
    for t, task in enumerate(("click", "buy")):
        y = np.array(table[task])[keep]
        p = np.array(table[f"p_{task}"])[keep]
        assert result["positives"][t] == int(y.sum())
        assert abs(result["auc"][t] - sk.roc_auc_score(y, p)) < 1e-6
        assert abs(result["logloss"][t] - sk.log_loss(y, p)) < 1e-5


def test_evaluate_on_a_file_names_missing_and_bad_labels(run, tmp_path, capsys):
    _, out = run
    unlabelled = tmp_path / "b.csv"
    write_new(unlabelled, rows=20)
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(unlabelled)]) == 2
    err = capsys.readouterr().err
    assert "label column(s) ['click', 'buy'] are missing" in err and "predict scores" in err
    bad = tmp_path / "bad.csv"
    write_labelled(bad, rows=20, broken=())
    lines = bad.read_text().splitlines()
    cells = lines[7].split(",")
    cells[1] = ""  # buy, empty on line 8
    lines[7] = ",".join(cells)
    bad.write_text("\n".join(lines) + "\n")
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(bad)]) == 2
    assert "bad.csv, line 8: label 'buy' = nan is NaN" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(bad), "--output", "/proc/nope/m.json"]) == 2
    assert "--output /proc/nope/m.json" in capsys.readouterr().err
    broken = tmp_path / "broken.csv"
    write_labelled(broken, rows=2, broken=(0, 1))
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(broken)]) == 2
    assert "no rows to evaluate (2 in the file, 2 dropped" in capsys.readouterr().err


@pytest.fixture(scope="module")
def package(run):
    """The run exported by `pimm-fast export` (its vocabulary inside), and file B scored from the checkpoint."""
    root, out = run
    pt2 = root / "model.pt2"
    assert main(["export", "--checkpoint", str(out), "--out", str(pt2)]) == 0
    new = root / "b_pkg.csv"
    write_new(new, rows=1025, seed=7)
    from_checkpoint = root / "b_ckpt.csv"
    assert main(["predict", "--checkpoint", str(out), "--data", str(new), "--out", str(from_checkpoint)]) == 0
    return pt2, new, read_csv(from_checkpoint)


def test_checkpoint_package_and_cpp_agree_on_a_new_file(package, tmp_path, tmp_path_factory):
    """The issue's acceptance test: file B (new ids, shuffled columns, key columns, no labels) scored from the
    checkpoint, from the .pt2 in a fresh process (`pimm-fast predict --model`) and from C++ agree to 1e-6,
    every row in order, the key columns back."""

    pt2, new, expected = package
    assert expected["request_id"] == [f"req-{r:04d}" for r in range(1025)]
    want = np.array([expected["p_click"], expected["p_buy"]]).T
    out = tmp_path / "b_pkg.csv"
    result = subprocess.run([sys.executable, "-m", "pimm_fast", "predict", "--model", str(pt2), "--data", str(new),
                             "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    fresh = read_csv(out)
    assert fresh["request_id"] == expected["request_id"] and fresh["session"] == expected["session"]
    np.testing.assert_allclose(np.array([fresh["p_click"], fresh["p_buy"]]).T, want, rtol=0, atol=1e-6)
    binary = build_score_csv(tmp_path_factory)
    cpp = run_score_csv(binary, pt2, new)
    assert cpp.returncode == 0, cpp.stderr
    scored = tmp_path / "cpp.csv"
    scored.write_text(cpp.stdout)
    table = read_csv(scored)
    assert table["request_id"] == expected["request_id"]
    np.testing.assert_allclose(np.array([table["p_click"], table["p_buy"]]).T, want, rtol=0, atol=1e-6)


def test_evaluate_an_exported_package(run, package, tmp_path, capsys):
    """evaluate --model FILE.pt2: every row of a labelled file, or a spec's test split, scored by the package
    (its vocabulary, the default cascade policy 'drop'): the run's metrics on the same rows."""
    import json

    root, out = run
    pt2, _, _ = package
    new = tmp_path / "week2.csv"
    write_labelled(new)
    results = {}
    for source in ("--checkpoint", "--model"):
        for data in (str(new), f"csv:{root / 'a.csv'}?labels=click,buy&dense=price"):
            report = tmp_path / f"{source[2:]}-{len(results)}.json"
            argv = ["evaluate", source, str(out if source == "--checkpoint" else pt2), "--data", data,
                    "--output", str(report)]
            assert main(argv) == 0, capsys.readouterr().err
            results[source, data == str(new)] = json.loads(report.read_text())
    printed = capsys.readouterr().out
    assert "3 dropped: labels break the cascade (a package's default cascade policy 'drop')" in printed
    for whole_file in (True, False):
        run_metrics, package_metrics = results["--checkpoint", whole_file], results["--model", whole_file]
        assert package_metrics["model"] == str(pt2) and "checkpoint" not in package_metrics
        assert package_metrics["test"]["samples"] == run_metrics["test"]["samples"] == (397 if whole_file else 600)
        for key in ("auc", "logloss", "positives"):
            assert package_metrics["test"][key] == pytest.approx(run_metrics["test"][key], abs=1e-5)
    for argv, message in ((["evaluate", "--model", str(pt2)], "needs --data"),
                          (["evaluate", "--model", str(pt2), "--checkpoint", str(out), "--data", str(new)],
                           "give exactly one of --checkpoint")):
        assert main(argv) == 2
        assert message in capsys.readouterr().err


def test_a_renamed_column_is_refused_by_the_package_and_cpp(package, tmp_path, tmp_path_factory, capsys):

    pt2, _, _ = package
    renamed = tmp_path / "renamed.csv"
    write_new(renamed, rows=5, rename={"item": "sku"})
    assert main(["predict", "--model", str(pt2), "--data", str(renamed), "--out", str(tmp_path / "p.csv")]) == 2
    assert "item" in capsys.readouterr().err and not (tmp_path / "p.csv").exists()
    cpp = run_score_csv(build_score_csv(tmp_path_factory), pt2, renamed)
    assert cpp.returncode != 0 and "item" in cpp.stderr and not cpp.stdout.strip()


def test_readme_flow_runs_as_written(tmp_path):
    """README's "Your data" commands, pasted into an empty folder (pimm-fast as python -m pimm_fast)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Your data"):]
    block = section[section.index("```bash") + len("```bash"):section.index("```", section.index("```bash") + 7)]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert len(commands) == 5 and commands[0].startswith("python examples/shop_data.py")
    examples = Path(__file__).resolve().parents[1] / "examples"
    for command in commands:
        argv = command.split()
        if argv[0] == "python":
            argv = [sys.executable, str(examples / "shop_data.py"), *argv[2:]]
        else:
            assert argv[0] == "pimm-fast", command
            argv = [sys.executable, "-m", "pimm_fast", *argv[1:], *(["--no-progress"] if argv[1] == "train" else [])]
        result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, (command, result.stderr[-2000:])
    scores = read_csv(tmp_path / "scores.csv")
    assert list(scores) == ["request_id", "session", "p_click", "p_buy"] and len(scores["request_id"]) == 1000


def test_a_run_from_before_vocabularies(run, tmp_path, capsys):
    """A run saved without a vocabulary still evaluates its own data; a raw file it cannot encode is refused."""
    import shutil

    import torch

    root, out = run
    old = tmp_path / "old"
    shutil.copytree(out, old)
    (old / "vocabulary.txt").unlink()
    for name in ("checkpoint.pt", "best.pt"):
        payload = torch.load(old / name, weights_only=True)
        del payload["vocabulary"]
        torch.save(payload, old / name)
    assert main(["evaluate", "--checkpoint", str(old)]) == 0
    new = tmp_path / "b.csv"
    write_new(new, rows=3)
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(old), "--data", str(new), "--out", str(tmp_path / "p.csv")]) == 2
    assert "holds no vocabulary" in capsys.readouterr().err
