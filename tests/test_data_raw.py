"""Raw Ali-CCP (sample_skeleton + common_features): fixtures written here from the documented format."""
import re

import numpy as np
import pytest
import torch

from pimm_fast.data import Batcher, DataFormatError, load
from pimm_fast.data.aliccp import AITM_FIELDS, FULL_BAG_FIELDS, FULL_SINGLE_FIELDS, load_raw_arrays, \
    write_synthetic_raw

A, B, C = "\x01", "\x02", "\x03"


def feats(pairs):
    """[(field, id, value)] -> the documented feature_list: field \\x02 id \\x03 value, joined by \\x01."""
    return A.join(f"{f}{B}{i}{C}{v}" for f, i, v in pairs)


def skeleton_line(sample_id, click, conv, key, pairs):
    return f"{sample_id},{click},{conv},{key},{len(pairs)},{feats(pairs)}\n"


def common_line(key, pairs):
    return f"{key},{len(pairs)},{feats(pairs)}\n"


USER_A = "bacff91692951881"
USER_B = "84dceed2e3a667f8"


def user_pairs(uid, extra=()):
    return [("101", uid, "1.0"), ("121", 7, "1.0"), ("122", 3, "1.0"), ("124", 1, "1.0"), ("125", 4, "1.0"),
            ("127", 2, "1.0"), ("128", 1, "1.0"), ("129", 3, "1.0"),  # 126 missing, as for the real first user
            ("150_14", 900 + uid, "3.28343"), ("150_14", 901, "0.69315"), ("109_14", 700, "1.0"), *extra]


def item_pairs(item, intents=(9052218,), shop=5, e853=()):
    return [*(("210", i, "1.0") for i in intents), ("216", 40, "1.0"), ("301", 1, "1.0"), ("205", item, "1.0"),
            ("206", 30, "1.0"), ("207", shop, "1.0"), *(("853", v, "1.09861") for v in e853)]


def write_raw(tmp_path, train_rows, test_rows, commons=None, newline="\n", trailing_newline=True):
    commons = commons or {"train": [common_line(USER_A, user_pairs(31319)), common_line(USER_B, user_pairs(5))],
                          "test": [common_line(USER_A, user_pairs(31319)), common_line(USER_B, user_pairs(77))]}
    for split, rows in (("train", train_rows), ("test", test_rows)):
        for name, lines in ((f"sample_skeleton_{split}.csv", rows), (f"common_features_{split}.csv", commons[split])):
            text = "".join(lines).replace("\n", newline)
            if not trailing_newline:
                text = text.rstrip("\r\n")
            (tmp_path / name).write_bytes(text.encode())
    return tmp_path


def default_rows():
    train = [
        skeleton_line(1, 0, 0, USER_A, item_pairs(100, intents=(1, 2, 3), e853=(60, 61))),
        skeleton_line(2, 1, 0, USER_A, item_pairs(100, shop=6)),
        skeleton_line(3, 1, 1, USER_B, item_pairs(101)),
        skeleton_line(4, 0, 1, USER_B, item_pairs(100)),  # breaks the cascade
        skeleton_line(5, 0, 0, USER_B, item_pairs(102)),
    ]
    test = [skeleton_line(1, 0, 0, USER_B, item_pairs(100)), skeleton_line(2, 1, 0, USER_A, item_pairs(999))]
    return train, test


