"""The table loaders: the AITM 18-field CSV, the torch-rechub Ali-CCP CSV, and generic CSV / Parquet files.

The files are read by :mod:`.readers`. Every loader returns ``(arrays, info)`` in the layout of :mod:`.cache`
(``{split}.x`` int32, ``{split}.y`` float32, ``info["vocabulary"]``: the :class:`~.vocab.Vocabulary` text),
after the label checks and the cascade policy of :mod:`.cascade`.
"""
from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ._bytes import DataFormatError
from .aliccp import AITM_FIELDS, AITM_VOCAB_SIZES
from .cache import VOCABULARY_ARRAY
from .cascade import apply_policy, check_labels, check_policy
from .vocab import FieldVocab, Vocabulary
from .readers import MAX_RAW_VOCAB, Table, column_names, dense_matrix, looks_numerical, match_columns, read_any, \
    read_csv, read_first_line, split_line

RECHUB_SPARSE = ("101", "121", "122", "124", "125", "126", "127", "128", "129", "205", "206", "207", "210", "216",
                 "508", "509", "702", "853", "301", "109_14", "110_14", "127_14", "150_14")
RECHUB_DENSE = ("D109_14", "D110_14", "D127_14", "D150_14", "D508", "D509", "D702", "D853")
RECHUB_DENSE_GLOB = "D*"  # rechub-csv's default dense columns (torch-rechub's files hold RECHUB_DENSE)
RECHUB_LABELS = ("click", "purchase")
AITM_LABELS = ("click", "purchase")


# ---------------------------------------------------------------------------------------------------------------
# encoding and splitting helpers shared by the table loaders
# ---------------------------------------------------------------------------------------------------------------
def finish_table(table: Table, task_names: Sequence[str], policy: str, stats: dict, key: str):
    """Label checks, dense cells parsed, cascade policy on one file; returns (features list, y float32,
    dense float32 [N, K] or None) of the kept rows. A bad dense cell is an error even in a dropped row."""
    check_labels(table.labels, table.label_names or task_names, str(table.path), where=table.where)
    dense = dense_matrix(table)
    fstats: dict = {"rows": len(table.labels)}
    keep = apply_policy(table.labels, policy, task_names, str(table.path), fstats, where=table.where)
    y = table.labels.astype(np.float32)
    feats = table.features
    if keep is not None:
        y = y[keep]
        feats = [f[keep] for f in feats]
        dense = None if dense is None else dense[keep]
    fstats["kept"] = len(y)
    stats[key] = fstats
    return feats, y, dense


def train_field(name: str, train_col: np.ndarray, min_count: int) -> tuple[FieldVocab, np.ndarray]:
    """An encoded field from its train tokens: tokens seen at least ``min_count`` times (never the empty
    cell) are the keys, in bytes order (codes 1..n); every other token gets 0. Returns the field and the
    train codes (int32; what ``field.encode`` gives, from the sort already done)."""
    if train_col.dtype.kind != "S":
        raise TypeError(f"column {name!r}: tokens must be bytes (S), got {train_col.dtype}")
    uniq, inverse, counts = np.unique(train_col, return_inverse=True, return_counts=True)
    kept = (counts >= min_count) & (uniq != b"")
    codes = np.cumsum(kept, dtype=np.int32)
    codes[~kept] = 0
    return FieldVocab(name, "encoded", int(kept.sum()) + 1, min_count, uniq[kept]), codes[inverse.reshape(-1)]


def encode_table(table: Table, vocabulary: Vocabulary) -> tuple[list, dict]:
    """A table's feature columns (in the vocabulary's single-field order) as codes; errors name file lines."""
    cols, unseen = [], {}
    for f, col in zip(vocabulary.single_fields, table.features):
        codes, unseen[f.name] = f.encode(col, table.where, str(table.path))
        cols.append(codes)
    return cols, unseen


