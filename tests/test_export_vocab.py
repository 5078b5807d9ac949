"""A package carries its vocabulary and scores raw values: in Python (ExportedModel.score_columns), in a fresh
process (pimm_fast.export.load) and from C++ (examples/score_csv), all equal to the eager model on the codes
that the training vocabulary gives.

A census-like model (string fields, an identity field, a bag field of '|'-separated tags, two dense columns) is
exported twice per module: with its vocabulary and without one (the errors of a package without a vocabulary).
"""
from __future__ import annotations

import csv
import io
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pimm_fast.export as px
from pimm_fast.data import DataFormatError, FieldVocab, Vocabulary, canonical_token
from pimm_fast.models import build_model
from pimm_fast.modules import FieldEmbedding, JaggedIds
from pimm_fast.ops import backends

from .cpp_example import build_score_csv, run_score_csv

ROOT = Path(__file__).resolve().parents[1]
FAST = {"aot_inductor.compile_wrapper_opt_level": "O0"}
LONG = "Some-college-" + "x" * 70  # longer than 64 bytes: looked up by its digest
WORKCLASS = ["Private", "Self-emp", "State-gov", 'Fed, "gov"', "Never-worked", "Ünion"]  # bytes order: Ü after ASCII
EDUCATION = ["HS-grad", "Bachelors", "Masters", LONG, "Doctorate"]
TAGS = ["a", "b", "c", "d e"]
FIELDS, DENSE, LABELS, TASKS = ("workclass", "education", "hour", "tags"), ("age", "hours"), \
    ("income", "married"), ("click", "buy")

pytestmark = pytest.mark.skipif(not backends.is_available("cpp", "cpu"), reason="C++ kernels not built")


def _write_csv(path: Path, header: list, rows: list, line_end: str = "\n") -> None:
    buf = io.StringIO()
    csv.writer(buf, lineterminator=line_end).writerows([header] + rows)
    path.write_bytes(buf.getvalue().encode())


def _tags(rng: random.Random, values: list) -> str:
    return "|".join(rng.choice(values) for _ in range(rng.randint(0, 3)))


def _train_rows(rng: random.Random, n: int = 60) -> list:
    rows = []
    for _ in range(n):
        hours = rng.choice(["?", str(rng.randint(10, 60))])
        rows.append([rng.choice(WORKCLASS), rng.choice(EDUCATION), str(rng.randrange(24)), _tags(rng, TAGS),
                     f"{rng.uniform(18, 80):.1f}", hours, str(rng.randint(0, 1)), "0"])
    return rows


def _vocabulary(rows: list) -> Vocabulary:
    """The training file's encoding: per string field its sorted canonical tokens (codes 1..), hour as is."""
    def keys(j, bag=False):
        tokens = {t for r in rows for t in (r[j].split("|") if bag else [r[j]]) if t}
        return np.array(sorted(canonical_token(t.encode()) for t in tokens), dtype="S")

    fields = [FieldVocab("workclass", "encoded", len(keys(0)) + 1, 1, keys(0)),
              FieldVocab("education", "encoded", len(keys(1)) + 1, 1, keys(1)),
              FieldVocab("hour", "identity", 24),
              FieldVocab("tags", "encoded", len(keys(3, True)) + 1, 1, keys(3, True), bag=True)]
    return Vocabulary(fields, DENSE, LABELS, TASKS, source="csv")


def _dense_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        return float("nan")
    return value if np.isfinite(value) else float("nan")


def _score_rows(rng: random.Random) -> tuple[list, list]:
    """(header in another order with key columns and a label, rows with new values, quoted and missing cells)."""
    header = ["id", "hours", "education", "region", "hour", "workclass", "age", "income", "tags"]
    rows = [["r0", "NA", "PhD", "North\nEast", "23", "Alien", " 41 ", "1", "zz|a"],  # unseen values, a multi-line key
            ["r1", "", LONG, 'say "hi", twice', "0", 'Fed, "gov"', "inf", "0", ""],  # an empty bag
            ["r2", "?", "P" + "h" * 80, "", "7", "", "33.5", "", "d e|b|b"]]  # an unseen long token, an empty cell
    for i in range(3, 41):
        rows.append([f"r{i}", str(rng.randint(1, 80)), rng.choice(EDUCATION + ["Preschool"]),
                     rng.choice(["north", "south"]), str(rng.randrange(24)), rng.choice(WORKCLASS + ["Without-pay"]),
                     f"{rng.uniform(18, 90):.2f}", str(rng.randint(0, 1)), _tags(rng, TAGS + ["new"])])
    return header, rows


