"""Dense (numerical) features: the DenseInput module, every model's dense input, loader, batcher and trainer."""
import math

import numpy as np
import pytest
import torch

import pimm_fast
from pimm_fast.data import Batcher, CascadeData, load
from pimm_fast.models import MODELS, build_model
from pimm_fast.models.dense import DenseInput
from pimm_fast.train import TrainConfig, evaluate, fit
from pimm_fast.train.trainer import model_input

FIELDS = [7, 5, 3]


def test_dense_input_fits_on_the_given_rows_ignoring_missing_values():
    d = torch.tensor([[1.0, 5.0, math.nan, 2.0], [3.0, 5.0, math.nan, math.inf], [math.nan, 5.0, math.nan, 4.0]])
    layer = DenseInput(4).fit(d)
    torch.testing.assert_close(layer.mean, torch.tensor([2.0, 5.0, 0.0, 3.0]))
    torch.testing.assert_close(layer.std, torch.tensor([1.0, 1.0, 1.0, 1.0]))  # constant / empty -> 1
    out = layer(torch.tensor([[4.0, 6.0, 1.0, math.nan]]))
    torch.testing.assert_close(out, torch.tensor([[2.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]]))  # + flags
    assert bool(layer.fitted) and set(layer.state_dict()) == {"mean", "std", "fitted"}
    fresh = DenseInput(4)
    fresh.load_state_dict(layer.state_dict())  # checkpoints carry the statistics
    torch.testing.assert_close(fresh(d), layer(d))
    with pytest.raises(ValueError, match=r"dense must be a float tensor \[B, 4\]"):
        layer(torch.zeros(2, 3))


@pytest.mark.parametrize("name", list(MODELS) + ["pimm-mmoe", "pimm-ple"])
def test_every_model_reads_dense_features(name):
    kwargs = {"backbone": name.split("-")[1]} if "-" in name else {}
    model = build_model(name.split("-")[0], FIELDS, num_tasks=3, num_dense=4, **kwargs)
    x = torch.stack([torch.randint(0, n, (16,)) for n in FIELDS], 1)
    dense = torch.randn(16, 4)
    dense[0, 1] = math.nan
    y = torch.zeros(16, 3)
    y[:8, 0] = 1
    y[:4, 1] = 1
    model.dense_input.fit(dense)
    probs = model(x, labels=y, dense=dense)
    assert probs.shape == (16, 3) and torch.isfinite(probs).all()
    model.loss(probs, y).backward()
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert first.in_features == len(FIELDS) * 5 + 8
    assert first.weight.grad[:, -8:].abs().sum() > 0  # the dense block is trained
    model.eval()
    other = dense.clone()
    other[:, 0] += 3
    assert not torch.allclose(model(x, dense=dense), model(x, dense=other))
    with pytest.raises(ValueError, match="num_dense=4: pass dense"):
        model(x)
    plain = build_model(name.split("-")[0], FIELDS, num_tasks=3, **kwargs)
    with pytest.raises(ValueError, match="num_dense=0"):
        plain(x, dense=dense)