def test_aitm_variant_parses_joins_encodes_and_drops(tmp_path):
    write_raw(tmp_path, *default_rows())
    arrays, info = load_raw_arrays(tmp_path, "aitm", min_count=2, valid_fraction=0.0)
    assert info["field_names"] == list(AITM_FIELDS)
    stats = info["stats"]["train_file"]
    assert stats["raw_rows"] == 5 and stats["cascade_dropped"] == 1 and stats["common_rows"] == 2
    x, y = arrays["train.x"], arrays["train.y"]
    assert x.dtype == np.int32 and y.dtype == np.float32 and x.shape == (4, 18)
    np.testing.assert_array_equal(y, [[0, 0], [1, 0], [1, 1], [0, 0]])
    col = {f: x[:, i] for i, f in enumerate(AITM_FIELDS)}
    # 101: user A has 2 kept impressions, user B 2 (one dropped): both ids reach min_count 2 -> codes 1, 2
    # in the bytes order of their decimal text ("31319" < "5"); counted per impression, not per common row
    np.testing.assert_array_equal(col["101"], [1, 1, 2, 2])
    assert (col["126"] == 0).all()  # missing field -> 0
    np.testing.assert_array_equal(col["205"], [1, 1, 0, 0])  # 100 seen twice (after the drop), 101/102 once
    np.testing.assert_array_equal(col["207"], [1, 0, 1, 1])  # shop 6 seen once -> 0
    assert (col["853"][1:] == 0).all() and col["853"][0] == 0  # 61 (the last value) seen once -> 0
    # test rows use the train vocabulary: item 999 unseen -> 0, user 77 (test-only common row for B) -> 0
    np.testing.assert_array_equal(arrays["test.x"][:, AITM_FIELDS.index("205")], [1, 0])
    np.testing.assert_array_equal(arrays["test.x"][:, AITM_FIELDS.index("101")], [0, 1])
    assert info["field_dims"][AITM_FIELDS.index("101")] == 3  # codes 0..2


def test_single_valued_field_keeps_the_last_value_like_aitm(tmp_path):
    rows = [skeleton_line(i, 0, 0, USER_A, item_pairs(100, e853=(60, 61) if i % 2 else (61,))) for i in range(4)]
    write_raw(tmp_path, rows, rows[:1])
    arrays, info = load_raw_arrays(tmp_path, "aitm", min_count=1, valid_fraction=0.0)
    # 853 values: row0 (61,), row1 (60, 61) -> 61, ...: only 61 is ever kept, so one code
    col = arrays["train.x"][:, AITM_FIELDS.index("853")]
    assert set(col.tolist()) == {1} and info["field_dims"][AITM_FIELDS.index("853")] == 2
    assert info["stats"]["train_file"]["multi_valued_single_fields"] == 2


def test_full_variant_keeps_multi_valued_fields_as_bags(tmp_path):
    write_raw(tmp_path, *default_rows())
    splits = load(f"aliccp-raw:{tmp_path}", variant="full", min_count=1, valid_fraction=0.0, cache_dir=None)
    assert splits.field_dims[:1] and len(splits.field_dims) == len(FULL_SINGLE_FIELDS) == 17
    assert splits.train.bag_names == FULL_BAG_FIELDS
    xb, yb, bags = next(iter(Batcher(splits.train, 4, shuffle=False, bags=True)))
    ids, offsets = bags["210"]
    assert offsets.tolist() == [0, 3, 4, 5, 6]  # row 0 has 3 intentions: all kept, not truncated
    assert len(set(ids[:3].tolist())) == 3 and (ids > 0).all()
    ids, offsets = bags["150_14"]  # user history lives once per common row, gathered per impression
    assert offsets.tolist() == [0, 2, 4, 6, 8]
    ids853, off853 = bags["853"]
    assert off853.tolist() == [0, 2, 2, 2, 2]


@pytest.mark.parametrize("newline,trailing", [("\n", True), ("\r\n", True), ("\n", False)])
def test_line_endings_and_chunk_boundaries_do_not_change_the_result(tmp_path, newline, trailing):
    write_raw(tmp_path, *default_rows(), newline=newline, trailing_newline=trailing)
    ref, _ = load_raw_arrays(tmp_path, "full", min_count=1, valid_fraction=0.0)
    for chunk in (37, 300, 1 << 20):  # lines split across chunks
        got, _ = load_raw_arrays(tmp_path, "full", min_count=1, valid_fraction=0.0, chunk_bytes=chunk)
        assert sorted(got) == sorted(ref)
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