@pytest.fixture(scope="module")
def census(tmp_path_factory):
    """The model, its vocabulary, both packages, the scoring CSV and the eager model's probabilities on it."""
    out = tmp_path_factory.mktemp("census")
    rng = random.Random(0)
    train = _train_rows(rng)
    vocab = _vocabulary(train)
    torch.manual_seed(0)
    embedding = FieldEmbedding(list(vocab.field_dims), 4, pooling=["sum"] * 3 + ["mean"])  # tags: a bag
    model = build_model("pimm", list(vocab.field_dims), num_tasks=2, task_names=TASKS, embed_dim=4, num_dense=2,
                        dense_names=DENSE, embedding=embedding).eval()
    model.dense_input.fit(torch.tensor([[_dense_value(r[4]), _dense_value(r[5])] for r in train]))
    package = px.save(model, out / "census.pt2", vocabulary=vocab, inductor_configs=dict(FAST))
    bare = px.save(model, out / "census-bare.pt2", inductor_configs=dict(FAST))

    header, rows = _score_rows(rng)
    score_csv = out / "score.csv"
    _write_csv(score_csv, header, rows, line_end="\r\n")
    col = {name: [r[header.index(name)] for r in rows] for name in header}
    codes, unseen = [], {}
    for f in vocab.fields[:2]:  # the encoding, by hand: a key's position + 1, else 0
        table = {k: i + 1 for i, k in enumerate(f.keys.tolist())}
        found = [table.get(canonical_token(v.encode()), 0) for v in col[f.name]]
        codes.append(found)
        unseen[f.name] = found.count(0)
    codes.append([int(v) for v in col["hour"]])
    table = {k: i + 1 for i, k in enumerate(vocab.fields[3].keys.tolist())}
    tags = [[table.get(t.encode(), 0) for t in cell.split("|")] if cell else [] for cell in col["tags"]]
    unseen["tags"] = sum(t.count(0) for t in tags)
    lengths = torch.tensor([len(t) for t in tags])
    bag = (torch.tensor([c for t in tags for c in t], dtype=torch.int64),
           torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]))
    x = JaggedIds.from_fields([torch.tensor(c) for c in codes] + [bag])
    dense = torch.tensor([[_dense_value(a), _dense_value(h)] for a, h in zip(col["age"], col["hours"])])
    with torch.no_grad():
        expected = model(x, dense=dense)
    return {"out": out, "model": model, "vocab": vocab, "package": package, "bare": bare, "csv": score_csv,
            "header": header, "rows": rows, "columns": col, "expected": expected, "unseen": unseen}


@pytest.fixture(scope="module")
def loaded(census):
    return px.load(census["package"])


@pytest.fixture(scope="module")
def score_csv(tmp_path_factory) -> Path:
    return build_score_csv(tmp_path_factory)


# ---------------------------------------------------------------------------------------------------------------
# storage
# ---------------------------------------------------------------------------------------------------------------
def test_the_vocabulary_travels_in_the_package(census, loaded):
    assert px.read_vocabulary(census["package"]) == census["vocab"]
    assert loaded.vocabulary == census["vocab"]
    meta = px.read_metadata(census["package"])
    assert meta["vocabulary"]["record"] == px.VOCAB_RECORD == "extra/pimm_fast/vocabulary.txt"
    assert meta["field_names"] == list(FIELDS)  # taken from the vocabulary
    assert "vocabulary of 15 keys" in repr(loaded) and loaded.num_bag_fields == 1
    bare = px.load(census["bare"])
    assert bare.vocabulary is None and px.read_vocabulary(census["bare"]) is None
    assert px.read_metadata(census["bare"])["vocabulary"] is None
    assert "no vocabulary" in repr(bare)
    with pytest.raises(ValueError, match="has no vocabulary"):
        bare.score_columns(census["columns"])