def split_rows(n: int, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Seeded random partition of range(n): one sorted index array per fraction, the rest first."""
    perm = np.random.default_rng(seed).permutation(n)
    out, start = [], 0
    counts = [int(round(n * f)) for f in fractions]
    rest = n - sum(counts)
    if rest < 0 or (n > 0 and rest == 0):
        raise ValueError(f"fractions {list(fractions)} leave no training rows out of {n}")
    bounds = [rest] + counts
    for c in bounds:
        out.append(np.sort(perm[start:start + c]))
        start += c
    return out


def stack_features(cols: list) -> np.ndarray:
    if not cols:
        raise DataFormatError("no feature columns")
    return np.stack([np.asarray(c, dtype=np.int32) for c in cols], 1)


def check_id_range(cols: list, dims: Sequence[int], names: Sequence[str], table: Table, hint: str) -> None:
    for j, (c, d) in enumerate(zip(cols, dims)):
        if len(c) and c.max() >= d:
            r = int(np.flatnonzero(c >= d)[0])
            raise DataFormatError(f"{table.path}, {table.where(r)}: id {names[j]} = {int(c[r])} is outside the "
                                  f"vocabulary of {d} ({hint})")


def ints_fit(cols: list, path: Path) -> None:
    for c in cols:
        if len(c) and c.max() >= 2 ** 31 - 1:
            raise DataFormatError(f"{path}: ids reach {int(c.max())}, beyond int32: encode them instead "
                                  f"(encode=True)")




# ---------------------------------------------------------------------------------------------------------------
# the loaders
# ---------------------------------------------------------------------------------------------------------------
def _assemble(parts: dict, vocabulary: Vocabulary, stats: dict, dense: Optional[dict] = None) -> tuple[dict, dict]:
    """Arrays and manifest info in the layout of :mod:`.cache`; ``dense``: {split: float32 [N, K]}. The
    vocabulary is the one source of the field names and sizes, the task and dense names (``info``) and is
    stored whole as the uint8 array ``vocabulary`` (its text format)."""
    arrays = {}
    for split, (x, y) in parts.items():
        arrays[f"{split}.x"] = x
        arrays[f"{split}.y"] = y
        stats[f"{split}_rows"] = len(y)
    for split, d in (dense or {}).items():
        arrays[f"{split}.dense"] = d
    arrays[VOCABULARY_ARRAY] = np.frombuffer(vocabulary.to_bytes(), dtype=np.uint8)
    single = vocabulary.single_fields
    info = {"source": vocabulary.source, "field_names": [f.name for f in single],
            "field_dims": [f.size for f in single], "task_names": list(vocabulary.task_names), "stats": stats,
            "bag_groups": [], "dense_names": list(vocabulary.dense_names)}
    return arrays, info


def identity_vocabulary(names: Sequence[str], sizes: Sequence[int], source: str, task_names: Sequence[str],
                        label_names: Sequence[str], dense_names: Sequence[str] = ()) -> Vocabulary:
    """The vocabulary of a pre-encoded source: every field's ids are its codes."""
    return Vocabulary([FieldVocab(str(n), "identity", int(d)) for n, d in zip(names, sizes)],
                      dense_names=dense_names, label_names=label_names, task_names=task_names, source=source)


def _split_train(x, y, valid_fraction, seed):
    if valid_fraction <= 0:
        return {"train": (x, y)}
    train_idx, valid_idx = split_rows(len(y), [valid_fraction], seed)
    return {"train": (x[train_idx], y[train_idx]), "valid": (x[valid_idx], y[valid_idx])}


def aitm_files(directory: Path) -> dict:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"AITM CSV directory not found: {directory}")
    if (directory / "ctr_cvr.train").is_file():
        files = {"train": directory / "ctr_cvr.train", "test": directory / "ctr_cvr.test"}
        if (directory / "ctr_cvr.dev").is_file():
            files["valid"] = directory / "ctr_cvr.dev"
    else:
        files = {"train": directory / "train.csv", "test": directory / "test.csv"}
    for split, p in files.items():
        if not p.is_file():
            raise FileNotFoundError(f"{directory}: missing {p.name} (expected AITM's ctr_cvr.train/.dev/.test or "
                                    f"PaddleRec's train.csv and test.csv)")
    return files