def test_cascade_policies(tmp_path):
    write_raw(tmp_path, *default_rows())
    kept, info = load_raw_arrays(tmp_path, "aitm", policy="keep", valid_fraction=0.0)
    assert len(kept["train.y"]) == 5 and info["stats"]["train_file"]["cascade_violations"] == 1
    with pytest.raises(DataFormatError, match=r"sample_skeleton_train\.csv, line 4: labels \(click=0, conversion=1\)"):
        load_raw_arrays(tmp_path, "aitm", policy="error")
    with pytest.raises(ValueError, match="unknown cascade policy"):
        load_raw_arrays(tmp_path, "aitm", policy="ignore")


BAD_LINES = [
    (skeleton_line(9, 0, 0, USER_A, item_pairs(1)).replace(f"205{B}1{C}", f"205{C}1{B}"), r"line 3: malformed"),
    (skeleton_line(9, 0, 0, USER_A, item_pairs(1)).replace(",6,", ",11,"), r"line 3: feature_num says 11 but the line holds 6"),
    (skeleton_line(9, 2, 0, USER_A, item_pairs(1)), r"line 3: click label '2' is not 0 or 1"),
    (skeleton_line(9, 0, "x", USER_A, item_pairs(1)), r"line 3: conversion label 'x'"),
    (skeleton_line(9, 0, 0, "zz", item_pairs(1)), r"line 3: common_feature_index 'zz' is not 1-16 hex"),
    (skeleton_line(9, 0, 0, USER_A, item_pairs(1)).replace(f"205{B}1", f"205{B}1a"), r"line 3: feature id '1a'"),
    (skeleton_line(9, 0, 0, USER_A, item_pairs(1)).replace(f"205{B}1", f"205{B}"), r"line 3: empty feature id"),
    ("9,0,0\n", r"line 3: expected 6 comma-separated columns"),
    ("\n", r"line 3"),
    (skeleton_line(9, 0, 0, "0123456789abcdef", item_pairs(1)), r"line 3: common_feature_index 0123456789abcdef is not"),
]


@pytest.mark.parametrize("bad,message", BAD_LINES)
def test_corrupt_skeleton_lines_are_named(tmp_path, bad, message):
    train, test = default_rows()
    write_raw(tmp_path, train[:2] + [bad] + train[2:], test)
    with pytest.raises(DataFormatError, match=message):
        load_raw_arrays(tmp_path, "aitm", chunk_bytes=64)


def test_corrupt_or_duplicate_common_lines_and_missing_files(tmp_path):
    train, test = default_rows()
    commons = {"train": [common_line(USER_A, user_pairs(1)), common_line(USER_A, user_pairs(2))],
               "test": [common_line(USER_A, user_pairs(1))]}
    write_raw(tmp_path, train, test, commons=commons)
    with pytest.raises(DataFormatError, match=r"common_features_train\.csv, lines 1 and 2: .* appears twice"):
        load_raw_arrays(tmp_path, "aitm")
    commons["train"] = [common_line(USER_A, user_pairs(1)), f"{USER_B},3,{feats(user_pairs(2))}\n"]
    write_raw(tmp_path, train, test, commons=commons)
    with pytest.raises(DataFormatError, match=r"common_features_train\.csv, line 2: feature_num says 3"):
        load_raw_arrays(tmp_path, "aitm")
    (tmp_path / "common_features_test.csv").unlink()
    with pytest.raises(FileNotFoundError, match="common_features_test.csv"):
        load(f"aliccp-raw:{tmp_path}", cache_dir=None)
    with pytest.raises(FileNotFoundError, match="not found"):
        load(f"aliccp-raw:{tmp_path / 'nope'}", cache_dir=None)
    write_raw(tmp_path, train, test)
    (tmp_path / "sample_skeleton_train.csv").write_bytes(b"")
    with pytest.raises(DataFormatError, match=r"sample_skeleton_train\.csv: the file is empty"):
        load_raw_arrays(tmp_path, "aitm")


