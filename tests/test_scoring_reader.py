"""read_for_scoring: any CSV / Parquet file, every row in file order, encoded with a trained vocabulary."""
import numpy as np
import pytest

from pimm_fast.data import DataFormatError, FieldVocab, ScoringTable, Vocabulary, load, read_for_scoring

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def vocab(dense=("price",)):
    return Vocabulary([FieldVocab("user", "encoded", 4, 1, np.array([b"-5", b"u1", b"u2"], dtype="S")),
                       FieldVocab("hour", "identity", 24)],
                      dense_names=dense, label_names=["click", "buy"], task_names=["click", "purchase"], source="csv")


def test_csv_every_row_in_file_order_with_keys_unseen_and_labels(tmp_path):
    path = tmp_path / "new.csv"
    # columns in another order than training; a row that breaks the cascade is scored, not dropped
    path.write_text("request_id,hour,price,buy,user,click,note\n"
                    "007,3,1.5,1,u2,0,a b\n"
                    "r2,23,,0,zz,1,\n"
                    "r3,0,NaN,0,,0,x\n"
                    "r4,5,2,1,-5,1,\n")
    t = read_for_scoring(path, vocab())
    assert isinstance(t, ScoringTable) and t.rows == 4
    assert t.x.dtype == np.int64 and t.x.tolist() == [[3, 3], [0, 23], [0, 0], [1, 5]]
    assert t.unseen == {"user": 2, "hour": 0}
    np.testing.assert_array_equal(t.dense, np.array([[1.5], [np.nan], [np.nan], [2.0]], dtype=np.float32))
    assert t.labels.dtype == np.float32 and t.labels.tolist() == [[0, 1], [1, 0], [0, 0], [1, 1]]
    assert list(t.keys) == ["request_id", "buy", "click", "note"]  # labels come back too
    assert t.keys["request_id"].tolist() == ["007", "r2", "r3", "r4"]  # text, leading zeros kept
    assert t.keys["note"].tolist() == ["a b", "", "x", ""]
    only = read_for_scoring(path, vocab(), keep_columns=["request_id", "user"])
    assert list(only.keys) == ["request_id", "user"] and only.keys["user"].tolist() == ["u2", "zz", "", "-5"]


def test_labels_are_optional_and_missing_columns_are_named(tmp_path):
    path = tmp_path / "nolabels.csv"
    path.write_text("user,hour,price,click\nu1,1,0.5,1\n")
    t = read_for_scoring(path, vocab())
    assert t.labels is None and t.keys["click"].tolist() == ["1"]
    bad = tmp_path / "renamed.csv"
    bad.write_text("usr,hour,cost\nu1,1,0.5\n")
    with pytest.raises(DataFormatError, match=r"renamed\.csv .*: the model's column\(s\) \['user', 'price'\] are "
                                              r"missing; the file has \['usr', 'hour', 'cost'\]"):
        read_for_scoring(bad, vocab())
    with pytest.raises(DataFormatError, match=r"keep_columns \['id'\] are not in the file's columns"):
        read_for_scoring(path, vocab(), keep_columns=["id"])
    headerless = tmp_path / "headerless.csv"
    headerless.write_text("u1,1,0.5\n")
    with pytest.raises(DataFormatError, match="needs a header line"):
        read_for_scoring(headerless, vocab())


def test_identity_range_and_bad_cells_name_line_and_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("user,hour,price\nu1,1,0.5\nu1,24,0.5\n")
    with pytest.raises(DataFormatError, match=r"bad\.csv, line 3: field 'hour' = 24 is outside the model's ids 0\.\.23"):
        read_for_scoring(path, vocab())
    path.write_text("user,hour,price\nu1,1,0.5\nu1,1,cheap\n")
    with pytest.raises(DataFormatError, match=r"bad\.csv, line 3: dense column 'price' = 'cheap' is not a number"):
        read_for_scoring(path, vocab())
    path.write_bytes(b"user,hour,price\nu1,1,0.5\nu\xff1,1,0.5\n")
    with pytest.raises(DataFormatError, match=r"bad\.csv, line 3: column 'user': the id cell .* is not UTF-8"):
        read_for_scoring(path, vocab())


