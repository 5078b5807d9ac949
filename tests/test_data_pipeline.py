"""Atomic cache, Batcher, spec strings and the command line's data options."""
import json
import os

import numpy as np
import pytest
import torch

from pimm_fast.data import Batcher, BagTable, CascadeData, DataFormatError, generate, load, parse_spec
from pimm_fast.data import cache as cache_mod
from pimm_fast.data import tables

from .test_data_tables import aitm_row, write_aitm


# ---------------------------------------------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------------------------------------------
def test_cache_round_trip_and_manifest(tmp_path):
    arrays = {"train.x": np.arange(12, dtype=np.int32).reshape(4, 3), "train.y": np.ones((4, 2), np.float32)}
    target = cache_mod.write_cache(tmp_path / "c", arrays, {"key": "k1", "field_dims": [3, 4, 5]})
    got, manifest = cache_mod.read_cache(target, "k1")
    assert manifest["field_dims"] == [3, 4, 5] and manifest["arrays"]["train.x"]["shape"] == [4, 3]
    np.testing.assert_array_equal(got["train.x"], arrays["train.x"])
    assert isinstance(got["train.x"], np.memmap)
    got["train.x"][0, 0] = 99  # copy-on-write: the file is untouched
    np.testing.assert_array_equal(cache_mod.read_cache(target, "k1")[0]["train.x"], arrays["train.x"])
    assert cache_mod.read_cache(target, "other-key") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no temporary left behind