def test_validation_split_is_seeded_and_exact(tmp_path):
    write_synthetic_raw(tmp_path, "train", 3000, seed=1, violations=4)
    write_synthetic_raw(tmp_path, "test", 500, seed=2)
    a, info = load_raw_arrays(tmp_path, "aitm", min_count=3, valid_fraction=0.1, seed=5)
    b, _ = load_raw_arrays(tmp_path, "aitm", min_count=3, valid_fraction=0.1, seed=5)
    c, _ = load_raw_arrays(tmp_path, "aitm", min_count=3, valid_fraction=0.1, seed=6)
    assert info["stats"]["train_file"]["cascade_dropped"] == 4
    assert len(a["valid.y"]) == round(2996 * 0.1) and len(a["train.y"]) + len(a["valid.y"]) == 2996
    np.testing.assert_array_equal(a["valid.x"], b["valid.x"])
    assert not np.array_equal(a["valid.x"], c["valid.x"])
    assert len(a["test.y"]) == 500
    # every code is below its field size, and common ids really repeat (min_count 3 keeps some)
    for j, d in enumerate(info["field_dims"]):
        assert a["train.x"][:, j].max() < d
    assert info["field_dims"][AITM_FIELDS.index("101")] > 1


def test_real_esmm_sample_as_raw_files(tmp_path, data_dir):
    """The first 10 real impressions (PaddleRec's field:feat_id file), written back in the raw layout."""
    lines = (data_dir / "ali-ccp" / "paddlerec-esmm" / "test_small.txt").read_text().splitlines()
    user = {"101", "121", "122", "124", "125", "126", "127", "128", "129", "109_14", "110_14", "127_14", "150_14"}
    skeleton, commons, labels, n210 = [], {}, [], []
    for r, line in enumerate(lines):
        parts = line.split(",")
        pairs = [tuple(p.split(":")) for p in parts[3:]]
        u = [(f, i, "1.0") for f, i in pairs if f in user]
        it = [(f, i, "1.0") for f, i in pairs if f not in user]
        key = f"{hash(tuple(u)) & (2 ** 63 - 1):016x}"
        commons.setdefault(key, common_line(key, u))
        skeleton.append(skeleton_line(r + 1, parts[1], parts[2], key, it))
        labels.append((int(parts[1]), int(parts[2])))
        n210.append(sum(1 for f, _ in pairs if f == "210"))
    assert len(commons) == 1  # PROVENANCE: all 10 rows share one user context
    write_raw(tmp_path, skeleton, skeleton, commons={"train": list(commons.values()),
                                                     "test": list(commons.values())})
    splits = load(f"aliccp-raw:{tmp_path}", variant="full", min_count=1, valid_fraction=0.0, cache_dir=None)
    assert len(splits.train) == 10 and splits.train.y.tolist() == [list(map(float, p)) for p in labels]
    assert splits.train.y[2].tolist() == [1.0, 0.0]  # row 3 is the click
    col126 = splits.train.meta["field_names"].index("126")
    assert (splits.train.x[:, col126] == 0).all()  # field 126 is missing for this user
    _, _, bags = next(iter(Batcher(splits.train, 10, shuffle=False, bags=True)))
    assert torch.diff(bags["210"][1]).tolist() == n210
    assert torch.diff(bags["150_14"][1]).tolist() == [191] * 10  # 191 x 150_14 per row (PROVENANCE)
    aitm = load(f"aliccp-raw:{tmp_path}", min_count=1, valid_fraction=0.0, cache_dir=None)
    assert aitm.field_dims[AITM_FIELDS.index("124")] == 2 and len(aitm.field_dims) == 18