def _identity_sizes(vocabulary: Vocabulary, names: Sequence[str], source: str) -> list[int]:
    """The field sizes of a model's vocabulary for a pre-encoded source whose fields are ``names``."""
    if vocabulary.field_names != tuple(names) or any(f.kind != "identity" for f in vocabulary.fields):
        raise DataFormatError(f"the model's fields {list(vocabulary.field_names)} (source {vocabulary.source!r}) "
                              f"are not the pre-encoded fields {list(names)} of {source}")
    return list(vocabulary.field_dims)


def load_aitm_csv(directory: Path, policy: str = "drop", valid_fraction: float = 0.1, seed: int = 0,
                  dims: str = "aitm", vocabulary: Optional[Vocabulary] = None) -> tuple[dict, dict]:
    """The AITM 18-field encoded CSV (``click,purchase,101,...,301``, all integers, header optional).

    ``dims='aitm'``: the field sizes of the AITM protocol (ids must lie below them); ``'data'``: max id + 1.
    Validation: ctr_cvr.dev when present, else ``valid_fraction`` of train drawn by ``seed``. With a model's
    ``vocabulary`` the sizes are the model's and an id outside them is an error naming the line.
    """
    check_policy(policy)
    if dims not in ("aitm", "data"):
        raise ValueError(f"dims must be 'aitm' or 'data', got {dims!r}")
    files = aitm_files(directory)
    expected = list(AITM_LABELS) + list(AITM_FIELDS)
    stats: dict = {"policy": policy, "files": {k: str(v) for k, v in files.items()}}
    task_names = ("click", "conversion")
    sizes = [AITM_VOCAB_SIZES[f] for f in AITM_FIELDS]
    hint = "the AITM vocabulary; use dims='data' for data encoded otherwise"
    if vocabulary is not None:
        sizes, dims, hint = _identity_sizes(vocabulary, AITM_FIELDS, "aitm-csv"), "aitm", "the model's vocabulary"
    loaded = {}
    for split, path in files.items():
        table = read_csv(path, labels=[0, 1], features=list(range(2, 20)), feature_kind="int",
                         expected_header=expected)
        if dims == "aitm":
            check_id_range(table.features, sizes, AITM_FIELDS, table, hint)
        stats[split + "_header"] = table.header is not None
        loaded[split] = finish_table(table, task_names, policy, stats, split + "_file")
    if dims == "data":
        sizes = [max(int(f[j].max(initial=0)) for f, _, _ in loaded.values()) + 1 for j in range(len(AITM_FIELDS))]
    parts = {}
    for split, (feats, y, _) in loaded.items():
        x = stack_features(feats)
        if split == "train" and "valid" not in files:
            parts.update(_split_train(x, y, valid_fraction, seed))
        else:
            parts[split] = (x, y)
    return _assemble(parts, identity_vocabulary(AITM_FIELDS, sizes, "aitm-csv", task_names, AITM_LABELS), stats)


def rechub_files(directory: Path) -> dict:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"torch-rechub CSV directory not found: {directory}")
    files = {}
    for split, stem in (("train", "train"), ("valid", "val"), ("test", "test")):
        found = sorted(directory.glob(f"ali_ccp_{stem}*.csv"))
        if len(found) != 1:
            raise FileNotFoundError(f"{directory}: expected one ali_ccp_{stem}*.csv, found "
                                    f"{[p.name for p in found] or 'none'}")
        files[split] = found[0]
    return files