@pytest.mark.parametrize("change, match", [
    (lambda v: Vocabulary(v.fields[:3], DENSE, LABELS, TASKS), r"field sizes .* != the model's field_dims"),
    (lambda v: Vocabulary(v.fields[:2] + (FieldVocab("hour", "identity", 30), v.fields[3]), DENSE, LABELS, TASKS),
     r"field sizes \[7, 6, 30, 5\] .* != the model's field_dims \[7, 6, 24, 5\]"),
    (lambda v: Vocabulary(v.fields[:3] + (FieldVocab("tags", "encoded", 5, 1, v.fields[3].keys),), DENSE, LABELS,
                          TASKS), r"0 bag fields != the package's 1"),
    (lambda v: Vocabulary(v.fields, ("age", "hours_per_week"), LABELS, TASKS),
     r"dense columns \['age', 'hours_per_week'\] != the model's \['age', 'hours'\]"),
    (lambda v: Vocabulary(v.fields, DENSE, LABELS, ("view", "buy")), r"tasks \['view', 'buy'\] != the model's"),
    (lambda v: v.to_bytes().replace(b"end\n", b""), "truncated"),
    (lambda v: "workclass", "must be a pimm_fast.data.Vocabulary or its bytes"),
])
def test_save_refuses_a_vocabulary_of_another_model(census, tmp_path, change, match):
    with pytest.raises(px.ExportError, match=match):
        px.save(census["model"], tmp_path / "m.pt2", vocabulary=change(census["vocab"]))
    assert not list(tmp_path.iterdir())  # refused before compiling


def test_save_refuses_other_field_names(census, tmp_path):
    with pytest.raises(px.ExportError, match=r"field names \['workclass', 'education', 'hour', 'tags'\] != field_"):
        px.save(census["model"], tmp_path / "m.pt2", vocabulary=census["vocab"], field_names=["a", "b", "c", "d"])


def test_vocabulary_bytes_are_accepted(census, tmp_path, monkeypatch):
    """save takes the vocabulary's bytes too (stored as the same text); checked up to the compile step."""
    seen = {}
    def compile_and_package(exported, path, configs, text):
        seen["text"] = text
        Path(path).write_bytes(b"")

    monkeypatch.setattr(px, "_compile_and_package", compile_and_package)
    px.save(census["model"], tmp_path / "m.pt2", vocabulary=census["vocab"].to_bytes())
    assert seen["text"].encode() == census["vocab"].to_bytes()


# ---------------------------------------------------------------------------------------------------------------
# (a) Python, this process
# ---------------------------------------------------------------------------------------------------------------
def test_score_columns_matches_the_eager_model(census, loaded):
    probs, unseen = loaded.score_columns(census["columns"], batch_size=7)  # 41 rows: 6 batches
    assert probs.shape == census["expected"].shape and probs.dtype == torch.float32
    assert (probs - census["expected"]).abs().max().item() <= 1e-6
    assert unseen == census["unseen"] and unseen["workclass"] >= 3 and unseen["education"] >= 2 and unseen["tags"]
    # other spellings of the same values: ints for the identity field, bytes, numpy arrays, floats for dense
    col = census["columns"]
    other = {"hour": np.array([int(v) for v in col["hour"]]), "workclass": [v.encode() for v in col["workclass"]],
             "education": np.array(col["education"]), "age": [_dense_value(v) for v in col["age"]],
             "hours": col["hours"], "tags": [cell.split("|") if cell else [] for cell in col["tags"]]}
    again, unseen_again = loaded.score_columns(other, batch_size=7)
    assert torch.equal(again, probs) and unseen_again == unseen
    # the identity field as pandas gives an integer column with a missing cell: floats, NaN for the empty cell
    floats = {**other, "hour": np.array([float(v) if v else np.nan for v in col["hour"]])}
    assert torch.equal(loaded.score_columns(floats, batch_size=7)[0], probs)