def test_synthetic_raw_writer_matches_the_documented_shape(tmp_path):
    sk, cm = write_synthetic_raw(tmp_path, "train", 300, seed=0)
    first = sk.read_text().splitlines()[0].split(",")
    assert len(first) == 6 and re.fullmatch(r"[0-9a-f]{16}", first[3])
    assert 8 <= int(first[4]) <= 20 and first[5].count(A) == int(first[4]) - 1
    common = cm.read_text().splitlines()[0].split(",")
    assert 300 <= int(common[1]) <= 1000


@pytest.mark.parametrize("kind", ["narrow", "wide", "missing", "small"])
def test_vocabulary_dense_and_sorted_paths_agree_with_a_plain_count(kind):
    from pimm_fast.data.aliccp import RawIds as Vocabulary

    rng = np.random.default_rng(0)
    vals = {"narrow": rng.integers(1000, 1100, 5000), "wide": rng.integers(0, 2 ** 40, 5000),
            "missing": np.array([5, 5, -1, 7, 7, 7, 9]), "small": rng.integers(0, 50, 3000)}[kind]
    w = rng.integers(1, 4, len(vals)).astype(float)
    for min_count in (1, 3, 20, 100):
        for weights in (None, w):
            seen = vals[vals >= 0]
            uniq = np.unique(seen)
            count = {k: (w[vals == k].sum() if weights is not None else (seen == k).sum()) for k in uniq}
            keys = sorted(str(k).encode() for k in uniq if count[k] >= min_count)  # codes in text order
            code = {int(k): i + 1 for i, k in enumerate(keys)}
            expected = np.array([code.get(int(v), 0) for v in vals])
            vocab = Vocabulary(vals, min_count, weights=weights)
            np.testing.assert_array_equal(vocab.encode(vals), expected)
            assert vocab.size == len(keys) + 1
            field = vocab.field("f", bag=False)  # the common vocabulary encodes the ids' text the same way
            np.testing.assert_array_equal(field.encode(vals)[0], expected)
            np.testing.assert_array_equal(Vocabulary.from_field(field).encode(vals), expected)
            assert (vocab.encode(np.array([-1, 2 ** 41])) == 0).all()  # missing and unseen ids
    offsets, per_row = np.array([0, 2, len(vals)]), np.array([3.0, 1.0])
    by_rows = Vocabulary(vals, 2, row_weights=(offsets, per_row))
    by_values = Vocabulary(vals, 2, weights=np.repeat(per_row, np.diff(offsets)))
    np.testing.assert_array_equal(by_rows.encode(vals), by_values.encode(vals))


def test_raw_cache_keeps_bags_and_hashes_the_sources(tmp_path, monkeypatch):
    import hashlib
    import json

    from pimm_fast.data import aliccp

    raw = tmp_path / "raw"
    raw.mkdir()
    write_raw(raw, *default_rows())
    first = load(f"aliccp-raw:{raw}?variant=full&min_count=1", cache_dir=tmp_path / "cache", valid_fraction=0.0)
    (entry,) = (tmp_path / "cache").iterdir()
    manifest = json.loads((entry / "manifest.json").read_text())
    h = hashlib.sha256()
    for name in ("common_features_train", "sample_skeleton_train", "common_features_test", "sample_skeleton_test"):
        h.update((raw / f"{name}.csv").read_bytes())  # the reading order
    assert manifest["source_sha256"] == h.hexdigest()
    assert manifest["stats"]["train_file"]["cascade_dropped"] == 1 and manifest["field_dims"] == list(first.field_dims)

    def boom(*a, **k):
        raise AssertionError("parsed again")

    monkeypatch.setattr(aliccp, "load_raw_arrays", boom)
    again = load(f"aliccp-raw:{raw}?variant=full&min_count=1", cache_dir=tmp_path / "cache", valid_fraction=0.0)
    a = next(iter(Batcher(first.train, 5, shuffle=False, bags=True)))
    b = next(iter(Batcher(again.train, 5, shuffle=False, bags=True)))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for name in FULL_BAG_FIELDS:
        assert torch.equal(a[2][name][0], b[2][name][0]) and torch.equal(a[2][name][1], b[2][name][1])
