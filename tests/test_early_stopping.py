"""Early stopping on an undefined monitor (a single-class validation split), the 'stopped early' flag at the
last epoch, and the one-line summary the commands print."""
import dataclasses

import pytest
import torch

import pimm_fast
from pimm_fast.data import load_synthetic
from pimm_fast.train import TrainConfig, Trainer
from pimm_fast.train.trainer import early_stopping_step, early_stopping_summary


def fresh() -> dict:
    return {"monitor": "last", "best": None, "best_epoch": None, "bad_epochs": 0, "stopped": False,
            "undefined_epochs": 0}


def test_an_undefined_monitor_never_stops_the_run():
    early = fresh()
    for epoch in range(6):
        assert not early_stopping_step(early, None, epoch, patience=2, epochs=6)
    assert not early["stopped"] and early["best_epoch"] is None and early["undefined_epochs"] == 6
    line = early_stopping_summary(early, 6, "last")
    assert "undefined in all 6 epoch(s)" in line and "the last weights are scored" in line


def test_undefined_epochs_do_not_count_as_bad_epochs():
    early = fresh()
    for epoch, value in enumerate([0.7, None, None, 0.6]):
        early_stopping_step(early, value, epoch, patience=2, epochs=10)
    assert early["bad_epochs"] == 1 and not early["stopped"] and early["best_epoch"] == 0


def test_patience_reached_at_the_last_epoch_is_not_an_early_stop():
    early = fresh()
    for epoch, value in enumerate([0.8, 0.7, 0.6]):
        early_stopping_step(early, value, epoch, patience=2, epochs=3)
    assert not early["stopped"]
    assert early_stopping_summary(early, 3, "last") == "best validation epoch 1 (last 0.8000), restored"
    early = fresh()
    for epoch, value in enumerate([0.8, 0.7, 0.6]):
        early_stopping_step(early, value, epoch, patience=2, epochs=4)
    assert early["stopped"]
    assert early_stopping_summary(early, 3, "last").startswith("stopped early after epoch 3; best validation")


def test_no_validation_no_summary():
    assert early_stopping_summary(fresh(), 3, "last") is None


def test_single_class_validation_runs_every_epoch_and_warns_once(recwarn):
    train, valid = load_synthetic("demo", num_samples=3000, seed=2)
    y = valid.y.clone()
    y[:, 1] = 0  # no conversion in validation: its AUC (the 'last' monitor) is undefined
    valid = dataclasses.replace(valid, y=y)
    torch.manual_seed(0)
    model = pimm_fast.PIMM(train.field_dims, embed_dim=3, tower_dims=(8,))
    trainer = Trainer(model, train, TrainConfig(epochs=4, batch_size=1024, patience=1, progress=False), valid=valid)
    history = trainer.run()
    assert len(history) == 4  # before: stopped after `patience` epochs, having chosen nothing
    assert trainer.early["best_epoch"] is None and trainer.early["undefined_epochs"] == 4
    assert not [w for w in recwarn if "single class" in str(w.message)]  # summarised, not warned every epoch
