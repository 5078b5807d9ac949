"""The vocabulary contract: text format round trip, escaping, corrupt files, encoding, the FNV digest."""
import numpy as np
import pytest

from pimm_fast.data import DataFormatError, FieldVocab, Vocabulary, canonical_token, fnv_digest
from pimm_fast.data.vocab import MAX_TOKEN_BYTES


def _keys(*tokens):
    return np.array(sorted(tokens), dtype="S")


def _vocab():
    return Vocabulary([FieldVocab("user", "encoded", 4, 2, _keys(b"u1", b"u2", b"u\t4")),
                       FieldVocab("hour", "identity", 24),
                       FieldVocab("tags", "encoded", 3, 1, _keys(b"a", b"b"), bag=True)],
                      dense_names=["price", "age"], label_names=["click", "buy"], task_names=["click", "purchase"],
                      source="csv")


def test_round_trip_and_layout():
    v = _vocab()
    data = v.to_bytes()
    lines = data.decode().split("\n")
    assert lines[:6] == ["pimm_fast.vocabulary/1", "source\tcsv", "tasks\tclick\tpurchase", "labels\tclick\tbuy",
                         "dense\tprice\tage", "fields\t3"]
    assert lines[6] == "field\tuser\tencoded\t4\t2\tsingle\t3"
    assert lines[7:10] == ["u\\t4", "u1", "u2"]  # TAB (9) sorts before '1' (49)
    assert lines[10] == "field\thour\tidentity\t24\t1\tsingle\t0"
    assert lines[11] == "field\ttags\tencoded\t3\t1\tbag\t2"
    assert lines[-2:] == ["end", ""]
    w = Vocabulary.from_bytes(data)
    assert w == v and w.to_bytes() == data
    assert w.field_names == ("user", "hour", "tags") and w.field_dims == (4, 24, 3)
    assert [f.name for f in w.single_fields] == ["user", "hour"] and [f.name for f in w.bag_fields] == ["tags"]
    assert (w.dense_names, w.label_names, w.task_names, w.source) == (("price", "age"), ("click", "buy"),
                                                                      ("click", "purchase"), "csv")
    empty = Vocabulary([FieldVocab("f", "identity", 5)])
    assert b"\ndense\n" in empty.to_bytes() and Vocabulary.from_bytes(empty.to_bytes()) == empty


def test_escaping_of_every_special_byte():
    specials = [b"a\\b", b"t\tb", b"l\nb", b"c\rb", fnv_digest(b"x" * 100), b"\\0 is not NUL"]
    v = Vocabulary([FieldVocab("we\tird\\name", "encoded", len(specials) + 1, 1, _keys(*specials))],
                   dense_names=["d\nx"], task_names=["t\r1", "t2"])
    data = v.to_bytes()
    body = data.split(b"\n")
    assert b"field\twe\\tird\\\\name\tencoded" in data and b"\\0" in data and b"\x00" not in data
    assert all(b"\r" not in line and line.count(b"\t") in (0, 1, 2, 6) for line in body)
    w = Vocabulary.from_bytes(data)
    assert w.fields[0].name == "we\tird\\name" and w.dense_names == ("d\nx",) and w.task_names == ("t\r1", "t2")
    assert sorted(w.fields[0].keys.tolist()) == sorted(specials)


def test_fnv_digest_and_canonical_token():
    # FNV-1a 64 of b"" is its basis; of b"a" the published test vector af63dc4c8601ec8c
    assert fnv_digest(b"") == b"\x00" + b"cbf29ce484222325" + b"6c62272e07bb0142"
    assert fnv_digest(b"a")[1:17] == b"af63dc4c8601ec8c"
    d = fnv_digest(b"q" * 65)
    assert len(d) == 33 and d[:1] == b"\x00" and all(c in b"0123456789abcdef" for c in d[1:])
    assert canonical_token(b"x" * MAX_TOKEN_BYTES) == b"x" * MAX_TOKEN_BYTES
    assert canonical_token(b"x" * (MAX_TOKEN_BYTES + 1)) == fnv_digest(b"x" * (MAX_TOKEN_BYTES + 1))
    assert fnv_digest(b"x" * 65) != fnv_digest(b"x" * 66)