def test_score_columns_takes_a_pandas_data_frame(census, loaded):
    """The scoring CSV read by pandas (NaN for empty cells, an int64 column) and with pandas' nullable types
    (pd.NA in string, Int64 and Float64 columns) scores as the raw text does."""
    pd = pytest.importorskip("pandas")
    frame = pd.read_csv(census["csv"], keep_default_na=True)
    for df in (frame, frame.convert_dtypes()):
        probs, unseen = loaded.score_columns(df, batch_size=16)
        assert (probs - census["expected"]).abs().max().item() <= 1e-6 and unseen == census["unseen"]


def test_score_columns_errors(census, loaded):
    col = dict(census["columns"])
    renamed = {("work_class" if k == "workclass" else k): v for k, v in col.items()}
    with pytest.raises(DataFormatError, match=r"score_columns: the model's column\(s\) \['workclass'\] are missing"):
        loaded.score_columns(renamed)
    with pytest.raises(DataFormatError, match=r"row 2: field 'hour' = 24 is outside the model's ids 0..23"):
        loaded.score_columns({**col, "hour": ["1", "24"] + col["hour"][2:]})
    with pytest.raises(DataFormatError, match=r"row 1: field 'hour' = 'x' is not an integer id"):
        loaded.score_columns({**col, "hour": ["x"] + col["hour"][1:]})
    with pytest.raises(DataFormatError, match=r"dense column 'age' = 'old' is not a number"):
        loaded.score_columns({**col, "age": ["old"] + col["age"][1:]})
    with pytest.raises(ValueError, match="different lengths"):
        loaded.score_columns({**col, "age": col["age"][:-1]})


# ---------------------------------------------------------------------------------------------------------------
# (b) a fresh process: only the package and pimm_fast
# ---------------------------------------------------------------------------------------------------------------
FRESH = """
import csv, sys, torch
import pimm_fast.export as px
fn = px.load(sys.argv[1])
with open(sys.argv[2], newline="") as f:
    rows = list(csv.reader(f))
columns = {name: [r[i] for r in rows[1:]] for i, name in enumerate(rows[0])}
probs, unseen = fn.score_columns(columns)
torch.save({"probs": probs, "unseen": unseen}, sys.argv[3])
columns["work_class"] = columns.pop("workclass")
try:
    fn.score_columns(columns)
except Exception as err:
    print("renamed:", type(err).__name__, err)
"""


@pytest.fixture(scope="module")
def fresh(census):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", FRESH, str(census["package"]), str(census["csv"]),
                             str(census["out"] / "fresh.pt")], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, torch.load(census["out"] / "fresh.pt")


def test_a_fresh_process_scores_the_raw_csv(census, fresh):
    result, scored = fresh
    assert (scored["probs"] - census["expected"]).abs().max().item() <= 1e-6
    assert scored["unseen"] == census["unseen"]
    assert "renamed: DataFormatError" in result.stdout and "['workclass'] are missing" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is about machines without a GPU")
def test_no_cuda_runtime_warning_on_a_cpu_machine(fresh):
    """A CUDA build of torch (with nvcc around) warned "No CUDA runtime is found" on every load."""
    result, _ = fresh
    assert "No CUDA runtime" not in result.stderr + result.stdout, result.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------------------
# (c) C++: examples/score_csv reads the vocabulary from the package
# ---------------------------------------------------------------------------------------------------------------
def _read_output(text: str) -> tuple[list, list]:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    return rows[0], rows[1:]


