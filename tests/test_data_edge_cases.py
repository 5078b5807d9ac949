"""The generic table loader on awkward real-world files: memory, encodings, quoting, ids, Parquet, the cache."""
import os
import tracemalloc

import numpy as np
import pytest
import torch

import pimm_fast
from pimm_fast.data import DataFormatError, load, readers, tables
from pimm_fast.data import cache as cache_mod


def rows(n, seed=0):
    rng = np.random.default_rng(seed)
    click = rng.random(n) < 0.5
    buy = click & (rng.random(n) < 0.5)
    return [f"u{rng.integers(0, 20)},i{rng.integers(0, 9)},{int(c)},{int(b)}" for c, b in zip(click, buy)]


def test_one_huge_cell_costs_its_size_not_rows_times_its_size(tmp_path):
    lines = rows(2000)
    lines[7] = "u" + "x" * 500_000 + lines[7][lines[7].index(","):]  # one 500 KB id cell
    path = tmp_path / "t.csv"
    path.write_text("user,item,click,buy\n" + "\n".join(lines) + "\n")
    tracemalloc.start()
    s = load(f"csv:{path}?labels=click,buy", cache_dir=None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 40 << 20, f"peak {peak / 2**20:.1f} MiB"  # was rows x longest cell (1 GB here)
    assert len(s.train) + len(s.valid) + len(s.test) == 2000


def test_long_ids_stay_distinct_and_oversized_cells_are_errors(tmp_path, monkeypatch):
    a, b = "k" * 100 + "a", "k" * 100 + "b"  # equal in their first 64 bytes
    path = tmp_path / "t.csv"
    path.write_text("user,click,buy\n" + "".join(f"{a if i % 2 else b},{i % 2},0\n" for i in range(40)))
    s = load(f"csv:{path}?labels=click,buy", cache_dir=None, valid_fraction=0.0)
    assert s.field_dims == (3,)
    monkeypatch.setattr(readers, "MAX_CELL_BYTES", 50)
    with pytest.raises(DataFormatError, match=r"line 2: a cell of 101 bytes is above the limit of 50 bytes"):
        load(f"csv:{path}?labels=click,buy", cache_dir=None)


def test_quoted_field_after_the_first_mib_is_read(tmp_path):
    lines = rows(120_000)
    lines[-5] = '"u,quoted",i1,1,0'
    path = tmp_path / "t.csv"
    path.write_text("user,item,click,buy\n" + "\n".join(lines) + "\n")
    assert path.stat().st_size > 1 << 20
    s = load(f"csv:{path}?labels=click,buy", cache_dir=None, valid_fraction=0.0)
    assert len(s.train) + len(s.test) == 120_000 and s.field_dims[0] == 22  # 20 users + 'u,quoted' + unseen
    table = readers.read_csv(path, ["click", "buy"], None, "bytes", chunk_bytes=1 << 16)  # quote in a late chunk
    assert len(table.labels) == 120_000 and table.features[0][-5] == b"u,quoted"


def test_utf8_bom_is_not_part_of_the_first_name(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbfuser,item,click,buy\n" + "\n".join(rows(50)).encode() + b"\n")
    s = load(f"csv:{path}?labels=click,buy&features=user,item", cache_dir=None)
    assert s.field_names == ("user", "item")
    nohead = tmp_path / "n.csv"  # and without a header, the first id is not glued to it
    nohead.write_bytes(b"\xef\xbb\xbf7,1,0\n" + b"".join(b"%d,%d,0\n" % (i % 5, i % 2) for i in range(40)))
    s = load(f"csv:{nohead}?labels=1,2&encode=false", cache_dir=None, valid_fraction=0.0)
    assert s.field_dims == (8,)


def test_duplicate_column_names_are_an_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("user,user,click,buy\n" + "a,b,1,0\n" * 10)
    with pytest.raises(DataFormatError, match=r"names 'user' 2 times"):
        load(f"csv:{path}?labels=click,buy&features=user", cache_dir=None)
    with pytest.raises(DataFormatError, match=r"names \['user'\] more than once"):
        load(f"csv:{path}?labels=click,buy", cache_dir=None)


def test_headerless_first_row_with_an_empty_label_is_not_taken_for_a_header(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("3,,0\n" + "".join(f"{i % 4},{i % 2},0\n" for i in range(30)))
    with pytest.raises(DataFormatError, match=r"line 1: label '1' = '' is empty \(a missing label\)"):
        load(f"csv:{path}?labels=1,2", cache_dir=None)


def test_split_first_then_drop_counts_every_dropped_row_by_split(tmp_path):
    lines = rows(500)
    for i in range(0, 500, 10):
        lines[i] = f"u1,i1,0,1"  # 50 rows break the cascade
    path = tmp_path / "t.csv"
    path.write_text("user,item,click,buy\n" + "\n".join(lines) + "\n")
    s = load(f"csv:{path}?labels=click,buy", cache_dir=None)
    reason = tables.CASCADE_DROP
    counts = {k: v[reason] for k, v in s.report["dropped"].items()}
    assert sum(counts.values()) == 50 and all(counts[k] > 0 for k in ("train", "valid", "test"))
    assert len(s.train) + len(s.valid) + len(s.test) == 450
    assert s.stats["all_file"] == {"rows": 500, "cascade_violations": 50, "cascade_dropped": 50, "kept": 450}
    with pytest.raises(DataFormatError, match=r"line \d+: labels \(click=0, buy=1\) break the cascade"):
        load(f"csv:{path}?labels=click,buy&policy=error", cache_dir=None)


def test_raw_ids_too_large_for_a_table_are_rejected(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("user,click,buy\n2000000000,1,0\n" + "1,0,0\n" * 20)
    with pytest.raises(DataFormatError, match=r"holds the id 2,000,000,000.*use encode=true"):
        load(f"csv:{path}?labels=click,buy&encode=false", cache_dir=None)


def test_parquet_errors_name_the_file_and_the_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    n = 30
    base = {"click": [1, 0] * 15, "buy": [0] * n}
    for name, column, what in (("f", [0.5] * n, "double values"), ("s", ["a"] * n, "string values"),
                               ("z", [1, None] * 15, "15 null")):
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({"user": column, **base}), path)
        with pytest.raises(DataFormatError, match=f"feature column 'user' holds {what}.*encode=true"):
            load(f"csv:{path}?labels=click,buy&encode=false", cache_dir=None)
    good = tmp_path / "g.parquet"
    pq.write_table(pa.table({"user": list(range(n)), **base}), good)
    truncated = tmp_path / "cut.parquet"
    truncated.write_bytes(good.read_bytes()[:-30])
    with pytest.raises(DataFormatError, match=f"{truncated}: not a readable Parquet file"):
        load(f"csv:{truncated}?labels=click,buy", cache_dir=None)


def test_a_same_size_edit_with_the_old_mtime_is_never_served_stale(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("user,click,buy\n" + "a,1,0\nb,0,0\n" * 20)
    st = path.stat()
    first = load(f"csv:{path}?labels=click,buy", cache_dir=tmp_path / "c", valid_fraction=0.0)
    path.write_text("user,click,buy\n" + "a,0,0\nb,1,0\n" * 20)  # same size, labels swapped
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    said = []
    second = load(f"csv:{path}?labels=click,buy", cache_dir=tmp_path / "c", valid_fraction=0.0, log=said.append)
    assert "wrote the cache" in said[-1]
    torch.testing.assert_close(second.train.y[:, 0], 1 - first.train.y[:, 0])


def test_cache_evicts_the_least_recently_used_entries(tmp_path, monkeypatch):
    root = tmp_path / "c"
    specs = []
    for k in range(3):
        path = tmp_path / f"t{k}.csv"
        path.write_text("user,item,click,buy\n" + "\n".join(rows(300, seed=k)) + "\n")
        specs.append(f"csv:{path}?labels=click,buy")
        load(specs[-1], cache_dir=root)
    listed = cache_mod.entries(root)
    sizes = [e["bytes"] for e in listed]
    assert len(sizes) == 3
    for k, spec in enumerate(specs):  # an explicit order of use: entry 0 oldest, entry 2 newest
        entry = next(e for e in listed if e["spec"] == spec)
        os.utime(os.path.join(entry["path"], "manifest.json"), (1e9 + k * 3600, 1e9 + k * 3600))
    load(specs[0], cache_dir=root)  # a hit makes entry 0 the most recently used
    monkeypatch.setenv("PIMM_FAST_CACHE_MAX_BYTES", str(sum(sizes) - 1))
    path = tmp_path / "t3.csv"
    path.write_text("user,item,click,buy\n" + "\n".join(rows(300, seed=3)) + "\n")
    load(f"csv:{path}?labels=click,buy", cache_dir=root)
    left = {e["spec"] for e in cache_mod.entries(root)}
    assert specs[1] not in left and specs[0] in left and len(left) <= 3
    assert sum(e["bytes"] for e in cache_mod.entries(root)) <= sum(sizes) - 1


def test_validate_labels_without_the_cascade_check():
    y = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    for fn in (pimm_fast.ops.validate_labels, pimm_fast.reference.validate_labels):
        with pytest.raises(ValueError, match="break the cascade at row 0"):
            fn(y, 2)
        assert torch.equal(fn(y, 2, cascade=False), y)
        with pytest.raises(ValueError, match="labels must be 0 or 1"):
            fn(torch.tensor([[0.5, 0.0]]), 2, cascade=False)


def test_encode_false_on_a_decimal_column_asks_for_features_and_dense(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("user,price,click,buy\n" + "".join(f"{i % 5},{i / 7:.3f},{i % 2},0\n" for i in range(30)))
    with pytest.raises(DataFormatError, match=r"line 2: id '0.000' is not a non-negative integer; .*--dense"):
        load(f"csv:{path}?labels=click,buy&encode=false", cache_dir=None)
    s = load(f"csv:{path}?labels=click,buy&encode=false&dense=price", cache_dir=None)
    assert s.field_dims == (5,) and s.train.dense_names == ("price",)


# ---------------------------------------------------------------------------------------------------------------
# defects found while writing the scoring reader (issue 17)
# ---------------------------------------------------------------------------------------------------------------
def test_parquet_negative_integer_ids_are_tokens_with_encode_true(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    users = [-5, 3, -5, 7, 3, -1] * 10
    labels = {"click": [1, 0] * 30, "buy": [0] * 60}
    pq.write_table(pa.table({"user": pa.array(users, pa.int64()), **labels}), tmp_path / "t.parquet")
    (tmp_path / "t.csv").write_text("user,click,buy\n" + "".join(f"{u},{c},0\n" for u, c in zip(users,
                                                                                              labels["click"])))
    from_parquet = load(f"csv:{tmp_path / 't.parquet'}?labels=click,buy", cache_dir=None, valid_fraction=0.0)
    from_csv = load(f"csv:{tmp_path / 't.csv'}?labels=click,buy", cache_dir=None, valid_fraction=0.0)
    assert from_parquet.field_dims == from_csv.field_dims == (5,)  # 4 ids + the unseen code
    assert torch.equal(from_parquet.train.x, from_csv.train.x) and torch.equal(from_parquet.test.x, from_csv.test.x)
    assert from_parquet.vocabulary.fields[0].keys.tolist() == [b"-1", b"-5", b"3", b"7"]
    with pytest.raises(DataFormatError, match=r"row 1: id 'user' = -5 is negative"):
        load(f"csv:{tmp_path / 't.parquet'}?labels=click,buy&encode=false", cache_dir=None)


def test_an_unterminated_quote_is_reported_where_it_opens(tmp_path):
    lines = rows(80)
    lines[39] = '"u' + lines[39]  # file line 41 (after the header): the quote never closes
    path = tmp_path / "t.csv"
    path.write_text("user,item,click,buy\n" + "\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"t\.csv, line 41: the row starting here does not end: a quote"):
        load(f"csv:{path}?labels=click,buy", cache_dir=None)


@pytest.mark.parametrize("quoted", [False, True])
@pytest.mark.parametrize("cell, problem", [(b"u\xff1", r"is not UTF-8"), (b"u\x001", r"holds a NUL byte")])
def test_id_cells_with_nul_or_invalid_utf8_are_refused(tmp_path, quoted, cell, problem):
    body = [line.encode() for line in rows(60)]
    body[29] = cell + body[29][body[29].index(b","):]  # file line 31
    if quoted:
        body[4] = b'"u,1"' + body[4][body[4].index(b","):]  # a quote anywhere: the csv-module path
    path = tmp_path / "t.csv"
    path.write_bytes(b"user,item,click,buy\n" + b"\n".join(body) + b"\n")
    with pytest.raises(DataFormatError, match=rf"t\.csv, line 31: column 'user': the id cell .*{problem}"):
        load(f"csv:{path}?labels=click,buy", cache_dir=None)
    # the same bytes in a column that is not read are no concern
    s = load(f"csv:{path}?labels=click,buy&features=item", cache_dir=None)
    assert s.report["ignored_columns"] == ["user"]


def test_synthetic_specs_carve_a_validation_split_in_every_command():
    # docs/data.md said the train command sets valid_fraction=0 for synthetic specs; the code (since the
    # trainer validates) carves valid_fraction (10 %) of the data, as README.md and docs/experiments.md say
    from pimm_fast.commands.run import load_data

    s = load_data("synthetic:demo", samples=1000, seed=0, quiet=True)
    assert (len(s.train), len(s.valid), len(s.test)) == (700, 100, 200)
    assert load_data("synthetic:demo?valid_fraction=0", samples=1000, seed=0, quiet=True).valid is None