def rechub_dense_columns(path: Path, dense: Optional[Sequence[str]]) -> list[str]:
    """The dense columns to read from a torch-rechub file: ``None`` (default) every column named ``D*``
    (torch-rechub writes the 8 of RECHUB_DENSE), ``['none']`` none, else the names / globs given."""
    if dense is None:
        header = [t.strip() for t in split_line(read_first_line(path)[0], path)]
        return [name for name in header if fnmatch.fnmatchcase(name, RECHUB_DENSE_GLOB)]
    if [str(d).strip().lower() for d in dense] == ["none"]:
        return []
    return [str(d) for d in dense]


def load_rechub_csv(directory: Path, policy: str = "drop", dense: Optional[Sequence[str]] = None,
                    vocabulary: Optional[Vocabulary] = None) -> tuple[dict, dict]:
    """torch-rechub's Ali-CCP CSV: labels click, purchase; the 23 sparse columns as fields and the dense
    ``D*`` columns as numerical features (raw float32, NaN = missing; cells checked as in :func:`load_table`).

    ``dense``: None (default) reads every ``D*`` column; ``['none']`` reads none (they are then listed in
    ``stats['ignored_columns']``, with any other column read past); else the dense columns by name or glob.
    Its ids were encoded by torch-rechub over the full data, so field sizes are max id + 1 over the 3 files;
    with a model's ``vocabulary`` they are the model's (an id outside is an error naming the line) and the
    dense columns are the model's.
    """
    check_policy(policy)
    files = rechub_files(directory)
    if vocabulary is not None:
        model_sizes = _identity_sizes(vocabulary, RECHUB_SPARSE, "rechub-csv")
        asked = None if dense is None else [str(d) for d in dense]
        if asked is not None and asked != (list(vocabulary.dense_names) or ["none"]):
            raise ValueError(f"dense={','.join(asked)} differs from the model's dense columns "
                             f"{list(vocabulary.dense_names)}: leave dense= out (the model's are read)")
        dense = list(vocabulary.dense_names) or ["none"]
    task_names = ("click", "conversion")
    stats: dict = {"policy": policy, "files": {k: str(v) for k, v in files.items()}, "altered": {}}
    loaded = {}
    dense_names = ignored = None
    for split, path in files.items():
        table = read_csv(path, labels=list(RECHUB_LABELS), features=list(RECHUB_SPARSE), feature_kind="int",
                         header="auto", dense=rechub_dense_columns(path, dense))
        if table.header is None:
            raise DataFormatError(f"{path}: torch-rechub files start with a header line (click,purchase,101,...)")
        names, rest = [str(c) for c in table.dense_names], [str(c) for c in table.ignored]
        if dense_names is None:
            dense_names, ignored = names, rest
        elif names != dense_names or rest != ignored:
            raise DataFormatError(f"{path}: dense columns {names} and unused columns {rest} differ from "
                                  f"{files['train'].name}'s {dense_names} and {ignored}")
        if vocabulary is not None:
            check_id_range(table.features, model_sizes, RECHUB_SPARSE, table, "the model's vocabulary")
        loaded[split] = finish_table(table, task_names, policy, stats, split + "_file")
        d = loaded[split][2]
        if d is not None:
            stats["altered"][split] = {DENSE_MISSING: int(np.isnan(d).any(axis=1).sum())}
    stats["ignored_columns"] = ignored
    for split, (feats, _, _) in loaded.items():
        ints_fit(feats, files[split])
    sizes = model_sizes if vocabulary is not None else \
        [max(int(f[j].max(initial=0)) for f, _, _ in loaded.values()) + 1 for j in range(len(RECHUB_SPARSE))]
    parts = {split: (stack_features(feats), y) for split, (feats, y, _) in loaded.items()}
    dense_parts = {split: d for split, (_, _, d) in loaded.items() if d is not None}
    vocab = identity_vocabulary(RECHUB_SPARSE, sizes, "rechub-csv", task_names, RECHUB_LABELS, dense_names)
    return _assemble(parts, vocab, stats, dense_parts)


