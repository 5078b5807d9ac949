"""Every loader returns the vocabulary of its encoding (Splits.vocabulary), it survives the cache, and
load(..., vocabulary=) encodes new files with a trained model's vocabulary instead of building one."""
import numpy as np
import pytest
import torch

from pimm_fast.data import DataFormatError, Vocabulary, load
from pimm_fast.data.aliccp import AITM_FIELDS, AITM_VOCAB_SIZES, FULL_BAG_FIELDS, FULL_SINGLE_FIELDS
from pimm_fast.data.tables import RECHUB_SPARSE

from .test_data_raw import USER_A, USER_B, common_line, default_rows, user_pairs, write_raw


def write(path, header, rows):
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def rows(n, seed=0, users=30):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        click = int(rng.random() < 0.5)
        out.append([f"u{rng.integers(users)}", f"i{rng.integers(9)}", round(float(rng.random()), 3), click,
                    int(click and rng.random() < 0.5)])
    return out


HEADER = ["user", "item", "price", "click", "buy"]


def test_csv_vocabulary_is_the_training_encoding_and_survives_the_cache(tmp_path):
    path = write(tmp_path / "t.csv", HEADER, rows(300))
    spec = f"csv:{path}?labels=click,buy&features=user,item&dense=price&min_count=2"
    first = load(spec, cache_dir=tmp_path / "cache")
    v = first.vocabulary
    assert v.source == "csv" and v.field_names == ("user", "item") and v.dense_names == ("price",)
    assert v.label_names == ("click", "buy") and v.task_names == ("click", "buy")
    assert v.field_dims == first.field_dims and all(f.kind == "encoded" and f.min_count == 2 for f in v.fields)
    # the keys decode the codes: every training code is the position of its raw token in the keys
    tokens = np.array([r[0].encode() for r in rows(300)], dtype="S")
    codes, _ = v.encode_column(0, tokens)
    assert sorted(set(codes.tolist()) - {0}) == list(range(1, v.field_dims[0]))
    again = load(spec, cache_dir=tmp_path / "cache")
    assert again.stats is not None and again.vocabulary == v
    (entry,) = (tmp_path / "cache").iterdir()
    assert Vocabulary.from_bytes((entry / "vocabulary.npy").read_bytes()[-len(v.to_bytes()):]) == v


def test_identity_vocabularies_of_the_pre_encoded_sources(tmp_path, data_dir):
    synth = load("synthetic:demo", samples=500)
    assert synth.vocabulary.source == "synthetic" and synth.vocabulary.field_dims == synth.field_dims
    assert synth.vocabulary.field_names == tuple(f"f{i}" for i in range(len(synth.field_dims)))
    assert all(f.kind == "identity" for f in synth.vocabulary.fields)
    aitm = load(f"aitm-csv:{data_dir / 'ali-ccp' / 'paddlerec-aitm'}", cache_dir=None).vocabulary
    assert aitm.source == "aitm-csv" and aitm.field_names == AITM_FIELDS and aitm.label_names == ("click", "purchase")
    assert aitm.field_dims == tuple(AITM_VOCAB_SIZES[f] for f in AITM_FIELDS)
    rechub = load(f"rechub-csv:{data_dir / 'ali-ccp' / 'torch-rechub'}", cache_dir=tmp_path / "c")
    assert rechub.vocabulary.field_names == RECHUB_SPARSE and len(rechub.vocabulary.dense_names) == 8
    assert rechub.vocabulary.field_dims == rechub.field_dims
    path = write(tmp_path / "ids.csv", ["a", "b", "click", "buy"], [[i % 7, i % 3, i % 2, 0] for i in range(50)])
    ids = load(f"csv:{path}?labels=click,buy&encode=false", cache_dir=None).vocabulary
    assert [(f.name, f.kind, f.size) for f in ids.fields] == [("a", "identity", 7), ("b", "identity", 3)]