def test_encode_unseen_rare_empty_and_ints():
    v = Vocabulary([FieldVocab("u", "encoded", 4, 1, _keys(b"-5", b"12", b"u1")), FieldVocab("h", "identity", 24)])
    codes, unseen = v.encode_column(0, np.array([b"u1", b"", b"zz", b"12", b"-5", b"u"], dtype="S"))
    assert codes.tolist() == [3, 0, 0, 2, 1, 0] and unseen == 3 and codes.dtype == np.int64
    codes, unseen = v.encode_column(0, np.array([-5, 12, 7], dtype=np.int64))  # integers as decimal text
    assert codes.tolist() == [1, 2, 0] and unseen == 1
    x, unseen = v.encode([np.array([b"u1", b"q"], dtype="S"), np.array([b"0", b"23"], dtype="S")])
    assert x.tolist() == [[3, 0], [0, 23]] and unseen == {"u": 1, "h": 0}
    empty = FieldVocab("e", "encoded", 1, 1, None)
    assert empty.encode(np.array([b"a"], dtype="S"))[0].tolist() == [0]


@pytest.mark.parametrize("tokens, message", [
    (np.array([b"3", b"24"], dtype="S"), r"line 9: field 'h' = 24 is outside the model's ids 0\.\.23"),
    (np.array([b"3", b"-1"], dtype="S"), r"line 9: field 'h' = -1 is outside"),
    (np.array([b"3", b"x"], dtype="S"), r"line 9: field 'h' = 'x' is not an integer id"),
    (np.array([b"3", b""], dtype="S"), r"line 9: field 'h' = '' is not an integer id"),
    (np.array([b"3", b"1.5"], dtype="S"), r"line 9: field 'h' = '1.5' is not an integer id"),
    (np.array([3, 99], dtype=np.int64), r"line 9: field 'h' = 99 is outside"),
])
def test_identity_range_errors(tokens, message):
    v = Vocabulary([FieldVocab("h", "identity", 24)])
    with pytest.raises(DataFormatError, match=r"f\.csv, " + message):
        v.encode_column(0, tokens, where=lambda r: f"line {r + 8}", source="f.csv")
    assert v.encode_column(0, np.array([b"0", b"23"], dtype="S"))[0].tolist() == [0, 23]


