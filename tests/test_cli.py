import json
import subprocess
import sys

from pimm_fast.cli import main


def test_train_prints_the_auc_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "result.json"
    code = main(["train", "--samples", "20000", "--epochs", "1", "--tower-dims", "32,16", "--no-progress",
                 "--output", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "oracle AUC" in text and "click" in text and "conversion" in text
    result = json.loads(out.read_text())
    assert len(result["test"]["auc"]) == 2 and result["history"][0]["p"] == 0.5
    assert not list(tmp_path.glob(".*.tmp*"))  # written atomically


def test_three_task_preset(capsys):
    assert main(["train", "--data", "synthetic:demo3", "--samples", "20000", "--epochs", "1",
                 "--tower-dims", "16", "--no-progress"]) == 0
    assert "core_conversion" in capsys.readouterr().out


def test_module_entry_point_and_info():
    result = subprocess.run([sys.executable, "-m", "pimm_fast", "info"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["torch"]


def test_bad_arguments_exit_with_a_message(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["train", "--tower-dims", "a,b"])
    assert "comma-separated ints" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unknown data spec"):
        main(["train", "--data", "parquet:/nope", "--no-progress"])


def test_baselines_and_fused_embedding_from_the_command_line(capsys):
    for model in ("aitm", "esmm"):
        assert main(["train", "--model", model, "--samples", "8000", "--epochs", "1", "--no-progress"]) == 0
        assert f"{model.upper()} on synthetic:demo" in capsys.readouterr().out
    assert main(["train", "--model", "pimm", "--backbone", "mmoe", "--embedding-optimizer", "rowwise_adagrad",
                 "--embedding-lr", "0.05", "--samples", "8000", "--epochs", "1", "--tower-dims", "16",
                 "--no-progress"]) == 0
    assert "embedding optimizer rowwise_adagrad" in capsys.readouterr().out


def test_unknown_model_and_misplaced_backbone_exit_with_a_message():
    import pytest

    with pytest.raises(SystemExit, match="unknown model 'xgboost'"):
        main(["train", "--model", "xgboost", "--samples", "2000", "--no-progress"])
    with pytest.raises(SystemExit, match="--backbone applies to --model pimm only"):
        main(["train", "--model", "aitm", "--backbone", "ple", "--samples", "2000", "--no-progress"])