TABLE_SPLITS = (("train", ("train",)), ("valid", ("valid", "val", "dev")), ("test", ("test",)))
TABLE_EXTENSIONS = (".csv", ".parquet", ".pq")


def _files_by_split_word(path: Path) -> dict:
    """A directory's table files named by a split word between ``_``, ``-`` or ``.`` (torch-rechub's
    ``aliexpress_train_sample.csv``, ``census_income_val_sample.csv``): at most one file per split."""
    found: dict = {}
    for p in sorted(path.iterdir()):
        if not p.is_file() or p.suffix.lower() not in TABLE_EXTENSIONS:
            continue
        words = set(re.split(r"[_.\-]", p.stem.lower()))
        splits = [split for split, stems in TABLE_SPLITS if words & set(stems)]
        if len(splits) > 1:
            raise ValueError(f"{p}: the name holds the words of several splits ({', '.join(splits)}); rename it")
        if splits:
            found.setdefault(splits[0], []).append(p)
    for split, paths in found.items():
        if len(paths) > 1:
            raise ValueError(f"{path}: {len(paths)} files could be the {split} split: {[q.name for q in paths]}; "
                             f"keep one, or name it {split}.csv")
    return {split: paths[0] for split, paths in found.items()}


def _table_files(path: Path) -> dict:
    """The file of a table, or a directory's train / valid (optional) / test files: named exactly
    ``train``, ``valid``|``val``|``dev``, ``test`` (.csv, .parquet, .pq), else, when no file is named so, by
    those words inside the name (``aliexpress_train_sample.csv``); the two schemes are never mixed."""
    path = Path(path)
    if path.is_file():
        return {"all": path}
    if not path.is_dir():
        raise FileNotFoundError(f"table not found: {path}")
    files = {}
    for split, stems in TABLE_SPLITS:
        for stem in stems:
            for ext in TABLE_EXTENSIONS:
                if (path / (stem + ext)).is_file():
                    files.setdefault(split, path / (stem + ext))
    if not files:
        files = _files_by_split_word(path)
    if "train" not in files or "test" not in files:
        raise FileNotFoundError(f"{path}: a table directory needs train.csv|.parquet and test.csv|.parquet "
                                f"(valid/val/dev optional), or files named by those words (e.g. "
                                f"x_train_sample.csv, x_test_sample.csv); found "
                                f"{sorted(p.name for p in path.iterdir())}")
    return files


CASCADE_DROP = "labels break the cascade (cascade policy 'drop')"
CASCADE_KEEP = "labels break the cascade (cascade policy 'keep': trained as they are)"
OOV_IDS = "a categorical value outside the training vocabulary (unseen, rare or empty) became id 0"
DENSE_MISSING = "a missing numerical value (imputed with the training mean, flagged)"


def _check_numerical_columns(table: Table) -> None:
    """Without an explicit feature list, a column of decimal numbers would become ids: say so and ask."""
    numeric = [str(n) for n, col in zip(table.feature_names, table.features) if looks_numerical(col)]
    if numeric:
        shown = ", ".join(numeric[:6]) + (f", ... ({len(numeric)} in all)" if len(numeric) > 6 else "")
        raise DataFormatError(
            f"{table.path}: column(s) {shown} hold decimal numbers, which would become categorical ids; name "
            f"the categorical columns with features= (--features) and the numerical ones with dense= (--dense); "
            f"comma lists and globs work, e.g. --features 'cat_*' --dense 'num_*'")