def test_quoted_csv_keeps_line_numbers_and_text(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('id,user,hour,price\n"a,1",u1,2,1\n"multi\nline",u2,3,1\n"c",u2,99,1\n')
    with pytest.raises(DataFormatError, match=r"q\.csv, line 5: field 'hour' = 99 is outside"):
        read_for_scoring(path, vocab())
    path.write_text('id,user,hour,price\n"a,1",u1,2,1\n"multi\nline",u2,3,1\n')
    t = read_for_scoring(path, vocab())
    assert t.keys["id"].tolist() == ["a,1", "multi\nline"] and t.x.tolist() == [[2, 2], [3, 3]]


def test_parquet_any_column_order_keys_keep_their_type(tmp_path):
    path = tmp_path / "new.parquet"
    pq.write_table(pa.table({"id": ["x", "y", "z"], "hour": [1, 2, 3], "user": ["u1", None, "q"],
                             "price": [1.0, None, 3.0], "n": [10, 20, 30]}), path)
    t = read_for_scoring(path, vocab())
    assert t.x.tolist() == [[2, 1], [0, 2], [0, 3]] and t.unseen == {"user": 2, "hour": 0} and t.labels is None
    assert t.keys["id"].tolist() == ["x", "y", "z"] and t.keys["n"].tolist() == [10, 20, 30]
    np.testing.assert_array_equal(t.dense[:, 0], np.array([1, np.nan, 3], dtype=np.float32))
    ints = tmp_path / "ints.parquet"  # integer ids are their decimal text: -5 is a training token
    pq.write_table(pa.table({"user": pa.array([-5, 7], pa.int64()), "hour": [0, 1], "price": [0.0, 0.0]}), ints)
    assert read_for_scoring(ints, vocab()).x[:, 0].tolist() == [1, 0]
    # float columns (pandas writes an integer column with a missing cell as float64): 205.0 is the id 205, NaN
    # the empty cell, as in a CSV
    floats = tmp_path / "floats.parquet"
    pq.write_table(pa.table({"user": [-5.0, float("nan"), 7.5], "hour": [0.0, 23.0, 4.0], "price": [0.0] * 3}), floats)
    t = read_for_scoring(floats, vocab())
    assert t.x.tolist() == [[1, 0], [0, 23], [0, 4]] and t.unseen == {"user": 2, "hour": 0}
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"user": ["u1"], "hour": [24], "price": [0.0]}), bad)
    with pytest.raises(DataFormatError, match=r"bad\.parquet, row 1: field 'hour' = 24 is outside"):
        read_for_scoring(bad, vocab())


def test_headerless_by_index_and_aitm_layout(tmp_path, data_dir):
    train = tmp_path / "train.csv"
    train.write_text("".join(f"{i % 2},{0},a{i % 5},{i % 3}\n" for i in range(40)))
    v = load(f"csv:{train}?labels=0,1", cache_dir=None).vocabulary
    assert v.field_names == ("2", "3")
    new = tmp_path / "new.csv"
    new.write_text("1,0,a3,2\n0,0,b,1\n")
    t = read_for_scoring(new, v)
    assert t.rows == 2 and t.labels.tolist() == [[1, 0], [0, 0]] and t.unseen == {"2": 1, "3": 0}
    assert t.x[1, 0] == 0 and t.x[0, 0] == v.encode_column(0, np.array([b"a3"], dtype="S"))[0][0]
    d = data_dir / "ali-ccp" / "paddlerec-aitm"
    aitm = load(f"aitm-csv:{d}", cache_dir=None, policy="keep", valid_fraction=0.0)
    for name in ("train.csv", "test.csv"):  # train.csv has a header, test.csv none
        t = read_for_scoring(d / name, aitm.vocabulary)
        lines = (d / name).read_text().splitlines()
        assert t.rows == (48 if name == "train.csv" else 50) and t.labels.shape == (t.rows, 2)
        data = [line.split(",") for line in lines if line[0].isdigit()]
        assert t.x.tolist() == [[int(c) for c in r[2:]] for r in data]
    assert (aitm.test.x.numpy() == read_for_scoring(d / "test.csv", aitm.vocabulary).x).all()


