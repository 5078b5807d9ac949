"""The command layer (pimm_fast/commands): the run configuration, the data spec parsed once, the options
train and compare share, a --distributed run directory read without TorchRec."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pimm_fast.cli import SHARED, build_parser, main
from pimm_fast.commands.run import RUN_KEYS, RunConfig
from pimm_fast.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--samples", "3000", "--epochs", "1", "--batch-size", "256", "--tower-dims", "8", "--no-progress"]
# the keys of a run configuration as checkpoints and config.json have stored them (the file format)
STORED_KEYS = ("data", "samples", "model", "backbone", "embedding", "embedding_optimizer", "embedding_lr", "epochs",
               "batch_size", "lr", "weight_decay", "dropout", "embed_dim", "tower_dims", "alpha", "step", "floor",
               "per_step_curriculum", "backend", "seed", "patience", "monitor", "lr_schedule", "lr_gamma",
               "lr_step_epochs", "checkpoint_every")

try:
    import fbgemm_gpu  # noqa: F401
    import torchrec  # noqa: F401
    HAS_TORCHREC = True
except Exception:  # noqa: BLE001 - ImportError, or OSError of a CUDA build without the driver
    HAS_TORCHREC = False


def parse_train(*argv):
    return build_parser().parse_args(["train", *argv])


def test_run_config_round_trips_in_the_stored_format():
    config = RunConfig.from_args(parse_train("--tower-dims", "16,8", "--model", "esmm", "--patience", "2"))
    stored = config.to_dict()
    assert tuple(stored) == STORED_KEYS == RUN_KEYS
    assert stored["tower_dims"] == [16, 8] and stored["model"] == "esmm" and stored["patience"] == 2
    assert json.loads(json.dumps(stored)) == stored
    assert RunConfig.from_dict(stored, "x") == config
    assert config.train_config(progress=False).patience == 2


def test_an_older_configuration_reads_with_the_defaults_it_trained_with():
    old = {k: v for k, v in RunConfig.from_args(parse_train()).to_dict().items()
           if k not in ("embedding", "weight_decay", "dropout", "patience", "monitor", "lr_schedule", "lr_gamma",
                        "lr_step_epochs", "checkpoint_every", "backbone", "tower_dims")}
    old["written_by_a_newer_version"] = 1
    config = RunConfig.from_dict(old, "old.pt")
    assert config.embedding is None and config.weight_decay == 0.0 and config.monitor == "last"
    assert config.lr_schedule == "none" and config.lr_gamma == 0.5 and config.checkpoint_every == 0
    distributed = dict(old, distributed={"processes": 2})
    assert RunConfig.from_dict(distributed, "config.json").to_dict()["distributed"] == {"processes": 2}
    with pytest.raises(UsageError, match="old.pt holds a run configuration without model, epochs"):
        RunConfig.from_dict({k: v for k, v in old.items() if k not in ("model", "epochs")}, "old.pt")


def test_config_json_of_a_run_keeps_its_keys(tmp_path):
    assert main(["train", *FAST, "--out", str(tmp_path / "run")]) == 0
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert tuple(stored) == STORED_KEYS
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["config"] == stored


def test_the_data_spec_is_parsed_once_per_run(monkeypatch, tmp_path):
    """Once by the command, which checks it and hands the parsed spec to pimm_fast.data.load; the command line
    used to parse it five times (check, its options, the cascade policy, the load options, the load)."""
    from pimm_fast.data import spec

    calls = []
    original = spec.parse_spec
    monkeypatch.setattr(spec, "parse_spec", lambda text: calls.append(text) or original(text))
    assert main(["train", *FAST, "--data", "synthetic:demo?valid_fraction=0.2"]) == 0
    assert calls == ["synthetic:demo?valid_fraction=0.2"]


def test_compare_declares_the_shared_options_with_its_own_defaults():
    parser = build_parser()
    commands = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict)).choices
    train = {a.option_strings[0]: a for a in commands["train"]._actions if a.option_strings}
    compare = {a.option_strings[0]: a for a in commands["compare"]._actions if a.option_strings}
    for flag, declared in SHARED.items():
        for action in (train[flag], compare[flag]):
            assert action.choices == declared.get("choices") and action.dest == flag[2:].replace("-", "_")
    assert train["--batch-size"].default == 1024 and compare["--batch-size"].default == 2048
    assert compare["--data"].default == "synthetic:funnel" and train["--data"].default == "synthetic:demo"
    with pytest.raises(UsageError, match="argument --epochs: expected an integer >= 1, got 0"):
        parser.parse_args(["compare", "--out", "x", "--epochs", "0"])


@pytest.mark.skipif(not HAS_TORCHREC, reason="needs TorchRec (make torchrec)")
def test_an_explicit_torchrec_optimizer_is_kept_in_one_process(capsys):
    """--embedding torchrec --embedding-optimizer sgd on the CPU trains with sgd (it became row-wise Adagrad);
    a model rebuilt to be scored takes the device's default; adam, which FBGEMM fuses only on GPU, is refused."""
    from pimm_fast.commands.run import build_model, load_data

    config = RunConfig.from_args(parse_train("--embedding", "torchrec", "--embedding-optimizer", "sgd"))
    data = load_data("synthetic:demo", 2000, 0, quiet=True).train
    assert build_model(config, data, "cpu", training=True).embedding.optimizer == "sgd"
    assert build_model(config, data, "cpu").embedding.optimizer == "rowwise_adagrad"
    assert main(["train", *FAST, "--embedding", "torchrec", "--embedding-optimizer", "adam", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == ("pimm-fast: error: FBGEMM fuses 'adam' only on GPU; on CPU use "
                                               "--embedding-optimizer rowwise_adagrad or sgd")


# a process in which TorchRec and FBGEMM cannot be imported, as on a machine without them
WITHOUT_TORCHREC = """
import sys
sys.modules["torchrec"] = None
sys.modules["fbgemm_gpu"] = None
from pimm_fast.cli import main
code = main(sys.argv[1:])
assert "torchrec" not in sys.modules or sys.modules["torchrec"] is None
sys.exit(code)
"""


def test_a_distributed_run_directory_is_evaluated_without_torchrec(tmp_path):
    """A train --distributed --out directory (config.json, sharded/best written by torch.distributed.checkpoint
    with TorchRec's table names) is scored in a process that cannot import TorchRec, with the metrics of
    the same weights in a one-process run."""
    import torch.distributed.checkpoint as dcp

    from pimm_fast.distributed.checkpoint import TABLE_KEY

    one = tmp_path / "one"
    assert main(["train", *FAST, "--embedding-optimizer", "dense", "--model", "esmm", "--out", str(one)]) == 0
    payload = torch.load(one / "best.pt", weights_only=True)
    weights = dict(payload["model"])
    dims = payload["model_info"]["field_dims"]
    tables = torch.split(weights.pop("embedding.weight"), dims)
    padded = {TABLE_KEY.format(f): torch.cat([t, torch.zeros(len(t), 3)], 1) for f, t in enumerate(tables)}  # D_pad
    state = {"model": {**{k: v for k, v in weights.items()}, **padded}}
    run = tmp_path / "distributed"
    (run / "sharded").mkdir(parents=True)
    dcp.save(state, checkpoint_id=str(run / "sharded" / "best"), no_dist=True)
    config = dict(payload["config"], embedding="torchrec", embedding_optimizer="rowwise_adagrad",
                  distributed={"processes": 2, "sharding": "auto"})
    (run / "config.json").write_text(json.dumps(config))

    results = {}
    for name, directory, command in (("one", one, ["-c", "import sys; from pimm_fast.cli import main; "
                                                         "sys.exit(main(sys.argv[1:]))"]),
                                     ("distributed", run, ["-c", WITHOUT_TORCHREC])):
        out = tmp_path / f"{name}.json"
        result = subprocess.run([sys.executable, *command, "evaluate", "--checkpoint", str(directory), "--device",
                                 "cpu", "--output", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert result.returncode == 0, result.stderr
        results[name] = json.loads(out.read_text())["test"]
    assert results["distributed"] == results["one"]