def test_interrupted_write_leaves_nothing_that_is_trusted(tmp_path, monkeypatch):
    arrays = {f"a{i}": np.full(10, i, np.int32) for i in range(3)}
    real_save, calls = np.save, []

    def dying_save(f, arr, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        real_save(f, arr, **kw)

    monkeypatch.setattr(np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        cache_mod.write_cache(tmp_path / "c", arrays, {"key": "k"})
    monkeypatch.setattr(np, "save", real_save)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary directory
    # a killed process leaves its temporary directory: it is never read, and the next write removes it
    stale = tmp_path / ".c.tmp-999999999-abcd"
    stale.mkdir()
    (stale / "a0.npy").write_bytes(b"partial")
    assert cache_mod.read_cache(tmp_path / "c", "k") is None
    cache_mod.write_cache(tmp_path / "c", arrays, {"key": "k"})
    assert not stale.exists() and cache_mod.read_cache(tmp_path / "c", "k") is not None


def test_half_or_damaged_caches_are_not_trusted(tmp_path):
    arrays = {"x": np.arange(100, dtype=np.int32)}
    target = cache_mod.write_cache(tmp_path / "c", arrays, {"key": "k"})
    (target / "x.npy").write_bytes((target / "x.npy").read_bytes()[:-8])  # truncated
    assert cache_mod.read_cache(target, "k") is None
    target = cache_mod.write_cache(tmp_path / "c", arrays, {"key": "k"})
    (target / "manifest.json").unlink()  # files without a manifest: a half cache
    assert cache_mod.read_cache(target, "k") is None
    target = cache_mod.write_cache(tmp_path / "c", arrays, {"key": "k"})
    (target / "manifest.json").write_text("{not json")
    assert cache_mod.read_cache(target, "k") is None
    target = cache_mod.write_cache(tmp_path / "c", arrays, {"key": "k"})
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["arrays"]["x"]["shape"] = [99]
    (target / "manifest.json").write_text(json.dumps(manifest))
    assert cache_mod.read_cache(target, "k") is None


def test_load_writes_the_cache_once_and_reuses_it(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    write_aitm(data, [aitm_row(i % 2, 0, i) for i in range(20)] + ["0,1," + aitm_row(0, 0)[4:]],
               [aitm_row(0, 0, 3)])
    first = load(f"aitm-csv:{data}", cache_dir=tmp_path / "cache")
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1
    manifest = json.loads((entries[0] / "manifest.json").read_text())
    assert manifest["field_dims"] == list(first.field_dims) and manifest["stats"]["train_file"]["cascade_dropped"] == 1
    assert len(manifest["source_sha256"]) == 64 and manifest["sources"][0]["size"] > 0
    assert manifest["stats"]["train_rows"] == len(first.train)

    def boom(*a, **k):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(tables, "load_aitm_csv", boom)
    again = load(f"aitm-csv:{data}", cache_dir=tmp_path / "cache")
    assert torch.equal(again.train.x, first.train.x) and torch.equal(again.test.y, first.test.y)
    assert again.stats == first.stats
    with pytest.raises(AssertionError, match="cache should have been used"):
        load(f"aitm-csv:{data}?seed=1", cache_dir=tmp_path / "cache")  # other options: another cache entry
    (data / "test.csv").write_text(aitm_row(1, 1, 4) + "\n")  # the source changed: the old entry is not used
    with pytest.raises(AssertionError, match="cache should have been used"):
        load(f"aitm-csv:{data}", cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------------------------------------------------------
# batcher
# ---------------------------------------------------------------------------------------------------------------
def small_data(n=103):
    x = torch.arange(n, dtype=torch.int32).unsqueeze(1).repeat(1, 3)
    y = torch.stack([(torch.arange(n) % 2).float(), torch.zeros(n)], 1)
    return CascadeData(x=x, y=y, field_dims=(n,) * 3, task_names=("click", "conversion"))


def test_batcher_visits_every_sample_once_per_epoch():
    data = small_data()
    batcher = Batcher(data, 10, seed=1)
    assert len(batcher) == 11
    epochs = []
    for _ in range(2):
        rows = torch.cat([x[:, 0] for x, y in batcher])
        assert sorted(rows.tolist()) == list(range(103))
        epochs.append(rows)
    assert not torch.equal(epochs[0], epochs[1])  # a new order per epoch
    again = Batcher(data, 10, seed=1)
    assert torch.equal(torch.cat([x[:, 0] for x, _ in again]), epochs[0])  # reproducible from (seed, epoch)
    again.set_epoch(1)
    assert torch.equal(torch.cat([x[:, 0] for x, _ in again]), epochs[1])
    for x, y in Batcher(data, 10, seed=1):
        assert torch.equal(y[:, 0], (x[:, 0] % 2).float())  # x and y stay aligned
    assert [len(x) for x, _ in Batcher(data, 10, drop_last=True)] == [10] * 10


def test_unshuffled_batches_are_views():
    data = small_data()
    batches = list(Batcher(data, 50, shuffle=False))
    assert [len(x) for x, _ in batches] == [50, 50, 3]
    assert batches[1][0].data_ptr() == data.x[50:].data_ptr()  # no copy


@pytest.mark.parametrize("drop_last", [False, True])
def test_shards_split_one_permutation(drop_last):
    data = small_data()
    world = 4
    per_rank = [torch.cat([x[:, 0] for x, _ in Batcher(data, 8, seed=3, shard=(r, world), drop_last=drop_last)])
                for r in range(world)]
    lengths = {len(p) for p in per_rank}
    assert len(lengths) == 1  # equal work per rank
    union = torch.cat(per_rank)
    if drop_last:
        assert len(union) <= 103 and len(set(union.tolist())) == len(union)
    else:
        assert set(union.tolist()) == set(range(103)) and len(union) == 4 * 26
    with pytest.raises(ValueError, match="shard"):
        Batcher(data, 8, shard=(4, 4))


def test_batcher_bags_match_the_csr_tables():
    off = torch.tensor([0, 2, 2, 5])
    val = torch.tensor([1, 2, 3, 4, 5], dtype=torch.int32)
    data = small_data(6)
    data.bags = (BagTable(names=("h",), dims=(6,), offsets=(off,), values=(val,),
                          index=torch.tensor([2, 0, 1, 2, 0, 1])),)
    sub = data.subset(torch.tensor([0, 1, 2]))
    x, y, bags = next(iter(Batcher(sub, 3, shuffle=False, bags=True)))
    ids, offsets = bags["h"]
    assert offsets.tolist() == [0, 3, 5, 5] and ids.tolist() == [3, 4, 5, 1, 2]
    emb = torch.nn.EmbeddingBag(6, 2, mode="sum", include_last_offset=True)
    assert emb(ids.long(), offsets).shape == (3, 2)
    with pytest.raises(ValueError, match="no multi-valued fields"):
        Batcher(small_data(), 4, bags=True)


def test_batcher_devices():
    data = small_data()
    x, y = next(iter(Batcher(data, 16, device="cpu", resident=True)))
    assert x.device.type == "cpu" and len(x) == 16
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="pin_memory=True needs CUDA"):
            Batcher(data, 16, pin_memory=True)
    else:  # pragma: no cover - exercised on GPU machines
        xs = [x for x, _ in Batcher(data, 16, device="cuda", pin_memory=True)]
        assert xs[0].is_cuda and sum(len(x) for x in xs) == 103
        xs = [x for x, _ in Batcher(data, 16, device="cuda", resident=True)]
        assert xs[0].is_cuda and sum(len(x) for x in xs) == 103


# ---------------------------------------------------------------------------------------------------------------
# spec strings
# ---------------------------------------------------------------------------------------------------------------
def test_spec_parsing():
    assert parse_spec("synthetic") == ("synthetic", "demo", {})
    assert parse_spec("synthetic:aliccp?scale=0.5&samples=10") == ("synthetic", "aliccp", {"scale": 0.5, "samples": 10})
    assert parse_spec("csv:/a/b.csv?labels=click,buy&encode=false")[2] == {"labels": ["click", "buy"],
                                                                          "encode": False}
    for bad, message in [("parquet:/x", "unknown data spec"), ("", "unknown data spec"),
                         ("synthetic:nope", "synthetic presets are"), ("aitm-csv:", "needs a path"),
                         ("synthetic:demo?samples=abc", "bad value for 'samples'"),
                         ("synthetic:demo?bogus=1", "unknown option 'bogus'"),
                         ("synthetic:demo?samples", "bad options")]:
        with pytest.raises(ValueError, match=message):
            parse_spec(bad)
    with pytest.raises(ValueError, match="do not apply to synthetic"):
        load("synthetic:demo?samples=100", policy="drop")
    with pytest.raises(ValueError, match="is 100 in the data spec"):
        load("synthetic:demo?samples=100", samples=200)
    with pytest.raises(ValueError, match="unknown cascade policy"):
        load("aitm-csv:/nonexistent", policy="nope")
    with pytest.raises(FileNotFoundError, match="not found"):
        load("rechub-csv:/nonexistent/dir", cache_dir=None)


# ---------------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------------
def test_cli_reads_a_csv_with_label_and_feature_options(tmp_path, capsys, monkeypatch):
    from pimm_fast.cli import build_parser, main

    args = build_parser().parse_args(["train", "--labels", "click,buy", "--data", "csv:/x.csv",
                                      "--features", "user,item", "--cache-dir", "none"])
    assert parse_spec(args.data) == ("csv", "/x.csv", {"labels": ["click", "buy"], "features": ["user", "item"],
                                                       "cache": "none"})
    data = generate(3000, seed=0)
    lines = ["u,i,f2,click,buy"] + [f"{a},{b},{c},{int(p)},{int(q)}" for (a, b, c), (p, q) in
                                     zip(data.x[:, :3].tolist(), data.y.tolist())]
    path = tmp_path / "t.csv"
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("PIMM_FAST_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["train", "--data", str("csv:" + str(path)), "--labels", "click,buy", "--epochs", "1",
                 "--tower-dims", "8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "3 fields" in out and "click -> buy" in out and "wrote the cache" in out
    assert len(list((tmp_path / "cache").iterdir())) == 1
    path.write_text("\n".join(lines[:5] + ["1,2,3,0,1"]) + "\n")
    assert main(["train", "--data", f"csv:{path}?labels=click,buy&policy=error", "--no-progress",
                 "--cache-dir", "none"]) == 2
    assert "break the cascade" in capsys.readouterr().err
    assert main(["train", "--data", "aitm-csv:/nonexistent", "--no-progress"]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(DataFormatError):  # the loader itself raises; only the CLI turns it into an exit
        load(f"csv:{path}?labels=click,buy&policy=error", cache_dir=None)
    assert os.environ["PIMM_FAST_CACHE_DIR"] == str(tmp_path / "cache")


def test_an_unwritable_cache_warns_and_still_loads(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_aitm(data, [aitm_row(0, 0, i) for i in range(10)], [aitm_row(0, 0, 3)])
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache directory should be")
    with pytest.warns(RuntimeWarning, match="could not write the data cache"):
        splits = load(f"aitm-csv:{data}", cache_dir=blocker / "cache")
    assert len(splits.train) + len(splits.valid) == 10
