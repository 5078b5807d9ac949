"""AITM CSV, torch-rechub CSV and generic CSV / Parquet loaders: real samples (skipped when absent) + fixtures."""
import csv
import json
import sys

import numpy as np
import pytest
import torch

from pimm_fast.data import DataFormatError, load
from pimm_fast.data.aliccp import AITM_FIELDS, AITM_VOCAB_SIZES
from pimm_fast.data.tables import CASCADE_DROP, CASCADE_KEEP, DENSE_MISSING, RECHUB_DENSE, RECHUB_SPARSE

HEADER = "click,purchase," + ",".join(AITM_FIELDS)


def aitm_row(click, purchase, base=1):
    return ",".join([str(click), str(purchase)] + [str((base + j) % AITM_VOCAB_SIZES[f]) for j, f in
                                                  enumerate(AITM_FIELDS)])


# ---------------------------------------------------------------------------------------------------------------
# real samples
# ---------------------------------------------------------------------------------------------------------------
def test_real_aitm_sample_cascade_policies(data_dir):
    d = data_dir / "ali-ccp" / "paddlerec-aitm"
    dropped = load(f"aitm-csv:{d}", cache_dir=None)
    s = dropped.stats
    # train.csv: 48 rows + header, 2 violations; test.csv: 50 rows, no header (not a lost first row), 3 violations
    assert s["train_header"] is True and s["test_header"] is False
    assert s["train_file"] == {"rows": 48, "cascade_violations": 2, "cascade_dropped": 2, "kept": 46}
    assert s["test_file"] == {"rows": 50, "cascade_violations": 3, "cascade_dropped": 3, "kept": 47}
    assert len(dropped.train) + len(dropped.valid) == 46 and len(dropped.test) == 47
    assert dropped.field_dims == tuple(AITM_VOCAB_SIZES[f] for f in AITM_FIELDS)
    assert dropped.train.x.dtype == torch.int32 and dropped.train.y.dtype == torch.float32
    for part in (dropped.train, dropped.valid, dropped.test):
        assert torch.all(part.y[:, 1] <= part.y[:, 0])
    first = [int(v) for v in (d / "test.csv").read_text().splitlines()[0].split(",")]
    assert dropped.test.x[0].tolist() == first[2:]  # the first line of test.csv is data
    kept = load(f"aitm-csv:{d}?policy=keep&valid_fraction=0", cache_dir=None)
    assert len(kept.train) == 48 and len(kept.test) == 50 and kept.valid is None
    assert int(((kept.train.y[:, 1] == 1) & (kept.train.y[:, 0] == 0)).sum()) == 2
    assert kept.report["kept"] == {"train": {CASCADE_KEEP: 2}, "test": {CASCADE_KEEP: 3}}
    with pytest.raises(DataFormatError, match=r"train\.csv, line 9: labels \(click=0, conversion=1\) .*2 such"):
        load(f"aitm-csv:{d}", policy="error", cache_dir=None)


