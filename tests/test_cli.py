import json
import subprocess
import sys

import torch

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

    assert main(["train", "--tower-dims", "a,b"]) == 2
    assert "comma-separated ints" in capsys.readouterr().err
    assert main(["train", "--data", "parquet:/nope", "--no-progress"]) == 2
    assert "pimm-fast: error: unknown data spec" in capsys.readouterr().err


def test_baselines_and_fused_embedding_from_the_command_line(capsys):
    for model in ("aitm", "esmm"):
        assert main(["train", "--model", model, "--samples", "8000", "--epochs", "1", "--no-progress"]) == 0
        assert f"{model.upper()} on synthetic:demo" in capsys.readouterr().out
    assert main(["train", "--model", "pimm", "--backbone", "mmoe", "--embedding-optimizer", "rowwise_adagrad",
                 "--embedding-lr", "0.05", "--samples", "8000", "--epochs", "1", "--tower-dims", "16",
                 "--no-progress"]) == 0
    assert "embedding optimizer rowwise_adagrad" in capsys.readouterr().out


def test_unknown_model_and_misplaced_backbone_exit_with_a_message(capsys):
    assert main(["train", "--model", "xgboost", "--samples", "2000", "--no-progress"]) == 2
    assert "unknown --model 'xgboost'" in capsys.readouterr().err
    assert main(["train", "--model", "aitm", "--backbone", "ple", "--samples", "2000", "--no-progress"]) == 2
    assert "--backbone applies to --model pimm only" in capsys.readouterr().err


def test_multi_valued_fields_train_as_bags(tmp_path, capsys):
    """Ali-CCP's 23-field variant: the 6 multi-valued fields reach the model as mean-pooled bags."""
    from pimm_fast.data import load
    from pimm_fast.data.aliccp import write_synthetic_raw
    from pimm_fast.modules import JaggedIds
    from pimm_fast.train.trainer import _batcher, model_input

    write_synthetic_raw(tmp_path, "train", num_rows=3000, seed=1)
    write_synthetic_raw(tmp_path, "test", num_rows=1000, seed=2)
    splits = load(f"aliccp-raw:{tmp_path}?variant=full&cache=none", log=lambda _: None)
    train = splits.train
    x, y, dense = model_input(next(iter(_batcher(train, 64, torch.device("cpu"), shuffle=False))), train)
    assert dense is None
    assert isinstance(x, JaggedIds) and x.shape == (64, len(train.model_field_dims)) and y.shape[0] == 64
    assert len(train.model_field_dims) == len(train.field_dims) + len(train.bag_names) == 23
    assert main(["train", "--data", f"aliccp-raw:{tmp_path}", "--variant", "full", "--cache-dir", "none",
                 "--epochs", "1", "--tower-dims", "16", "--embedding-optimizer", "adam", "--no-progress"]) == 0
    assert "17 fields + 6 multi-valued" in capsys.readouterr().out
