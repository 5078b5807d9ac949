"""The training loop: early stopping restores the best epoch, lr schedules, curriculum, batches with dense."""
import pytest
import torch

import pimm_fast
from pimm_fast.data import load_synthetic
from pimm_fast.train import TrainConfig, Trainer, fit
from pimm_fast.train import trainer as trainer_module


@pytest.fixture(scope="module")
def small():
    train, test = load_synthetic("demo", num_samples=3000, seed=2)
    return train, test


def tiny_model(train):
    return pimm_fast.PIMM(train.field_dims, embed_dim=3, tower_dims=(8,))


@pytest.mark.parametrize("patience, stop_after, best", [(2, 4, 1), (None, 5, 4), (1, 3, 1)])
@pytest.mark.parametrize("with_out", [False, True])
def test_early_stopping_restores_the_best_epoch(small, monkeypatch, tmp_path, patience, stop_after, best, with_out):
    """Validation AUC 0.6, 0.8, 0.7, 0.65, 0.9 (scripted): patience 2 stops after epoch 4 and restores epoch 2."""
    train, valid = small
    script = iter([0.6, 0.8, 0.7, 0.65, 0.9])

    def scripted(model, data, batch_size=16384, warn=True):
        value = next(script)
        return {"tasks": list(data.task_names), "auc": [0.5, value], "logloss": [0.1, 0.1]}

    monkeypatch.setattr(trainer_module, "evaluate", scripted)
    torch.manual_seed(0)
    model = tiny_model(train)
    weights = []
    config = TrainConfig(epochs=5, batch_size=1024, patience=patience, progress=False)
    trainer = Trainer(model, train, config, valid=valid, out=tmp_path if with_out else None,
                      on_epoch_end=lambda e, r: weights.append({k: v.clone() for k, v in model.state_dict().items()}))
    history = trainer.run()
    assert len(history) == stop_after and trainer.early["best_epoch"] == best
    assert trainer.early["stopped"] == (stop_after < 5)
    # the model ends with the weights it had at the end of the best epoch (not those of the last one)
    final = model.state_dict()
    expected = weights[best]
    assert not torch.equal(weights[0]["embedding.weight"], expected["embedding.weight"])  # epochs differ
    assert all(torch.equal(final[k], expected[k]) for k in final)
    if stop_after - 1 != best:  # the last epoch trained on, then its weights were replaced by the best ones
        assert all(torch.equal(weights[-1][k], expected[k]) for k in final)
    if with_out:
        best_file = torch.load(tmp_path / "best.pt", weights_only=True)
        assert best_file["epoch"] == best and best_file["value"] == [0.6, 0.8, 0.7, 0.65, 0.9][best]
        assert all(torch.equal(final[k], best_file["model"][k]) for k in final)


def test_monitor_choices(small, monkeypatch):
    train, valid = small
    values = {"last": [0.7, 0.6], "mean": [0.6, 0.7], "logloss": [0.2, 0.1]}
    for monitor, expected_best in (("last", 0), ("mean", 1), ("click", 1), ("logloss", 1)):
        script = iter([{"auc": [0.5, 0.7], "logloss": [0.3, 0.1]}, {"auc": [0.8, 0.6], "logloss": [0.1, 0.1]}])
        monkeypatch.setattr(trainer_module, "evaluate",
                            lambda m, d, b=0, warn=True: dict(next(script), tasks=list(d.task_names)))
        trainer = Trainer(tiny_model(train), train, TrainConfig(epochs=2, batch_size=1024, monitor=monitor,
                                                                 progress=False), valid=valid)
        trainer.run()
        assert trainer.early["best_epoch"] == expected_best, monitor
    del values
    with pytest.raises(ValueError, match="monitor must be"):
        Trainer(tiny_model(train), train, TrainConfig(monitor="purchase", progress=False), valid=valid)


def test_without_validation_every_epoch_runs_and_nothing_is_restored(small):
    train, _ = small
    history = fit(tiny_model(train), train, TrainConfig(epochs=2, batch_size=1024, progress=False))
    assert len(history) == 2 and "valid" not in history[0] and history[1]["p"] == 0.25


def test_real_validation_metrics_in_the_history(small):
    train, valid = small
    history = fit(tiny_model(train), train, TrainConfig(epochs=1, batch_size=512, progress=False), valid=valid)
    metrics = history[0]["valid"]
    assert set(metrics) >= {"auc", "logloss", "conditional_auc", "ece", "funnel_violation", "oracle_auc"}
    assert history[0]["monitor"] == metrics["auc"][-1]


def test_lr_schedules(small):
    train, _ = small
    for schedule, check in (
        ("none", lambda f: all(x == 1.0 for x in f)),
        ("step", lambda f: f[0] == 1.0 and f[steps] == 0.5 and f[2 * steps] == 0.25),
        ("cosine", lambda f: f[0] == 1.0 and all(a > b for a, b in zip(f, f[1:])) and f[-1] < 0.02),
    ):
        trainer = Trainer(tiny_model(train), train, TrainConfig(epochs=3, batch_size=512, lr_schedule=schedule,
                                                                 progress=False))
        steps = trainer.steps
        factors = [trainer.lr_factor(e, s) for e in range(3) for s in range(steps)]
        assert check(factors), schedule
    # the schedule reaches the dense optimizer and the fused table
    emb = pimm_fast.FusedEmbedding(train.field_dims, 3, lr=0.01)
    model = pimm_fast.PIMM(train.field_dims, embed_dim=3, tower_dims=(8,), embedding=emb)
    trainer = Trainer(model, train, TrainConfig(epochs=2, batch_size=512, lr=0.004, lr_schedule="step",
                                                progress=False))
    trainer.run()
    assert emb.lr == pytest.approx(0.005) and trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.002)


def test_per_step_curriculum_decays_within_epochs(small):
    train, _ = small
    trainer = Trainer(tiny_model(train), train, TrainConfig(epochs=2, batch_size=128, per_step_curriculum=True,
                                                            progress=False))
    trainer.run()
    ps = [p for _, p in trainer.p_trace]
    assert ps[0] == 0.5 and ps[-1] < 0.3 and all(a >= b for a, b in zip(ps, ps[1:])) and len(set(ps)) > 5


def test_train_config_checks():
    for bad in ({"patience": 0}, {"lr_schedule": "linear"}, {"weight_decay": -1}, {"checkpoint_every": -1},
                {"lr": 0}, {"epochs": 0}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_batches_with_dense_features_reach_the_model(small, monkeypatch):
    """model_input returns (x, y, dense): dense goes to the model only when it is not None."""
    train, _ = small
    inner = tiny_model(train)
    seen = []

    class WithDense(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, x, labels=None, **kwargs):
            seen.append(kwargs.get("dense"))
            return self.inner(x, labels=labels)

        def loss(self, probs, y):
            return self.inner.loss(probs, y)

    original = trainer_module.model_input
    dense = torch.ones(1)
    monkeypatch.setattr(trainer_module, "model_input", lambda b, d: (*original(b, d)[:2], dense))
    fit(WithDense(), train, TrainConfig(epochs=1, batch_size=1024, progress=False))
    assert seen and all(d is dense for d in seen)
    seen.clear()
    monkeypatch.setattr(trainer_module, "model_input", lambda b, d: (*original(b, d)[:2], None))
    fit(WithDense(), train, TrainConfig(epochs=1, batch_size=1024, progress=False))
    assert seen and all(d is None for d in seen)