def test_real_rechub_file_scores_as_it_trained(data_dir):
    d = data_dir / "ali-ccp" / "torch-rechub"
    s = load(f"rechub-csv:{d}", cache_dir=None, policy="keep")
    t = read_for_scoring(next(d.glob("ali_ccp_test*.csv")), s.vocabulary)
    assert (t.x == s.test.x.numpy()).all() and t.labels.shape == (50, 2)
    np.testing.assert_array_equal(t.dense, s.test.dense.numpy())


def test_bag_fields_are_refused(tmp_path):
    v = Vocabulary([FieldVocab("a", "identity", 3), FieldVocab("b", "identity", 3, bag=True)], source="aliccp-raw")
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataFormatError, match=r"multi-valued fields \['b'\].*not a table format"):
        read_for_scoring(tmp_path / "t.csv", v)


def test_float_ids_train_as_the_integers_they_hold(tmp_path):
    """A Parquet id column of floats with missing cells trains the vocabulary of its CSV twin: keys are
    the integers' text and NaN is the missing cell (code 0), not a key "nan"."""
    rows = 60
    ids = [float(i % 12) if i % 7 else float("nan") for i in range(rows)]
    labels = {"click": [i % 2 for i in range(rows)], "buy": [0] * rows}
    pq.write_table(pa.table({**labels, "item": ids}), tmp_path / "f.parquet")
    with open(tmp_path / "f.csv", "w") as f:
        f.write("click,buy,item\n" + "".join(f"{c},{b},{'' if v != v else int(v)}\n"
                                            for c, b, v in zip(labels["click"], labels["buy"], ids)))
    spec = "?labels=click,buy&cache=none"
    from_parquet = load(f"csv:{tmp_path / 'f.parquet'}{spec}").vocabulary
    from_csv = load(f"csv:{tmp_path / 'f.csv'}{spec}").vocabulary
    assert from_parquet.fields[0].keys.tolist() == from_csv.fields[0].keys.tolist()
    assert b"nan" not in from_parquet.fields[0].keys.tolist() and b"3" in from_parquet.fields[0].keys.tolist()


@pytest.mark.parametrize("kind, message", [
    ("gzip", r"is gzip-compressed: decompress it first"),
    ("bz2", r"is bzip2-compressed"),
    ("zip", r"is a zip archive"),
    ("parquet", r"is a Parquet file: name it FILE\.parquet"),
    ("utf16", r"line 1: holds a NUL byte: this is not a CSV text file .*UTF-16"),
])
def test_files_that_are_not_csv_text_are_named(tmp_path, kind, message):
    """A compressed, archived, Parquet or UTF-16 file under a .csv name is refused by what it is, in scoring
    and in training alike (before: a csv module traceback, or a header of garbage)."""
    import bz2
    import gzip
    import zipfile

    text = "click,buy,user,hour,price\n1,0,u1,3,0.5\n0,0,u2,4,1.5\n" * 20
    path = tmp_path / "data.csv"
    if kind == "gzip":
        path.write_bytes(gzip.compress(text.encode()))
    elif kind == "bz2":
        path.write_bytes(bz2.compress(text.encode()))
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("data.csv", text)
    elif kind == "parquet":
        pq.write_table(pa.table({"click": [1, 0], "buy": [0, 0], "user": ["u1", "u2"], "hour": [3, 4],
                                 "price": [0.5, 1.5]}), path)
    else:
        path.write_bytes(text.encode("utf-16"))
    with pytest.raises(DataFormatError, match=message):
        read_for_scoring(path, vocab())
    with pytest.raises(DataFormatError, match=message):
        load(f"csv:{path}?labels=click,buy&cache=none")
