"""pimm-fast compare on a tiny run writes the documented files (README.md, "Comparing models")."""
import csv
import json

import pytest

from pimm_fast.cli import main


def strict_json(text):
    def refuse(constant):
        raise AssertionError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_compare_writes_table_json_csv_and_plots(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--models", "esmm,pimm", "--seeds", "2", "--data", "synthetic:demo3", "--samples", "5000",
                 "--epochs", "2", "--batch-size", "512", "--lr-sweep", "0.002,0.01", "--patience", "1", "--jobs", "1",
                 "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "mean +- std" in text and "p vs best" in text and "oracle" in text and "core_conversion" in text

    results = strict_json((out / "results.json").read_text())
    assert results["schema"] == "pimm_fast.compare/1"
    assert results["tasks"] == ["click", "conversion", "core_conversion"] and results["seeds"] == [0, 1]
    assert set(results["models"]) == {"esmm", "pimm"} and results["best_model"] in results["models"]
    assert set(results["oracle_auc"]) == set(results["tasks"]) and all(0.5 < v < 1 for v in results["oracle_auc"].values())
    for name, model in results["models"].items():
        assert model["lr"] in (0.002, 0.01) and set(model["lr_sweep"]) == {"0.002", "0.01"}
        for task in results["tasks"]:
            for metric in ("auc", "conditional_auc", "logloss", "ece", "funnel_violation"):
                s = model["tasks"][task][metric]
                assert set(s) == {"mean", "std", "n", "values"} and len(s["values"]) == 2
            auc = model["tasks"][task]["auc"]
            assert auc["mean"] == pytest.approx(sum(auc["values"]) / 2)
            assert auc["std"] == pytest.approx(abs(auc["values"][0] - auc["values"][1]) / 2 ** 0.5)
        assert len(model["runs"]) == 2 and all(r["history"] for r in model["runs"])
        if name == results["best_model"]:
            assert model["welch_vs_best"] is None
        else:
            assert model["welch_vs_best"] is None or 0 <= model["welch_vs_best"]["p"] <= 1
    pimm_runs = results["models"]["pimm"]["runs"]
    assert [p for _, p in pimm_runs[0]["p_trace"]][:2] == [0.5, 0.25]

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3 * 5 and set(rows[0]) >= {"model", "task", "metric", "mean", "std", "seed_0", "seed_1"}
    auc_row = next(r for r in rows if r["model"] == "pimm" and r["task"] == "click" and r["metric"] == "auc")
    assert float(auc_row["mean"]) == pytest.approx(results["models"]["pimm"]["tasks"]["click"]["auc"]["mean"])

    for name in ("auc.png", "validation.png", "p_schedule.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*"))


def test_compare_checks_its_options(tmp_path, capsys):
    assert main(["compare", "--models", "pimm,xgboost", "--out", str(tmp_path)]) == 2
    assert "unknown model(s) xgboost" in capsys.readouterr().err
    assert main(["compare", "--lr-sweep", "0.1,-1", "--out", str(tmp_path)]) == 2
    assert "learning rates" in capsys.readouterr().err
    assert main(["compare", "--models", "pimm", "--samples", "3000", "--monitor", "nope", "--out", str(tmp_path),
                 "--no-progress"]) == 2
    assert "--monitor" in capsys.readouterr().err


def test_parallel_runs_give_the_same_results(tmp_path, capfd):
    """--jobs 2 --threads 2 (two processes of one thread) reproduces one process of one thread, run by run."""
    common = ["compare", "--models", "shared_bottom,esmm", "--seeds", "2", "--samples", "4000", "--epochs", "1",
              "--batch-size", "512", "--no-progress"]
    threads = __import__("torch").get_num_threads()
    try:
        assert main([*common, "--out", str(tmp_path / "one"), "--threads", "1"]) == 0
        assert main([*common, "--out", str(tmp_path / "two"), "--threads", "2", "--jobs", "2"]) == 0
    finally:
        __import__("torch").set_num_threads(threads)
    one, two = (strict_json((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    out = capfd.readouterr().out  # the workers' output too: they report nothing the parent has reported
    assert two["timing"]["jobs"] == 2 and "2 processes x 1 threads" in out
    assert out.count("data: no row dropped") == 2, out
    for model in one["models"]:
        for task in one["tasks"]:
            assert one["models"][model]["tasks"][task]["auc"]["values"] == \
                two["models"][model]["tasks"][task]["auc"]["values"]