def test_cpp_scores_the_raw_csv(census, score_csv):
    result = run_score_csv(score_csv, census["package"], census["csv"])
    assert result.returncode == 0, result.stderr[-3000:]
    header, rows = _read_output(result.stdout)
    assert header == ["id", "region", "income", "p_click", "p_buy"]  # keys: not a field or dense column
    assert [r[:3] for r in rows] == [[r[0], r[3], r[7]] for r in census["rows"]]  # every row, in order, keys intact
    probs = torch.tensor([[float(v) for v in r[3:]] for r in rows])
    assert (probs - census["expected"]).abs().max().item() <= 1e-6
    unseen = census["unseen"]
    assert (f"unseen values (code 0) per field: workclass {unseen['workclass']}, education {unseen['education']}, "
            f"tags {unseen['tags']}") in result.stderr
    # batches of 7 rows, chosen key columns
    batched = run_score_csv(score_csv, census["package"], census["csv"], "--batch", "7", "--keep-columns",
                            "income,id")
    assert batched.returncode == 0, batched.stderr[-3000:]
    header, again = _read_output(batched.stdout)
    assert header == ["income", "id", "p_click", "p_buy"]
    assert [r[:2] for r in again] == [[r[7], r[0]] for r in census["rows"]]
    probs = torch.tensor([[float(v) for v in r[2:]] for r in again])
    assert (probs - census["expected"]).abs().max().item() <= 1e-6


@pytest.mark.parametrize("edit, match", [
    (lambda h, rows: (["work_class" if c == "workclass" else c for c in h], rows),
     "missing column(s) 'workclass' that the model needs"),
    (lambda h, rows: (h, rows[:2] + [rows[2][:4] + ["24"] + rows[2][5:]]),
     "score.csv:5: column 'hour' = '24' is not an id of this field (a decimal integer in [0, 24))"),
    (lambda h, rows: (h, [rows[0][:4] + ["-1"] + rows[0][5:]]), "score.csv:2: column 'hour' = '-1' is not an id"),
    (lambda h, rows: (h, [rows[1], rows[0][:-1]]), "score.csv:3: expected 9 cells (as the header), got 8"),
    (lambda h, rows: (h, [rows[0][:6] + ["old"] + rows[0][7:]]), "dense column 'age' = 'old' is not a number"),
    (lambda h, rows: (h + ["id"], [r + ["x"] for r in rows]), "column 'id' appears twice in the header"),
])
def test_cpp_errors_name_the_problem(census, score_csv, tmp_path, edit, match):
    header, rows = edit(list(census["header"]), [list(r) for r in census["rows"]])
    bad = tmp_path / "score.csv"
    _write_csv(bad, header, rows)
    result = run_score_csv(score_csv, census["package"], bad)
    assert result.returncode == 1 and match in result.stderr, result.stderr[-2000:]
    assert "score_csv: error:" in result.stderr and result.stdout == ""


@pytest.mark.parametrize("kind", ["gzip", "utf16"])
def test_cpp_refuses_files_that_are_not_csv_text(census, score_csv, tmp_path, kind):
    import gzip

    text = census["csv"].read_bytes()
    bad = tmp_path / "score.csv"
    bad.write_bytes(gzip.compress(text) if kind == "gzip" else text.decode().encode("utf-16"))
    result = run_score_csv(score_csv, census["package"], bad)
    match = "is gzip-compressed: decompress it first" if kind == "gzip" else ":1: holds a NUL byte"
    assert result.returncode == 1 and match in result.stderr and result.stdout == "", result.stderr[-2000:]


def test_cpp_refuses_a_package_without_vocabulary_and_bad_options(census, score_csv, tmp_path):
    result = run_score_csv(score_csv, census["bare"], census["csv"])
    assert result.returncode == 1 and "the package has no vocabulary" in result.stderr and "--ids" in result.stderr
    result = run_score_csv(score_csv, census["package"], census["csv"], "--keep-columns", "id,nope")
    assert result.returncode == 1 and "--keep-columns: no column 'nope' in the header" in result.stderr
    unclosed = tmp_path / "unclosed.csv"
    unclosed.write_text(",".join(census["header"]) + '\nr0,1,"HS-grad\n')
    result = run_score_csv(score_csv, census["package"], unclosed)
    assert result.returncode == 1 and "unclosed.csv:2: a quoted cell is not closed" in result.stderr


def test_examples_folder_is_self_contained():
    """examples/ keeps a copy of cmake/TorchCudaToolkit.cmake (the C++ tests build a copy of the folder alone)."""
    assert (ROOT / "examples" / "cmake" / "TorchCudaToolkit.cmake").read_text() == \
        (ROOT / "cmake" / "TorchCudaToolkit.cmake").read_text()