def test_aliccp_raw_vocabulary_holds_the_raw_ids_as_text(tmp_path):
    write_raw(tmp_path, *default_rows())
    for variant in ("aitm", "full"):
        s = load(f"aliccp-raw:{tmp_path}", variant=variant, min_count=1, valid_fraction=0.0,
                 cache_dir=tmp_path / "cache")
        v = s.vocabulary
        assert v.source == "aliccp-raw" and v.task_names == ("click", "conversion")
        assert v.field_dims == s.train.model_field_dims
        if variant == "full":
            assert v.field_names == FULL_SINGLE_FIELDS + FULL_BAG_FIELDS
            assert [f.name for f in v.bag_fields] == list(FULL_BAG_FIELDS)
        j = v.field_names.index("101")
        assert v.fields[j].keys.tolist() == [b"31319", b"5"]
        # the raw user ids of the training rows, encoded through the common vocabulary, are the loader's codes
        raw = np.array([31319, 31319, 31319, 5, 5], dtype=np.int64)
        expected = v.encode_column(j, raw)[0]
        assert s.train.x[:, j].tolist() == expected[[0, 1, 3, 4]].tolist()  # row 4 breaks the cascade
        cached = load(f"aliccp-raw:{tmp_path}", variant=variant, min_count=1, valid_fraction=0.0,
                      cache_dir=tmp_path / "cache")
        assert cached.vocabulary == v


def test_new_csv_file_is_encoded_with_the_training_vocabulary(tmp_path):
    train = write(tmp_path / "train.csv", HEADER, rows(300))
    trained = load(f"csv:{train}?labels=click,buy&features=user,item&dense=price", cache_dir=None)
    v = trained.vocabulary
    # a new file: other column order, an unseen user, fewer distinct users (the old code rebuilt the
    # vocabulary from it: other sizes, shifted codes)
    new_rows = [["u3", 1, 0, 0.5, "i2"], ["zz", 0, 0, 0.25, "i1"], ["u10", 1, 1, 0.1, "i8"]] * 20
    other = write(tmp_path / "other.csv", ["user", "click", "buy", "price", "item"], new_rows)
    s = load(f"csv:{other}", vocabulary=v, cache_dir=tmp_path / "cache", valid_fraction=0.0, policy="keep")
    assert s.field_dims == trained.field_dims and s.vocabulary == v and s.task_names == ("click", "buy")
    every = torch.cat([s.train.x, s.test.x]).tolist()
    code = {r[0]: v.encode_column(0, np.array([r[0].encode()], dtype="S"))[0][0] for r in new_rows[:3]}
    assert code["zz"] == 0 and code["u3"] > 0 and code["u10"] > 0
    assert sorted(set(tuple(x) for x in every)) == sorted({(int(code[r[0]]), int(v.encode_column(
        1, np.array([r[4].encode()], dtype="S"))[0][0])) for r in new_rows[:3]})
    assert s.report["altered"]  # the unseen user is counted
    dense = torch.cat([s.train.dense, s.test.dense]).flatten().tolist()
    assert sorted(set(round(d, 3) for d in dense)) == [0.1, 0.25, 0.5]


def test_missing_or_renamed_columns_are_named(tmp_path):
    train = write(tmp_path / "train.csv", HEADER, rows(100))
    v = load(f"csv:{train}?labels=click,buy&features=user,item&dense=price", cache_dir=None).vocabulary
    renamed = write(tmp_path / "renamed.csv", ["usr", "item", "cost", "click", "buy"], rows(50))
    with pytest.raises(DataFormatError, match=r"renamed\.csv: the model's column\(s\) \['user', 'price'\] are "
                                              r"missing; the file has \['usr', 'item', 'cost', 'click', 'buy'\]"):
        load(f"csv:{renamed}", vocabulary=v, cache_dir=None)
    same = write(tmp_path / "same.csv", HEADER, rows(50))
    with pytest.raises(DataFormatError, match=r"features=\['item'\] selects \['item'\], but the model's feature"):
        load(f"csv:{same}?features=item", vocabulary=v, cache_dir=None)
    assert load(f"csv:{same}?features=item,user&dense=price", vocabulary=v, cache_dir=None).field_dims == v.field_dims
    with pytest.raises(ValueError, match="encode=False disagrees with the model's vocabulary"):
        load(f"csv:{same}?encode=false", vocabulary=v, cache_dir=None)