def load_table(path: Path, labels: Sequence[str], features: Optional[Sequence[str]] = None, extra: str = "ignore",
               encode: Optional[bool] = None, min_count: int = 1, policy: str = "drop",
               valid_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0, header: str = "auto",
               task_names: Optional[Sequence[str]] = None, dense: Optional[Sequence[str]] = None,
               vocabulary: Optional[Vocabulary] = None) -> tuple[dict, dict]:
    """A generic CSV / Parquet table (one file split by ``seed``, or a directory of train/valid/test files).

    ``labels``: the label columns in funnel order (names, or indices for a header-less CSV); ``features``: the
    categorical columns (default: all others but the dense ones; then a column of decimal numbers is an
    error that asks for ``features``/``dense``); ``dense``: numerical columns (raw float32, NaN = missing);
    names may be shell-style globs. ``extra``: 'ignore' or 'error' for columns named by none.
    ``encode=True``: any token is an id, the vocabulary comes from train (count >= ``min_count`` -> 1..n,
    others, unseen and empty -> 0). ``encode=False``: columns already hold non-negative integer ids
    (sizes = max id + 1, at most MAX_RAW_VOCAB). A single file is split first (seeded), then each split
    applies the cascade policy; every dropped or altered row is counted by reason and split in
    ``stats['dropped']`` / ``stats['altered']``.

    ``vocabulary`` (a trained model's): every file is encoded with it instead of a vocabulary built from
    train. Its fields and dense columns are matched by name, in any column order (missing ones are an
    error naming them); ``labels`` and ``task_names`` default to its own; identity fields check their range.
    """
    check_policy(policy)
    model_columns = None
    if vocabulary is not None:
        labels, task_names, encode, model_columns = _model_columns(vocabulary, labels, task_names, encode)
    encode = True if encode is None else encode
    if not labels or len(labels) < 2:
        raise ValueError("name at least 2 label columns, in funnel order (e.g. labels=['click', 'purchase'])")
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    files = _table_files(path)
    names = list(task_names) if task_names else [str(c) for c in labels]
    if len(names) != len(labels):
        raise ValueError(f"{len(names)} task names for {len(labels)} label columns")
    stats: dict = {"policy": policy, "files": {k: str(v) for k, v in files.items()}, "encode": encode,
                   "dropped": {}, "altered": {}, "warnings": []}
    raw = {}
    feature_names = dense_names = None
    for split, p in files.items():
        try:
            if model_columns is not None:
                table = _read_with_vocabulary(p, vocabulary, labels, features, dense, extra, header)
            else:
                table = read_any(p, labels, features, "bytes" if encode else "int", extra, header, dense=dense)
        except DataFormatError as err:
            if encode or features is not None or "is not a non-negative integer" not in str(err):
                raise
            raise DataFormatError(f"{err}; with encode=false every feature column must hold integer ids: name "
                                  f"the id columns with features= (--features) and numerical ones with dense= "
                                  f"(--dense)") from None
        if feature_names is None:
            loaded_label_names = [str(c) for c in (table.label_names or labels)]
            feature_names = [str(c) for c in table.feature_names]
            dense_names = [str(c) for c in table.dense_names]
            if features is None and encode and vocabulary is None:
                _check_numerical_columns(table)
        elif [str(c) for c in table.feature_names] != feature_names or \
                [str(c) for c in table.dense_names] != dense_names:
            raise DataFormatError(f"{p}: feature columns {table.feature_names} and dense columns "
                                  f"{table.dense_names} differ from the other files' {feature_names} and "
                                  f"{dense_names}")
        if not feature_names:
            raise DataFormatError(f"{p}: no categorical feature column (every model embeds at least one)")
        if len(table.labels) == 0:
            raise DataFormatError(f"{p}: no data rows" + (" (only a header line)" if table.header else ""))
        stats["ignored_columns"] = [str(c) for c in table.ignored]
        check_labels(table.labels, table.label_names or names, str(p), where=table.where)
        d = dense_matrix(table)
        raw[split] = (table, table.features, table.labels.astype(np.float32), d, np.arange(len(table.labels)))
    if "all" in raw:  # one file: split first (seeded), then every split applies the policy to its rows
        table, feats, y, d, _ = raw.pop("all")
        fractions = [valid_fraction, test_fraction] if valid_fraction > 0 else [test_fraction]
        keys = ["train", "valid", "test"] if valid_fraction > 0 else ["train", "test"]
        for key, rows in zip(keys, split_rows(len(y), fractions, seed)):
            raw[key] = (table, [f[rows] for f in feats], y[rows], None if d is None else d[rows], rows)
    loaded = {}
    totals = {"rows": 0, "cascade_violations": 0, "cascade_dropped": 0}
    for split in ("train", "valid", "test"):
        if split not in raw:
            continue
        table, feats, y, d, rows = raw[split]
        fstats: dict = {"rows": len(y)}
        keep = apply_policy(y, policy, names, str(table.path), fstats,
                            where=lambda r, t=table, rows=rows: t.where(int(rows[r])))
        if keep is not None:
            feats, y, d = [f[keep] for f in feats], y[keep], None if d is None else d[keep]
        fstats["kept"] = len(y)
        if "all" in files:
            for k in totals:
                totals[k] += fstats.get(k, 0)
        else:
            stats[split + "_file"] = fstats
        stats["dropped"][split] = {CASCADE_DROP: fstats["cascade_dropped"]}
        if policy == "keep" and fstats["cascade_violations"]:
            stats.setdefault("kept", {})[split] = {CASCADE_KEEP: fstats["cascade_violations"]}
        if d is not None:
            stats["altered"].setdefault(split, {})[DENSE_MISSING] = int(np.isnan(d).any(axis=1).sum())
        loaded[split] = (feats, y, d)
    if "all" in files:
        stats["all_file"] = dict(totals, kept=sum(len(v[1]) for v in loaded.values()))
    for split in ("train", "test"):
        if len(loaded[split][1]) == 0:
            dropped = stats["dropped"][split][CASCADE_DROP]
            raise DataFormatError(
                f"{path}: the {split} split is empty" + (f" after dropping its {dropped} row(s) that break the "
                                                         f"cascade" if dropped else "")
                + (f" (test_fraction={test_fraction} of {sum(len(v[1]) for v in loaded.values())} rows)"
                   if "all" in files and not dropped else ""))
    if vocabulary is None and encode:
        built = [train_field(n, c, min_count) for n, c in zip(feature_names, loaded["train"][0])]
        vocabulary = Vocabulary([f for f, _ in built])
        loaded = {k: ([c for _, c in built] if k == "train" else encode_table_columns(v[0], vocabulary), v[1], v[2])
                  for k, v in loaded.items()}
    elif vocabulary is None:
        for split, (feats, _, _) in loaded.items():
            ints_fit(feats, Path(path))
        dims = [max(int(f[j].max(initial=0)) for f, _, _ in loaded.values()) + 1 for j in range(len(feature_names))]
        for name, size in zip(feature_names, dims):
            if size > MAX_RAW_VOCAB:
                raise DataFormatError(
                    f"{path}: with encode=false column {name!r} holds the id {size - 1:,}, so its table would "
                    f"need {size:,} rows (limit {MAX_RAW_VOCAB:,}); use encode=true to number the ids "
                    f"that occur")
        vocabulary = Vocabulary([FieldVocab(n, "identity", d) for n, d in zip(feature_names, dims)])
    vocabulary = Vocabulary(vocabulary.fields, dense_names=dense_names or (), task_names=names, source="csv",
                            label_names=[str(c) for c in loaded_label_names])
    encoded = {k: v[0] for k, v in loaded.items()}
    if encode:
        for split, cols in encoded.items():
            oov = np.zeros(len(loaded[split][1]), dtype=bool)
            for name, c in zip(feature_names, cols):
                oov |= c == 0
                unseen = int((c == 0).sum())
                if split != "train" and len(c) >= 10 and unseen >= 0.9 * len(c):
                    stats["warnings"].append(
                        f"column {name!r}: {unseen} of {len(c)} {split} rows hold a value never seen in training "
                        f"(a row or session id?); it carries no information there (leave it out with --features)")
            stats["altered"].setdefault(split, {})[OOV_IDS] = int(oov.sum())
        n_train = len(loaded["train"][1])
        for name, size in zip(feature_names, vocabulary.field_dims):
            if features is None and model_columns is None and n_train >= 50 and size - 1 >= 0.9 * n_train:
                stats["warnings"].append(
                    f"column {name!r} has a distinct value in {size - 1} of {n_train} training rows: as a "
                    f"categorical feature it can only memorise rows (leave it out with --features)")
    parts, dense_parts = {}, {}
    for split in ("train", "valid", "test"):
        if split not in loaded:
            continue
        x = stack_features(encoded[split])
        y, d = loaded[split][1], loaded[split][2]
        if split == "train" and "valid" not in loaded and valid_fraction > 0 and "all" not in files:
            train_idx, valid_idx = split_rows(len(y), [valid_fraction], seed)
            parts["train"], parts["valid"] = (x[train_idx], y[train_idx]), (x[valid_idx], y[valid_idx])
            if d is not None:
                dense_parts["train"], dense_parts["valid"] = d[train_idx], d[valid_idx]
            for what in ("dropped", "altered"):  # the train file's counts cover train and valid
                if "train" in stats[what]:
                    stats[what]["train+valid"] = stats[what].pop("train")
        else:
            parts[split] = (x, y)
            if d is not None:
                dense_parts[split] = d
    return _assemble(parts, vocabulary, stats, dense_parts)


