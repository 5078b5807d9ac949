"""pimm-fast predict / evaluate: one row per test row in input order, ids kept, one p_<task> column per task."""
import importlib.util

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from pimm_fast.cli import main
from pimm_fast.commands.run import load_data, load_run_model
from pimm_fast.train import predict


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "run"
    assert main(["train", "--data", "synthetic:demo3", "--samples", "5000", "--epochs", "1", "--tower-dims", "8",
                 "--no-progress", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_predict_keeps_row_order_count_and_ids(run_dir, tmp_path, suffix, capsys):
    out = tmp_path / f"pred{suffix}"
    assert main(["predict", "--checkpoint", str(run_dir), "--out", str(out)]) == 0
    assert "wrote 1,000 rows" in capsys.readouterr().out
    table = (pacsv.read_csv(out) if suffix == ".csv" else pq.read_table(out)).to_pydict()
    test = load_data("synthetic:demo3", 5000, 0).test
    names = [f"f{i}" for i in range(test.x.shape[1])]
    assert list(table) == names + ["p_click", "p_conversion", "p_core_conversion"]
    assert len(table["f0"]) == len(test) == 1000
    ids = torch.tensor([table[n] for n in names]).T
    assert torch.equal(ids, test.x.long())  # the test split's rows, in input order
    model, *_ = load_run_model(run_dir, None, "cpu")
    probs = torch.tensor([table[f"p_{t}"] for t in test.task_names]).T
    expected = predict(model, test)
    if suffix == ".parquet":
        assert torch.equal(probs.float(), expected)
    else:
        torch.testing.assert_close(probs.float(), expected, rtol=1e-6, atol=1e-7)
    assert not list(tmp_path.glob(".*"))


def test_predict_on_other_data_and_bad_calls(run_dir, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert main(["predict", "--checkpoint", str(run_dir), "--data", "synthetic:demo3?samples=3000&seed=5",
                 "--out", str(out)]) == 0
    assert "wrote 600 rows" in capsys.readouterr().out
    for argv, message in (
        (["--checkpoint", str(run_dir), "--out", str(tmp_path / "p.txt")], "must end in .csv, .parquet or .pq"),
        (["--checkpoint", str(run_dir), "--model", "m.pt2", "--out", str(out)], "exactly one of"),
        (["--checkpoint", str(run_dir), "--data", "synthetic:demo", "--out", str(out)], "does not fit the model"),
    ):
        assert main(["predict", *argv]) == 2
        assert message in capsys.readouterr().err


def test_evaluate_prints_the_metrics(run_dir, tmp_path, capsys):
    import json

    assert main(["evaluate", "--checkpoint", str(run_dir), "--output", str(tmp_path / "m.json")]) == 0
    text = capsys.readouterr().out
    assert "cond. AUC" in text and "core_conversion" in text and "best.pt" in text
    result = json.loads((tmp_path / "m.json").read_text())["test"]
    assert len(result["auc"]) == 3 and result["conditional_auc"][0] is None


@pytest.mark.skipif(importlib.util.find_spec("pimm_fast.export") is None, reason="pimm_fast.export not present")
def test_predict_from_an_exported_model(run_dir, tmp_path, capsys):
    from pimm_fast import export

    model, *_ = load_run_model(run_dir, None, "cpu")
    package = tmp_path / "model.pt2"
    export.save(model, package)
    out = tmp_path / "p.parquet"
    assert main(["predict", "--model", str(package), "--data", "synthetic:demo3?samples=5000", "--out", str(out)]) == 0
    table = pq.read_table(out).to_pydict()
    test = load_data("synthetic:demo3", 5000, 0).test
    probs = torch.tensor([table[f"p_{t}"] for t in test.task_names]).T
    torch.testing.assert_close(probs.float(), predict(model, test), rtol=1e-4, atol=1e-5)