def test_cpp_reads_missing_dense_values_as_the_training_reader():
    """score_csv.cpp's list of missing-value words is the training reader's (pimm_fast.data.readers._MISSING)."""
    import re

    from pimm_fast.data import readers

    source = (ROOT / "examples" / "score_csv.cpp").read_text()
    words = re.search(r"kMissing = \{(.*?)\};", source).group(1)
    assert sorted(w.encode() for w in re.findall(r'"(.*?)"', words)) == sorted(readers._MISSING)


# ---------------------------------------------------------------------------------------------------------------
# the real Census-Income sample: the vocabulary of pimm_fast.data.load, the reference codes of read_for_scoring
# ---------------------------------------------------------------------------------------------------------------
CENSUS_DIR = ROOT.parent / "shared" / "data" / "census-income" / "torch-rechub"
CENSUS_DENSE = ["age", "wage per hour", "capital gains", "capital losses", "divdends from stocks",
                "num persons worked for employer", "weeks worked in year"]


@pytest.fixture(scope="module")
def real_census(tmp_path_factory):
    """MMoE over the training sample's vocabulary (csv, encode=true: every cell a token); the test sample with
    its columns reversed behind a key column, encoded by the data reader (read_for_scoring) for the eager model."""
    from pimm_fast import data as D

    if not CENSUS_DIR.is_dir():
        pytest.skip("../shared/data is not present on this machine")
    out = tmp_path_factory.mktemp("real-census")
    splits = D.load(f"csv:{CENSUS_DIR / 'census_income_train_sample.csv'}", labels=["income", "marital status"],
                    dense=CENSUS_DENSE, policy="keep", cache_dir=None)
    vocab = splits.vocabulary
    torch.manual_seed(0)
    model = build_model("mmoe", list(vocab.field_dims), num_tasks=2, task_names=vocab.task_names, embed_dim=4,
                        num_dense=len(CENSUS_DENSE), dense_names=vocab.dense_names).eval()
    model.dense_input.fit(torch.as_tensor(splits.train.dense))
    package = px.save(model, out / "census.pt2", vocabulary=vocab, inductor_configs=dict(FAST))
    with open(CENSUS_DIR / "census_income_test_sample.csv", newline="") as f:
        rows = list(csv.reader(f))
    header = ["row_id"] + rows[0][::-1]
    body = [[f"id{i}"] + r[::-1] for i, r in enumerate(rows[1:])]
    scoring = out / "reversed.csv"
    _write_csv(scoring, header, body)
    table = D.read_for_scoring(scoring, vocab)
    with torch.no_grad():
        expected = model(torch.as_tensor(table.x).long(), dense=torch.as_tensor(table.dense))
    columns = {name: [r[i] for r in body] for i, name in enumerate(header)}
    return {"package": package, "csv": scoring, "columns": columns, "table": table, "expected": expected}


def test_real_census_sample_scored_in_python_and_cpp(real_census, score_csv):
    census, table = real_census, real_census["table"]
    assert list(table.keys) == ["row_id", "income", "marital status"]  # the key column, then the labels
    assert sum(table.unseen.values()) > 0  # the test sample has new codes
    probs, unseen = px.load(census["package"]).score_columns(census["columns"])
    assert (probs - census["expected"]).abs().max().item() <= 1e-6
    assert unseen == table.unseen
    result = run_score_csv(score_csv, census["package"], census["csv"])
    assert result.returncode == 0, result.stderr[-3000:]
    header, rows = _read_output(result.stdout)
    assert header == ["row_id", "income", "marital status", "p_income", "p_marital status"]
    assert [r[0] for r in rows] == list(table.keys["row_id"])
    cpp = torch.tensor([[float(v) for v in r[3:]] for r in rows])
    assert (cpp - census["expected"]).abs().max().item() <= 1e-6
    assert f"{len(rows)} rows; unseen values (code 0) per field: class of worker 0, industry code " \
           f"{table.unseen['industry code']}," in result.stderr