def encode_table_columns(cols: list, vocabulary: Vocabulary) -> list:
    return [f.encode(c)[0] for f, c in zip(vocabulary.single_fields, cols)]


def _model_columns(vocabulary: Vocabulary, labels, task_names, encode):
    """(labels, task names, encode, the model's feature and dense names) for a table read with a vocabulary."""
    if vocabulary.bag_fields:
        raise DataFormatError(f"the model has multi-valued fields {[f.name for f in vocabulary.bag_fields]} "
                              f"(source {vocabulary.source!r}); a csv table holds single-valued fields only")
    kinds = {f.kind for f in vocabulary.fields}
    model_encode = kinds == {"encoded"}
    if len(kinds) > 1 or (encode is not None and encode != model_encode):
        raise ValueError(f"encode={encode} disagrees with the model's vocabulary, whose fields are "
                         f"{' and '.join(sorted(kinds))} (encode={'true' if model_encode else 'false'})")
    labels = list(labels) if labels else list(vocabulary.label_names)
    if task_names is None and len(labels) == len(vocabulary.task_names):
        task_names = list(vocabulary.task_names)
    return labels, task_names, model_encode, [f.name for f in vocabulary.fields] + list(vocabulary.dense_names)


def _read_with_vocabulary(path: Path, vocabulary: Vocabulary, labels, features, dense, extra, header) -> Table:
    """A file's columns read by the model's names (any column order), its features encoded with the model's
    vocabulary (errors name the line); ``features`` / ``dense`` given as well must select the same columns."""
    model_features = [f.name for f in vocabulary.fields]
    model_dense = list(vocabulary.dense_names)
    names = column_names(path)
    if not all(n.isdigit() for n in model_features + model_dense):  # named columns: say every missing one
        vocabulary.check_columns(names, str(path))
    for given, model, role in ((features, model_features, "feature"), (dense, model_dense, "dense")):
        if given is not None:
            chosen = [names[i] for i in match_columns(given, names, len(names), path, role)]
            if sorted(chosen) != sorted(model):
                raise DataFormatError(f"{path}: {role}s={list(given)} selects {chosen}, but the model's {role} "
                                      f"columns are {model}")
    table = read_any(path, labels, model_features, "bytes", extra, header, dense=model_dense)
    table.features = encode_table(table, vocabulary)[0]
    return table