def csv_dense(path, names):
    """The named columns of a CSV as float32, read independently of the loader (Python's csv module)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return np.array([[float(r[n]) for n in names] for r in rows], dtype=np.float32)


def test_real_rechub_sample(data_dir):
    d = data_dir / "ali-ccp" / "torch-rechub"
    splits = load(f"rechub-csv:{d}", cache_dir=None)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (100, 50, 50)
    assert len(splits.field_dims) == 23 and splits.field_names[12] == "210"
    assert int(splits.train.y[:, 0].sum()) == 7 and int(splits.train.y[:, 1].sum()) == 1
    for part in (splits.train, splits.valid, splits.test):
        assert (part.x.max(0).values < torch.tensor(splits.field_dims)).all()
    # the 8 D* columns are dense features, in file order; no column is left unread
    assert splits.stats["ignored_columns"] == []
    assert splits.train.dense_names == RECHUB_DENSE and splits.train.num_dense == 8
    for part, stem in ((splits.train, "train"), (splits.valid, "val"), (splits.test, "test")):
        path = d / f"ali_ccp_{stem}_sample.csv"
        with open(path, newline="") as f:
            header = next(csv.reader(f))
        assert [c for c in header if c.startswith("D")] == list(part.dense_names)
        assert part.dense.dtype == torch.float32 and part.dense.shape == (len(part), 8)
        np.testing.assert_array_equal(part.dense.numpy(), csv_dense(path, RECHUB_DENSE))  # no row dropped
    assert splits.train.dense[0, 4].item() == np.float32(0.07556)  # line 2's D508, as printed in the file
    assert splits.report["altered"] == {s: {DENSE_MISSING: 0} for s in ("train", "valid", "test")}
    # dense=none: the same rows and ids, no dense features, the D* columns reported as ignored
    bare = load(f"rechub-csv:{d}?dense=none", cache_dir=None)
    assert bare.train.dense is None and bare.train.num_dense == 0 and bare.train.dense_names == ()
    assert bare.stats["ignored_columns"] == list(RECHUB_DENSE)
    assert torch.equal(bare.train.x, splits.train.x) and torch.equal(bare.test.y, splits.test.y)
    some = load(f"rechub-csv:{d}", dense=["D5*", "D853"], cache_dir=None)
    assert some.train.dense_names == ("D508", "D509", "D853")
    assert some.stats["ignored_columns"] == ["D109_14", "D110_14", "D127_14", "D150_14", "D702"]
    np.testing.assert_array_equal(some.test.dense.numpy(), splits.test.dense.numpy()[:, [4, 5, 7]])


def test_real_rechub_sample_trains_with_its_dense_columns(data_dir, tmp_path, capsys):
    from pimm_fast.cli import main
    from pimm_fast.train import checkpoint as ckpt

    run = tmp_path / "run"
    argv = ["train", "--data", f"rechub-csv:{data_dir / 'ali-ccp' / 'torch-rechub'}", "--cache-dir", "none",
            "--epochs", "1", "--no-progress", "--out", str(run)]
    assert main(argv) == 0, capsys.readouterr().err
    assert "23 fields + 8 dense" in capsys.readouterr().out
    info = ckpt.load(ckpt.model_checkpoint(run))["model_info"]
    assert info["num_dense"] == 8 and info["dense_names"] == list(RECHUB_DENSE)
    results = json.loads((run / "results.json").read_text())
    assert results["data"]["dense_names"] == list(RECHUB_DENSE)


def test_real_aliexpress_and_census_samples_through_the_generic_loader(data_dir):
    path = data_dir / "aliexpress" / "torch-rechub" / "aliexpress_train_sample.csv"
    cats = ",".join(f"categorical_{i}" for i in range(1, 17))
    splits = load(f"csv:{path}?labels=click,conversion&features={cats}", cache_dir=None, valid_fraction=0.0)
    assert len(splits.train) + len(splits.test) == 100 and len(splits.field_dims) == 16
    assert splits.task_names == ("click", "conversion")
    assert splits.field_dims[0] == 2  # categorical_1 is constant: one id plus the 0 for unseen
    with pytest.raises(DataFormatError, match="neither labels nor features"):
        load(f"csv:{path}?labels=click,conversion&features={cats}&extra=error", cache_dir=None)
    census = data_dir / "census-income" / "torch-rechub" / "census_income_train_sample.csv"
    # without features=/dense=, its decimal columns would become ids: the loader names them and asks
    with pytest.raises(DataFormatError, match=r"age, wage per hour, .* hold decimal numbers.*--dense"):
        load(f"csv:{census}", labels=["income", "marital status"], cache_dir=None)
    numeric = ["age", "wage per hour", "capital gains", "capital losses", "divdends from stocks",
               "num persons worked for employer", "weeks worked in year"]
    # income and marital status are not a cascade: 'error' refuses them, 'keep' loads them as they are
    with pytest.raises(DataFormatError, match="break the cascade"):
        load(f"csv:{census}", labels=["income", "marital status"], dense=numeric, policy="error", cache_dir=None)
    kept = load(f"csv:{census}", labels=["income", "marital status"], dense=numeric, policy="keep", cache_dir=None)
    assert len(kept.train) + len(kept.valid) + len(kept.test) == 80 and len(kept.field_dims) == 32
    assert kept.train.dense_names == tuple(numeric) and kept.train.dense.dtype == torch.float32


def test_real_aliexpress_and_census_directories_with_their_dense_columns(data_dir):
    # torch-rechub names the files <dataset>_<split>_sample.csv: the directory is read with the authors' splits
    d = data_dir / "aliexpress" / "torch-rechub"
    ali = load(f"csv:{d}?labels=click,conversion&features=categorical_*&dense=numerical_*", cache_dir=None)
    assert (len(ali.train) + len(ali.valid), len(ali.test)) == (100, 20)  # valid: 10 % of the train file
    numerical = [f"numerical_{i}" for i in range(1, 64)]
    assert ali.test.dense_names == tuple(numerical) and ali.stats["ignored_columns"] == ["search_id"]
    np.testing.assert_array_equal(ali.test.dense.numpy(), csv_dense(d / "aliexpress_test_sample.csv", numerical))
    assert any("not used" in line and "search_id" in line for line in ali.report_lines())
    d = data_dir / "census-income" / "torch-rechub"
    numeric = ["age", "wage per hour", "capital gains", "capital losses", "divdends from stocks",
               "num persons worked for employer", "weeks worked in year"]
    census = load(f"csv:{d}", labels=["income", "marital status"], dense=numeric, policy="keep", cache_dir=None)
    assert (len(census.train), len(census.valid), len(census.test)) == (80, 20, 20)
    assert len(census.field_dims) == 32 and census.stats["ignored_columns"] == []
    np.testing.assert_array_equal(census.valid.dense.numpy(), csv_dense(d / "census_income_val_sample.csv", numeric))


# ---------------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------------
def write_aitm(tmp_path, train_lines, test_lines, header=True):
    (tmp_path / "train.csv").write_text(((HEADER + "\n") if header else "") + "\n".join(train_lines) + "\n")
    (tmp_path / "test.csv").write_text("\n".join(test_lines) + "\n")
    return tmp_path


def test_aitm_fixture_vocabulary_checks_and_dev_file(tmp_path):
    rows = [aitm_row(1, 0, i) for i in range(10)]
    write_aitm(tmp_path, rows, rows[:3])
    splits = load(f"aitm-csv:{tmp_path}", cache_dir=None, valid_fraction=0.2, seed=3)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (8, 2, 3)
    bad = rows[:4] + [aitm_row(0, 0).replace(",", ",238635,", 1).split(",", 3)[0]]
    big = ",".join(["0", "0", str(AITM_VOCAB_SIZES["101"])] + ["1"] * 17)
    write_aitm(tmp_path, rows[:4] + [big], rows[:2])
    with pytest.raises(DataFormatError, match=r"train\.csv, line 6: id 101 = 238635 is outside the vocabulary"):
        load(f"aitm-csv:{tmp_path}", cache_dir=None)
    data = load(f"aitm-csv:{tmp_path}?dims=data", cache_dir=None)
    assert data.field_dims[0] == AITM_VOCAB_SIZES["101"] + 1
    assert bad  # (keeps the helper honest: a row of 20 values)
    (tmp_path / "ctr_cvr.train").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    (tmp_path / "ctr_cvr.dev").write_text("\n".join(rows[:4]) + "\n")
    (tmp_path / "ctr_cvr.test").write_text(HEADER + "\n" + "\n".join(rows[:5]) + "\n")
    official = load(f"aitm-csv:{tmp_path}", cache_dir=None)
    assert (len(official.train), len(official.valid), len(official.test)) == (10, 4, 5)


RECHUB_HEADER = ",".join(("click", "purchase") + RECHUB_SPARSE + RECHUB_DENSE)


def write_rechub(directory, rows=30, seed=0):
    """A torch-rechub layout directory (ali_ccp_{train,val,test}_sample.csv with the header of the real
    files): cascade-respecting labels, ids 0..8, dense cells in [0, 1] with 4 decimals."""
    rng = np.random.default_rng(seed)
    directory.mkdir(exist_ok=True)
    for stem in ("train", "val", "test"):
        lines = [RECHUB_HEADER]
        for _ in range(rows):
            c = int(rng.random() < 0.5)
            lines.append(",".join([str(c), str(c * int(rng.random() < 0.3))]
                                  + [str(rng.integers(0, 9)) for _ in RECHUB_SPARSE]
                                  + [f"{v:.4f}" for v in rng.random(len(RECHUB_DENSE))]))
        (directory / f"ali_ccp_{stem}_sample.csv").write_text("\n".join(lines) + "\n")
    return directory


def set_cells(path, cells):
    """Overwrite cells of a CSV: {(file line, column name): text}."""
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    for (line, column), text in cells.items():
        row = lines[line - 1].split(",")
        row[header.index(column)] = text
        lines[line - 1] = ",".join(row)
    path.write_text("\n".join(lines) + "\n")


def test_rechub_fixture_dense_values_missing_cells_and_errors(tmp_path):
    d = write_rechub(tmp_path / "rh")
    train, val = d / "ali_ccp_train_sample.csv", d / "ali_ccp_val_sample.csv"
    expected = csv_dense(train, RECHUB_DENSE)
    # empty, NaN and +-inf cells are missing values (NaN), counted per split in the drop report
    set_cells(train, {(2, "D508"): "", (3, "D509"): "NaN", (5, "D853"): "inf", (6, "D109_14"): "-inf"})
    splits = load(f"rechub-csv:{d}", cache_dir=None)
    dense = splits.train.dense.numpy()
    missing = [(0, 4), (1, 5), (3, 7), (4, 0)]  # (data row, dense column) of the cells set above
    assert sorted(zip(*np.nonzero(np.isnan(dense)))) == missing
    for r, c in missing:
        expected[r, c] = np.nan
    np.testing.assert_array_equal(dense, expected)
    assert splits.report["altered"]["train"] == {DENSE_MISSING: 4}
    assert splits.report["altered"]["test"] == {DENSE_MISSING: 0}
    for _ in range(2):  # written to the cache, then read back from it
        cached = load(f"rechub-csv:{d}", cache_dir=tmp_path / "cache")
        np.testing.assert_array_equal(cached.train.dense.numpy(), dense)
        assert cached.train.dense_names == RECHUB_DENSE and cached.report == splits.report
    assert load(f"rechub-csv:{d}?dense=none", cache_dir=tmp_path / "cache").train.dense is None
    # any other non-number names the file, line and column; dense=none does not read those columns
    set_cells(val, {(4, "D702"): "abc"})
    with pytest.raises(DataFormatError, match=r"ali_ccp_val_sample\.csv, line 4: dense column 'D702' = 'abc' "
                                              r"is not a number"):
        load(f"rechub-csv:{d}", cache_dir=None)
    bare = load(f"rechub-csv:{d}?dense=none", cache_dir=None)
    assert bare.valid.dense is None and bare.stats["ignored_columns"] == list(RECHUB_DENSE)
    # checked before the cascade policy: a bad cell in a row the policy drops is still an error
    set_cells(val, {(4, "D702"): "0.5", (7, "click"): "0", (7, "purchase"): "1", (7, "D508"): "0.5x"})
    with pytest.raises(DataFormatError, match=r"line 7: dense column 'D508' = '0\.5x' is not a number"):
        load(f"rechub-csv:{d}", cache_dir=None)
    set_cells(val, {(7, "D508"): "0.5"})
    dropped = load(f"rechub-csv:{d}", cache_dir=None)
    assert dropped.stats["valid_file"]["cascade_dropped"] == 1 and dropped.valid.dense.shape == (29, 8)
    assert dropped.report["dropped"]["valid"] == {CASCADE_DROP: 1} and dropped.report["kept"] == {}
    kept = load(f"rechub-csv:{d}?policy=keep", cache_dir=None)
    assert kept.valid.dense.shape == (30, 8) and kept.report["kept"] == {"valid": {CASCADE_KEEP: 1}}
    # names that are not in the files, and files that disagree
    with pytest.raises(DataFormatError, match=r"dense column 'D999' is not in the header"):
        load(f"rechub-csv:{d}?dense=D999", cache_dir=None)
    with pytest.raises(DataFormatError, match=r"named both as feature and as dense"):
        load(f"rechub-csv:{d}", dense=["101"], cache_dir=None)
    test = d / "ali_ccp_test_sample.csv"
    test.write_text("\n".join(line.rsplit(",", 1)[0] for line in test.read_text().splitlines()) + "\n")
    with pytest.raises(DataFormatError, match=r"ali_ccp_test_sample\.csv: dense columns .* differ from "
                                              r"ali_ccp_train_sample\.csv's"):
        load(f"rechub-csv:{d}", cache_dir=None)


def test_rechub_fixture_trains_with_and_without_dense_columns(tmp_path, capsys):
    from pimm_fast.cli import main
    from pimm_fast.train import checkpoint as ckpt

    d = write_rechub(tmp_path / "rh", rows=60)
    fast = ["--cache-dir", "none", "--epochs", "1", "--tower-dims", "8", "--no-progress"]
    assert main(["train", "--data", f"rechub-csv:{d}", *fast, "--out", str(tmp_path / "dense")]) == 0
    assert "23 fields + 8 dense" in capsys.readouterr().out
    info = ckpt.load(ckpt.model_checkpoint(tmp_path / "dense"))["model_info"]
    assert info["num_dense"] == 8 and info["dense_names"] == list(RECHUB_DENSE)
    assert main(["train", "--data", f"rechub-csv:{d}", "--dense", "none", *fast, "--out", str(tmp_path / "bare")]) == 0
    out = capsys.readouterr().out
    assert "23 fields," in out and "dense" not in out.split("impressions")[1].split("tasks")[0]
    assert ckpt.load(ckpt.model_checkpoint(tmp_path / "bare"))["model_info"]["num_dense"] == 0
    # a run evaluated on data with other dense columns: one clear line, not a state-dict mismatch
    assert main(["evaluate", "--checkpoint", str(tmp_path / "dense"), "--data",
                 f"rechub-csv:{d}?dense=none&cache=none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dense=none differs from the model's dense columns" in err[0] and "D853" in err[0]
    # the run's vocabulary says which dense columns it reads: none for the bare run, whatever the files hold
    assert main(["evaluate", "--checkpoint", str(tmp_path / "bare"), "--data", f"rechub-csv:{d}?cache=none"]) == 0
    assert main(["evaluate", "--checkpoint", str(tmp_path / "bare"), "--data",
                 f"rechub-csv:{d}?dense=none&cache=none"]) == 0


def test_predict_with_a_package_refuses_other_dense_columns(tmp_path, capsys, monkeypatch):
    pytest.importorskip("pimm_fast.export")
    from pimm_fast import export
    from pimm_fast.cli import main

    d = write_rechub(tmp_path / "rh")
    dims = list(load(f"rechub-csv:{d}", cache_dir=None).field_dims)

    class Package:  # what export.load returns, up to the call (the check comes before any row is scored)
        def __init__(self, num_dense):
            self.metadata = {"field_dims": dims, "task_names": ["click", "conversion"], "num_dense": num_dense,
                             "dense_names": list(RECHUB_DENSE[:num_dense])}

        def __call__(self, ids, dense=None):
            raise AssertionError("the data should have been refused")

    for num_dense, spec, message in ((8, f"rechub-csv:{d}?dense=none&cache=none", "has 0 dense column(s) [], "),
                                     (0, f"rechub-csv:{d}?cache=none", "add ?dense=none")):
        monkeypatch.setattr(export, "load", lambda path, device=None, k=num_dense: Package(k))
        argv = ["predict", "--model", str(tmp_path / "m.pt2"), "--data", spec, "--out", str(tmp_path / "p.csv")]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("line,message", [
    ("0,0,1,2", r"line 3: expected 20 comma-separated columns, found 4"),
    (aitm_row(0, 0).replace("0,0,", "0,nan,", 1), r"line 3: label 'purchase' = nan is NaN"),
    (aitm_row(0, 0).replace("0,0,", "-1,0,", 1), r"line 3: label 'click' = -1 is negative"),
    (aitm_row(0, 0).replace("0,0,", "2,0,", 1), r"line 3: label 'click' = 2 is not 0/1"),
    (aitm_row(0, 0).replace("0,0,", "yes,0,", 1), r"line 3: label 'click' = 'yes' is not a number"),
    (aitm_row(0, 0).replace("0,0,1,", "0,0,x1,", 1), r"line 3: id 'x1' is not a non-negative integer"),
    (aitm_row(0, 0).replace("0,0,1,", "0,0,-1,", 1), r"line 3: id '-1' is not a non-negative integer"),
])
def test_bad_csv_rows_are_named(tmp_path, line, message):
    write_aitm(tmp_path, [aitm_row(0, 0), line, aitm_row(1, 1)], [aitm_row(0, 0)])
    with pytest.raises(DataFormatError, match=message):
        load(f"aitm-csv:{tmp_path}", cache_dir=None)


def test_aitm_unexpected_header_and_missing_files(tmp_path):
    (tmp_path / "train.csv").write_text("a,b,c\n1,2,3\n")
    (tmp_path / "test.csv").write_text("1,2,3\n")
    with pytest.raises(DataFormatError, match=r"line 1: neither the expected header"):
        load(f"aitm-csv:{tmp_path}", cache_dir=None)
    (tmp_path / "test.csv").unlink()
    with pytest.raises(FileNotFoundError, match="missing test.csv"):
        load(f"aitm-csv:{tmp_path}", cache_dir=None)


def generic_rows(n=200, seed=0):
    rng = np.random.default_rng(seed)
    click = rng.random(n) < 0.3
    buy = click & (rng.random(n) < 0.4)
    users = rng.choice(["alice", "bob", "carol", "dave"], n)
    items = rng.integers(0, 7, n)
    return [f"{u},{i},{int(c)},{int(b)},{rng.random():.3f}" for u, i, c, b in zip(users, items, click, buy)]


def test_generic_csv_names_indices_encoding_and_splits(tmp_path):
    rows = generic_rows()
    path = tmp_path / "t.csv"
    path.write_text("user,item,click,buy,score\n" + "\n".join(rows) + "\n")
    s = load(f"csv:{path}?labels=click,buy&features=user,item", cache_dir=None, seed=1)
    assert (len(s.train), len(s.valid), len(s.test)) == (140, 20, 40)
    assert s.field_dims == (5, 8) and s.task_names == ("click", "buy") and s.field_names == ("user", "item")
    assert s.stats["ignored_columns"] == ["score"]
    # codes follow sorted tokens: alice=1, bob=2, ...
    users = {r.split(",")[0] for r in rows}
    assert sorted(users) == ["alice", "bob", "carol", "dave"]
    noheader = tmp_path / "n.csv"
    noheader.write_text("\n".join(rows) + "\n")
    by_index = load(f"csv:{noheader}?labels=2,3&features=0,1", cache_dir=None, seed=1)
    assert torch.equal(by_index.train.x, s.train.x) and torch.equal(by_index.test.y, s.test.y)
    assert by_index.field_names == ("0", "1")
    with pytest.raises(DataFormatError, match=r"label column 'click' is not in the header \['"):
        load(f"csv:{noheader}?labels=click,buy", cache_dir=None)
    numeric = tmp_path / "numeric.csv"
    numeric.write_text("\n".join(f"{i % 3},{i % 2},{i % 2}" for i in range(30)) + "\n")
    with pytest.raises(DataFormatError, match="is named, but the file has no header line"):
        load(f"csv:{numeric}?labels=click,buy", cache_dir=None)
    assert len(load(f"csv:{numeric}?labels=1,2", cache_dir=None).test) == 6
    with pytest.raises(DataFormatError, match="label column 'clicks' is not in the header"):
        load(f"csv:{path}?labels=clicks,buy", cache_dir=None)
    with pytest.raises(DataFormatError, match=r"column\(s\) \['score'\] are neither"):
        load(f"csv:{path}?labels=click,buy&features=user,item&extra=error", cache_dir=None)
    with pytest.raises(ValueError, match="name the label columns"):
        load(f"csv:{path}", cache_dir=None)
    rare = load(f"csv:{path}?labels=click,buy&features=user,item&min_count=1000", cache_dir=None)
    assert rare.field_dims == (1, 1) and int(rare.train.x.abs().sum()) == 0  # everything rare -> 0


def test_quoted_csv_matches_the_fast_path(tmp_path):
    rows = generic_rows(60)
    plain = tmp_path / "plain.csv"
    plain.write_text("user,item,click,buy,score\n" + "\n".join(rows) + "\n")
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('"user","item","click","buy","score"\n' + "\n".join(
        ",".join(f'"{v}"' for v in r.split(",")) for r in rows) + "\n")
    a = load(f"csv:{plain}?labels=click,buy&features=user,item", cache_dir=None)
    b = load(f"csv:{quoted}?labels=click,buy&features=user,item", cache_dir=None)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)


def test_directory_of_files_and_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [r.split(",") for r in generic_rows(120)]
    for name, part in (("train", rows[:80]), ("valid", rows[80:100]), ("test", rows[100:])):
        table = pa.table({"user": [r[0] for r in part], "item": [int(r[1]) for r in part],
                          "click": [int(r[2]) for r in part], "buy": [int(r[3]) for r in part]})
        pq.write_table(table, tmp_path / f"{name}.parquet")
    s = load(f"csv:{tmp_path}", labels=["click", "buy"], cache_dir=None)
    assert (len(s.train), len(s.valid), len(s.test)) == (80, 20, 20)
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    for name, part in (("train", rows[:80]), ("val", rows[80:100]), ("test", rows[100:])):
        (csv_dir / f"{name}.csv").write_text("user,item,click,buy\n" + "\n".join(",".join(r[:4]) for r in part))
    c = load(f"csv:{csv_dir}", labels=["click", "buy"], cache_dir=None)
    assert torch.equal(c.train.x, s.train.x) and torch.equal(c.valid.x, s.valid.x)
    bad = pa.table({"user": ["a", "b"], "item": [1, 2], "click": [0.0, float("nan")], "buy": [0, 0]})
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(DataFormatError, match=r"bad\.parquet, row 2: label 'click' = nan is NaN"):
        load(f"csv:{tmp_path / 'bad.parquet'}", labels=["click", "buy"], cache_dir=None, valid_fraction=0.0,
             test_fraction=0.5)


def test_directory_files_named_by_split_words(tmp_path):
    rows = generic_rows(60)
    text = lambda part: "user,item,click,buy\n" + "\n".join(",".join(r.split(",")[:4]) for r in part) + "\n"
    (tmp_path / "shop_train_sample.csv").write_text(text(rows[:40]))
    (tmp_path / "shop-val.csv").write_text(text(rows[40:50]))
    (tmp_path / "shop.test.csv").write_text(text(rows[50:]))
    (tmp_path / "notes.csv").write_text("no split word: not read\n")
    s = load(f"csv:{tmp_path}", labels=["click", "buy"], cache_dir=None)
    assert (len(s.train), len(s.valid), len(s.test)) == (40, 10, 10)
    # exact names win, and the schemes never mix: with train.csv and test.csv, shop-val.csv is not the valid file
    (tmp_path / "train.csv").write_text(text(rows[:40]))
    (tmp_path / "test.csv").write_text(text(rows[50:]))
    exact = load(f"csv:{tmp_path}", labels=["click", "buy"], cache_dir=None, valid_fraction=0.0)
    assert exact.valid is None and (len(exact.train), len(exact.test)) == (40, 10)
    for name in ("train.csv", "test.csv"):
        (tmp_path / name).unlink()
    (tmp_path / "old_test.csv").write_text(text(rows[50:]))
    with pytest.raises(ValueError, match=r"2 files could be the test split: \['old_test\.csv', 'shop\.test\.csv'\]"):
        load(f"csv:{tmp_path}", labels=["click", "buy"], cache_dir=None)
    (tmp_path / "old_test.csv").rename(tmp_path / "train_test.csv")
    with pytest.raises(ValueError, match=r"train_test\.csv: the name holds the words of several splits"):
        load(f"csv:{tmp_path}", labels=["click", "buy"], cache_dir=None)


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        load(f"csv:{path}", labels=["a", "b"], cache_dir=None)


def test_more_error_paths(tmp_path):
    rows = generic_rows(50)
    path = tmp_path / "t.csv"
    path.write_text("user,item,click,buy,score\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataFormatError, match=r"named both as label and as feature"):
        load(f"csv:{path}?labels=click,buy&features=user,click", cache_dir=None)
    with pytest.raises(ValueError, match="extra must be 'ignore' or 'error'"):
        load(f"csv:{path}?labels=click,buy&features=user&extra=drop", cache_dir=None)
    with pytest.raises(ValueError, match="header must be"):
        load(f"csv:{path}?labels=click,buy&header=maybe", cache_dir=None)
    with pytest.raises(ValueError, match="at least 2 label columns"):
        load(f"csv:{path}?labels=click", cache_dir=None)
    with pytest.raises(ValueError, match="leave no training rows"):
        load(f"csv:{path}?labels=click,buy&valid_fraction=0.5&test_fraction=0.5", cache_dir=None)
    with pytest.raises(DataFormatError, match=r"id 'alice|id 'bob|id 'carol|id 'dave"):
        load(f"csv:{path}?labels=click,buy&features=user&encode=false", cache_dir=None)
    ids = tmp_path / "ids.csv"
    ids.write_text("a,click,buy\n1,0,0\n99999999999,1,0\n3,1,1\n4,0,0\n5,0,0\n")
    with pytest.raises(DataFormatError, match="beyond int32"):
        load(f"csv:{ids}?labels=click,buy&encode=false&valid_fraction=0&test_fraction=0.2", cache_dir=None)
    ids.write_text("a,click,buy\n1,0,0\n1234567890123456789,1,0\n")
    with pytest.raises(DataFormatError, match=r"ids\.csv, line 3: id '1234567890123456789' is not"):
        load(f"csv:{ids}?labels=click,buy&encode=false", cache_dir=None)
    d = tmp_path / "dir"
    d.mkdir()
    (d / "train.csv").write_text("user,click,buy\na,0,0\n")
    with pytest.raises(FileNotFoundError, match="needs train.csv"):
        load(f"csv:{d}", labels=["click", "buy"], cache_dir=None)
    rh = tmp_path / "rechub"
    rh.mkdir()
    (rh / "ali_ccp_train_sample.csv").write_text("x\n")
    with pytest.raises(FileNotFoundError, match=r"expected one ali_ccp_val\*\.csv"):
        load(f"rechub-csv:{rh}", cache_dir=None)
    for stem in ("val", "test"):
        (rh / f"ali_ccp_{stem}.csv").write_text("0,0\n")
    with pytest.raises(DataFormatError, match=r"ali_ccp_train_sample\.csv: label column 'click' is not in the header"):
        load(f"rechub-csv:{rh}", cache_dir=None)