def dense_source(n, seed):
    """Labels driven by a numerical column only (ids are noise): a model that ignores it is at AUC 0.5."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n)
    click = rng.random(n) < 1 / (1 + np.exp(-3 * signal))
    buy = click & (rng.random(n) < 0.5)
    price = np.where(rng.random(n) < 0.1, np.nan, signal * 10 + 50)  # 10 % missing
    return rng.integers(0, 5, n), price, rng.normal(size=n), click, buy


def write_dense_csv(path, n=3000, seed=0):
    ids, price, noise, click, buy = dense_source(n, seed)
    lines = ["user,num_price,num_noise,click,buy"]
    for u, p, z, c, b in zip(ids, price, noise, click, buy):
        lines.append(f"u{u},{'NA' if np.isnan(p) else f'{p:.4f}'},{z:.4f},{int(c)},{int(b)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_loader_reads_dense_columns_by_glob_and_counts_missing(tmp_path):
    path = write_dense_csv(tmp_path / "d.csv")
    s = load(f"csv:{path}?labels=click,buy&dense=num_*", cache_dir=None, valid_fraction=0.0)
    assert s.field_names == ("user",) and s.train.dense_names == ("num_price", "num_noise")
    assert s.train.dense.dtype == torch.float32 and s.train.dense.shape == (len(s.train), 2)
    missing = int(torch.isnan(s.train.dense[:, 0]).sum())
    assert 0 < missing < len(s.train) * 0.2
    assert s.report["altered"]["train"]["a missing numerical value (imputed with the training mean, flagged)"] \
        == missing
    sub = s.train.subset(torch.arange(5))
    assert sub.dense.shape == (5, 2)
    # the batcher carries the dense rows of the same samples, shuffled or not
    for shuffle in (False, True):
        batch = next(iter(Batcher(s.train, 64, shuffle=shuffle, seed=3)))
        x, y, dense = model_input(batch, s.train)
        order = Batcher(s.train, 64, shuffle=shuffle, seed=3).order(0)
        rows = torch.arange(64) if order is None else order[:64]
        torch.testing.assert_close(dense, s.train.dense[rows], equal_nan=True)
        assert torch.equal(x, s.train.x[rows])


def test_dense_statistics_come_from_the_training_split_and_the_model_uses_them(tmp_path):
    path = write_dense_csv(tmp_path / "d.csv", n=4000)
    s = load(f"csv:{path}?labels=click,buy&features=user&dense=num_price,num_noise", cache_dir=None,
             valid_fraction=0.0)
    torch.manual_seed(0)
    model = pimm_fast.PIMM(s.field_dims, num_dense=2, tower_dims=(16,))
    fit(model, s.train, TrainConfig(epochs=3, batch_size=128, lr=5e-3, progress=False))
    train_price = s.train.dense[:, 0].double()
    train_price = train_price[~torch.isnan(train_price)]
    assert math.isclose(float(model.dense_input.mean[0]), float(train_price.mean()), rel_tol=1e-5)
    assert math.isclose(float(model.dense_input.std[0]), float(train_price.std(unbiased=False)), rel_tol=1e-4)
    with_dense = evaluate(model, s.test)["auc"][0]
    torch.manual_seed(0)
    ids_only = pimm_fast.PIMM(s.field_dims, tower_dims=(16,))
    plain = CascadeData(s.train.x, s.train.y, s.field_dims, s.task_names)
    fit(ids_only, plain, TrainConfig(epochs=3, batch_size=128, lr=5e-3, progress=False))
    without = evaluate(ids_only, CascadeData(s.test.x, s.test.y, s.field_dims, s.task_names))["auc"][0]
    assert with_dense > 0.8 and without < 0.6, (with_dense, without)


def test_parquet_dense_columns_with_nulls(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    n = 200
    ids, price, noise, click, buy = dense_source(n, 1)
    price_list = [None if np.isnan(p) else float(p) for p in price]
    pq.write_table(pa.table({"user": [f"u{u}" for u in ids], "price": price_list, "count": np.arange(n),
                             "click": click.astype(int), "buy": buy.astype(int)}), tmp_path / "t.parquet")
    s = load(f"csv:{tmp_path / 't.parquet'}?labels=click,buy&features=user&dense=price,count", cache_dir=None)
    assert s.train.dense_names == ("price", "count")
    total = sum(int(torch.isnan(p.dense[:, 0]).sum()) for p in (s.train, s.valid, s.test))
    assert total == int(np.isnan(price).sum()) and not torch.isnan(s.train.dense[:, 1]).any()


def test_dense_cells_that_are_not_numbers_name_the_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("user,price,click,buy\na,1.5,1,0\nb,cheap,0,0\nc,,0,0\n")
    with pytest.raises(pimm_fast.data.DataFormatError, match=r"line 3: dense column 'price' = 'cheap'"):
        load(f"csv:{path}?labels=click,buy&dense=price", cache_dir=None)


def test_bags_and_dense_together_reach_the_model():
    from pimm_fast.data import BagTable
    from pimm_fast.modules import JaggedIds

    n = 12
    x = torch.randint(0, 4, (n, 2), dtype=torch.int32)
    y = torch.zeros(n, 2)
    y[::3, 0] = 1
    offsets = torch.arange(0, 2 * n + 1, 2, dtype=torch.int64)  # two ids per owner row
    bags = BagTable(names=("hist",), dims=(6,), offsets=(offsets,), values=(torch.randint(0, 6, (2 * n,),
                    dtype=torch.int32),), index=torch.arange(n))
    dense = torch.randn(n, 3)
    data = CascadeData(x, y, (4, 4), ("click", "buy"), bags=(bags,), dense=dense, dense_names=("a", "b", "c"))
    batch = next(iter(Batcher(data, 5, shuffle=True, seed=1, bags=True)))
    assert len(batch) == 4
    ids, labels, d = model_input(batch, data)
    rows = Batcher(data, 5, shuffle=True, seed=1).order(0)[:5]
    assert isinstance(ids, JaggedIds) and torch.equal(d, dense[rows]) and torch.equal(labels, y[rows])
    emb = pimm_fast.FieldEmbedding(data.model_field_dims, 4, pooling=["sum", "sum", "mean"])
    model = pimm_fast.PIMM(data.model_field_dims, embedding=emb, num_dense=3, tower_dims=(8,))
    assert model(ids, labels=labels, dense=d).shape == (5, 2)