def test_identity_ids_outside_the_model_are_errors_naming_line_and_value(tmp_path, data_dir):
    train = write(tmp_path / "train.csv", ["a", "b", "click", "buy"], [[i % 7, i % 3, i % 2, 0] for i in range(50)])
    v = load(f"csv:{train}?labels=click,buy&encode=false", cache_dir=None).vocabulary
    new = write(tmp_path / "new.csv", ["b", "a", "click", "buy"], [[1, 2, 0, 0]] * 5 + [[1, 7, 0, 0]])
    with pytest.raises(DataFormatError, match=r"new\.csv, line 7: field 'a' = 7 is outside the model's ids 0\.\.6"):
        load(f"csv:{new}", vocabulary=v, cache_dir=None)
    ok = write(tmp_path / "ok.csv", ["b", "a", "click", "buy"], [[1, 2, 0, 0], [2, 6, 1, 0]] * 5)
    s = load(f"csv:{ok}", vocabulary=v, cache_dir=None, valid_fraction=0.0)
    assert s.field_dims == (7, 3) and sorted({tuple(x) for x in torch.cat([s.train.x, s.test.x]).tolist()}) == \
        [(2, 1), (6, 2)]
    # aitm-csv: the model's sizes; an id beyond them names the line
    d = data_dir / "ali-ccp" / "paddlerec-aitm"
    aitm = load(f"aitm-csv:{d}", cache_dir=None).vocabulary
    small = Vocabulary.from_bytes(aitm.to_bytes().replace(b"field\t101\tidentity\t238635", b"field\t101\tidentity\t3"))
    with pytest.raises(DataFormatError, match=r"train\.csv, line 2: id 101 = \d+ is outside the vocabulary of 3 "
                                              r"\(the model's vocabulary\)"):
        load(f"aitm-csv:{d}", vocabulary=small, cache_dir=None)
    assert load(f"aitm-csv:{d}", vocabulary=aitm, cache_dir=None).field_dims == aitm.field_dims
    with pytest.raises(DataFormatError, match=r"the model's fields \['a', 'b'\] .* are not the pre-encoded fields"):
        load(f"aitm-csv:{d}", vocabulary=v, cache_dir=None)


def test_aliccp_raw_scored_with_the_training_vocabulary(tmp_path):
    train_dir, new_dir = tmp_path / "train", tmp_path / "new"
    train_dir.mkdir()
    new_dir.mkdir()
    write_raw(train_dir, *default_rows())
    trained = load(f"aliccp-raw:{train_dir}", variant="full", min_count=1, valid_fraction=0.0, cache_dir=None)
    tr, te = default_rows()
    commons = {"train": [common_line(USER_A, user_pairs(31319)), common_line(USER_B, user_pairs(77))],
               "test": [common_line(USER_A, user_pairs(31319)), common_line(USER_B, user_pairs(5))]}
    write_raw(new_dir, te + te, tr[:2], commons)  # other rows: built from them, the vocabulary would differ
    own = load(f"aliccp-raw:{new_dir}", variant="full", min_count=1, valid_fraction=0.0, cache_dir=None)
    assert own.vocabulary != trained.vocabulary
    s = load(f"aliccp-raw:{new_dir}", variant="full", min_count=1, valid_fraction=0.0, cache_dir=None,
             vocabulary=trained.vocabulary)
    assert s.vocabulary == trained.vocabulary and s.train.model_field_dims == trained.train.model_field_dims
    # test rows of the training directory == the same rows as new training rows, encoded with the model's codes
    assert s.train.x[:2].tolist() == trained.test.x.tolist()
    with pytest.raises(DataFormatError, match=r"are not the 'aitm' variant's"):
        load(f"aliccp-raw:{new_dir}", variant="aitm", cache_dir=None, vocabulary=trained.vocabulary)


def test_synthetic_takes_no_vocabulary():
    v = load("synthetic:demo", samples=200).vocabulary
    with pytest.raises(ValueError, match="synthetic data is generated"):
        load("synthetic:demo", samples=200, vocabulary=v)


def test_training_codes_are_the_vocabulary_encoding_row_by_row(tmp_path):
    from pimm_fast.data import read_for_scoring

    d = tmp_path / "dir"
    d.mkdir()
    write(d / "train.csv", HEADER, rows(400, seed=1) + [["x" * 100, "i1", 0.5, 0, 0], ["", "i2", 0.5, 1, 0]])
    write(d / "test.csv", HEADER, rows(50, seed=2) + [["x" * 100, "never", 0.5, 0, 0]])
    s = load(f"csv:{d}?labels=click,buy&features=user,item&dense=price&min_count=2", cache_dir=None,
             valid_fraction=0.0, policy="keep")
    for split, name in ((s.train, "train.csv"), (s.test, "test.csv")):
        t = read_for_scoring(d / name, s.vocabulary)
        assert t.x.tolist() == split.x.tolist()