def _corrupt(text: bytes, old: bytes, new: bytes) -> bytes:
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize("edit, message", [
    (lambda t: _corrupt(t, b"pimm_fast.vocabulary/1", b"pimm_fast.vocabulary/2"), r"line 1: not a pimm_fast vocab"),
    (lambda t: b"", r"line 1: not a pimm_fast vocabulary"),
    (lambda t: t[:-4], r"line \d+: truncated: the file must end with a line 'end'"),
    (lambda t: t[:len(t) // 2], r"line \d+: truncated"),
    (lambda t: _corrupt(t, b"fields\t3", b"fields\t4"), r"line 15: 4 fields announced, found 3"),
    (lambda t: _corrupt(t, b"fields\t3", b"fields\t2"), r"line 12: expected 'end' after 2 fields"),
    (lambda t: _corrupt(t, b"single\t3", b"single\t2"), r"line 7: field 'user': an encoded field of 2 keys has size 3"),
    (lambda t: _corrupt(t, b"single\t3", b"single\t9"), r"line 7: field 'user': 9 key lines announced"),
    (lambda t: _corrupt(t, b"u1\nu2", b"u2\nu1"), r"line 10: field 'user': keys must be strictly increasing"),
    (lambda t: _corrupt(t, b"u1\nu2", b"u1\nu1"), r"line 10: field 'user': keys must be strictly increasing"),
    (lambda t: _corrupt(t, b"encoded\t4", b"hashed\t4"), r"line 7: field 'user': unknown kind 'hashed'"),
    (lambda t: _corrupt(t, b"\tsingle\t0", b"\tmulti\t0"), r"line 11: field 'hour': expected 'single' or 'bag'"),
    (lambda t: _corrupt(t, b"u\\t4", b"u\\x4"), r"line 8: bad escape"),
    (lambda t: _corrupt(t, b"u\\t4", b"u\\04"), r"line 8: field 'user': key .* is not a canonical token"),
    (lambda t: _corrupt(t, b"tasks\t", b"task\t"), r"line 3: expected a 'tasks' line"),
    (lambda t: _corrupt(t, b"\t24\t1\t", b"\tx\t1\t"), r"line 11: field 'hour': size, min_count and the key count"),
])
def test_corrupt_files_are_refused(edit, message):
    with pytest.raises(DataFormatError, match=r"run/vocabulary\.txt, " + message):
        Vocabulary.from_bytes(edit(_vocab().to_bytes()), where="run/vocabulary.txt")


def test_constructor_checks():
    with pytest.raises(ValueError, match="strictly increasing"):
        FieldVocab("u", "encoded", 3, 1, np.array([b"b", b"a"], dtype="S"))
    with pytest.raises(ValueError, match="non-empty"):
        FieldVocab("u", "encoded", 3, 1, np.array([b"", b"a"], dtype="S"))
    with pytest.raises(ValueError, match="size len"):
        FieldVocab("u", "encoded", 5, 1, _keys(b"a"))
    with pytest.raises(ValueError, match="before the bag fields"):
        Vocabulary([FieldVocab("b", "identity", 3, bag=True), FieldVocab("s", "identity", 3)])
    with pytest.raises(ValueError, match=r"\['a'\] appear more than once"):
        Vocabulary([FieldVocab("a", "identity", 3)], dense_names=["a"])


def test_check_columns_names_the_missing():
    v = _vocab()
    v.check_columns(["age", "tags", "hour", "price", "user", "other"], "new.csv")
    with pytest.raises(DataFormatError, match=r"new\.csv: the model's column\(s\) \['user', 'age'\] are missing"):
        v.check_columns(["hour", "tags", "price", "usr"], "new.csv")


def test_many_keys_round_trip():
    keys = np.unique(np.arange(0, 3_000_000, 7).astype("S"))
    v = Vocabulary([FieldVocab("big", "encoded", len(keys) + 1, 1, keys)])
    w = Vocabulary.from_bytes(v.to_bytes())
    assert np.array_equal(w.fields[0].keys, keys)
    codes, unseen = w.encode_column(0, np.array([0, 7, 8], dtype=np.int64))
    assert codes.tolist()[2] == 0 and unseen == 1 and keys[codes[1] - 1] == b"7"


def test_difference_names_the_first_mismatch():
    def field(keys, name="user"):
        return FieldVocab(name, "encoded", len(keys) + 1, keys=np.array(keys))

    base = Vocabulary([field([b"u1", b"u2"]), FieldVocab("hour", "identity", 24)], task_names=["c", "b"])
    assert base.difference(Vocabulary.from_bytes(base.to_bytes())) is None
    other = Vocabulary([field([b"u1", b"u3"]), FieldVocab("hour", "identity", 24)], task_names=["c", "b"])
    assert base.difference(other) == "field 'user': code 2 is 'u2' against 'u3' (same size, other values)"
    bigger = Vocabulary([field([b"u1", b"u2", b"u3"]), FieldVocab("hour", "identity", 24)], task_names=["c", "b"])
    assert "field 'user': encoded of size 3 (min_count 1) against encoded of size 4" in base.difference(bigger)
    renamed = Vocabulary([field([b"u1", b"u2"], "uid"), FieldVocab("hour", "identity", 24)], task_names=["c", "b"])
    assert base.difference(renamed) == "field names ['user', 'hour'] against ['uid', 'hour']"


def test_change_from_unsaved_numbering():
    """Runs saved without a vocabulary numbered integer ids (raw Ali-CCP, Parquet integer columns) in numeric
    order and digested long cells with BLAKE2b: a rebuilt vocabulary whose codes differ says why."""
    ids = Vocabulary([FieldVocab("101", "encoded", 4, keys=np.array([b"10", b"31319", b"5"]))])
    assert "numbered in numeric order then" in ids.change_from_unsaved({"101"})
    assert ids.change_from_unsaved() is None  # CSV cells were bytes then too: the same order
    same = Vocabulary([FieldVocab("101", "encoded", 4, keys=np.array([b"3", b"5", b"7"]))])
    assert same.change_from_unsaved({"101"}) is None  # one digit: numeric and text order agree
    words = Vocabulary([FieldVocab("city", "encoded", 3, keys=np.array([b"lagos", b"paris"]))])
    assert words.change_from_unsaved({"city"}) is None
    assert ids.change_from_unsaved(float_fields={"101"}) == "field '101': its float ids were written '205.0' then, '205' now"
    assert words.change_from_unsaved(float_fields={"city"}) is None
    long = Vocabulary([FieldVocab("url", "encoded", 3, keys=np.array(sorted([fnv_digest(b"x" * 80), b"a"])))])
    assert f"cells over {MAX_TOKEN_BYTES} bytes" in long.change_from_unsaved()


def test_value_text_of_typed_cells():
    from pimm_fast.data.vocab import value_text

    assert [value_text(v) for v in (None, float("nan"), 205.0, -3.0, 7.5, 12, "u1", True, 1e20)] == \
        ["", "", "205", "-3", "7.5", "12", "u1", "True", "100000000000000000000"]
