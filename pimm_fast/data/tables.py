"""Preprocessed tables: the AITM 18-field CSV, the torch-rechub Ali-CCP CSV, and generic CSV / Parquet files.

CSV files are tokenized in chunks on their raw bytes (numpy, no per-line Python). Files with quoted fields
fall back to Python's ``csv`` module (same results, slower). A header line is recognised by its content
(a first line with a non-numeric token in a label or feature column), never assumed: AITM's test.csv has
no header, and PaddleRec's reader silently loses its first row by skipping one anyway.

Every loader returns ``(arrays, info)`` in the layout of :mod:`.cache` (``{split}.x`` int32, ``{split}.y``
float32), after the label checks and the cascade policy of :mod:`.cascade`.
"""
from __future__ import annotations

import csv as _csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ._bytes import ChunkError, DataFormatError, iter_chunks, line_of, parse_uint
from .aliccp import AITM_FIELDS, AITM_VOCAB_SIZES
from .cascade import apply_policy, check_labels, check_policy

RECHUB_SPARSE = ("101", "121", "122", "124", "125", "126", "127", "128", "129", "205", "206", "207", "210", "216",
                 "508", "509", "702", "853", "301", "109_14", "110_14", "127_14", "150_14")
RECHUB_LABELS = ("click", "purchase")
AITM_LABELS = ("click", "purchase")


@dataclass
class Table:
    """Columns of one file: labels [N, T] float64, features as int64 arrays or byte strings (``S`` dtype)."""

    path: Path
    labels: np.ndarray
    features: list  # one array per feature column
    first_line: int  # file line number of data row 0 (1 without a header, 2 with one)
    header: Optional[list]
    ignored: list  # names (or indices) of the columns that were read past
    label_names: Optional[list] = None  # label columns as the file names them (for messages)
    feature_names: Optional[list] = None  # feature columns as the file names them (indices without a header)

    def where(self, row: int) -> str:
        return f"line {self.first_line + row}"


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _resolve(columns: Sequence, header: Optional[list], ncols: int, path: Path, role: str) -> list[int]:
    out = []
    for c in columns:
        if isinstance(c, int) or (isinstance(c, str) and c.isdigit() and (header is None or c not in header)):
            i = int(c)
            if not 0 <= i < ncols:
                raise DataFormatError(f"{path}: {role} column index {i} is out of range (the file has {ncols})")
            out.append(i)
        elif header is None:
            raise DataFormatError(f"{path}: {role} column {c!r} is named, but the file has no header line "
                                  f"(name columns by index instead)")
        elif c not in header:
            raise DataFormatError(f"{path}: {role} column {c!r} is not in the header {header}")
        else:
            out.append(header.index(c))
    return out


def _first_line(path: Path) -> bytes:
    with open(path, "rb") as f:
        line = f.readline(1 << 20)
    if not line:
        raise DataFormatError(f"{path}: the file is empty")
    return line


def _split_line(line: bytes) -> list[str]:
    text = line.decode("utf-8", errors="replace").rstrip("\r\n")
    return next(_csv.reader([text]))


def _parse_labels(tokens: np.ndarray, path: Path, first_line: int, name: str) -> np.ndarray:
    """Label tokens (bytes) -> float64, through their few distinct values (errors name the line)."""
    uniq, inverse = np.unique(tokens, return_inverse=True)
    values = np.empty(len(uniq))
    for i, tok in enumerate(uniq):
        text = tok.decode("utf-8", errors="replace").strip()
        try:
            values[i] = float(text)
        except ValueError:
            row = int(np.flatnonzero(inverse == i)[0])
            raise DataFormatError(f"{path}, line {first_line + row}: label {name!r} = {text!r} is not a number"
                                  ) from None
    return values[inverse.reshape(-1)]


def _tokens_as_bytes(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    lens = ends - starts
    width = max(1, int(lens.max(initial=1)))
    out = np.zeros((len(starts), width), dtype=np.uint8)
    for k in range(width):
        inside = lens > k
        out[:, k] = np.where(inside, buf[np.minimum(starts + k, len(buf) - 1)], 0)
    return out.view(f"S{width}").reshape(-1)


def _tokenize_chunk(buf: np.ndarray, ncols: int, wanted: Sequence[int], kinds: Sequence[str]):
    """Tokens of the ``wanted`` columns of a chunk of whole lines: kinds 'int' (int64) or 'bytes' (S)."""
    cand = np.flatnonzero((buf == 44) | (buf == 10))
    s = buf[cand]
    nl_idx = np.flatnonzero(s == 10)
    per_line = np.diff(nl_idx, prepend=-1)
    bad = per_line != ncols
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        start = 0 if r == 0 else int(cand[nl_idx[r - 1]]) + 1
        raise ChunkError(start, f"expected {ncols} comma-separated columns, found {int(per_line[r])}")
    rows = len(nl_idx)
    ends = cand.reshape(rows, ncols)
    nl = ends[:, -1]
    out = []
    for col, kind in zip(wanted, kinds):
        lo = (np.concatenate(([0], nl[:-1] + 1)) if col == 0 else ends[:, col - 1] + 1)
        hi = ends[:, col]
        if col == ncols - 1:
            hi = hi - (buf[np.maximum(hi - 1, 0)] == 13)
        if kind == "int":
            out.append(parse_uint(buf, lo, hi, "id"))
        else:
            out.append(_tokens_as_bytes(buf, lo, hi))
    return rows, out


def _read_with_csv_module(path: Path, skip: int, ncols: int, wanted, kinds):
    cols = [[] for _ in wanted]
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for lineno, row in enumerate(_csv.reader(f), start=1):
            if lineno <= skip:
                continue
            if len(row) != ncols:
                raise DataFormatError(f"{path}, line {lineno}: expected {ncols} columns, found {len(row)}")
            for j, c in enumerate(wanted):
                cols[j].append(row[c])
    out = []
    for j, kind in enumerate(kinds):
        if kind == "int":
            arr = np.empty(len(cols[j]), dtype=np.int64)
            for i, tok in enumerate(cols[j]):
                if not tok.isdigit():
                    raise DataFormatError(f"{path}, line {skip + i + 1}: id {tok!r} is not a non-negative integer")
                arr[i] = int(tok)
            out.append(arr)
        else:
            out.append(np.array([t.encode() for t in cols[j]], dtype=bytes) if cols[j] else np.zeros(0, "S1"))
    return out


def read_csv(path: Path, labels: Sequence, features: Sequence = (), feature_kind: str = "int",
             extra: str = "ignore", header: str = "auto", expected_header: Optional[Sequence[str]] = None,
             chunk_bytes: int = 4 << 20) -> Table:
    """Read label and feature columns of a CSV file.

    ``labels``/``features``: column names (header needed) or 0-based indices; ``features=None`` takes every
    other column. ``extra``: 'ignore' the remaining columns or raise ('error'). ``header``: 'auto' (by content),
    'yes' or 'no'. ``expected_header``: the exact names a header line must have (when there is one).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    first = _split_line(_first_line(path))
    ncols = len(first)
    if header == "auto":
        if expected_header is not None:
            has_header = [t.strip() for t in first] == list(expected_header)
            if not has_header and not all(_is_number(t) for t in first):
                raise DataFormatError(f"{path}, line 1: neither the expected header {list(expected_header)} nor "
                                      f"numeric data: {first[:6]}...")
        else:  # by the label columns: named labels appear in a header; label cells of data rows are numbers
            named = [c for c in labels if not (isinstance(c, int) or str(c).isdigit())]
            if named:
                stripped = [t.strip() for t in first]
                has_header = all(str(c) in stripped for c in named) or not all(_is_number(t) for t in stripped)
            else:
                has_header = not all(_is_number(first[int(c)]) for c in labels if int(c) < ncols)
    elif header in ("yes", "no"):
        has_header = header == "yes"
    else:
        raise ValueError(f"header must be 'auto', 'yes' or 'no', got {header!r}")
    names = [t.strip() for t in first] if has_header else None
    if expected_header is not None and ncols != len(expected_header):
        raise DataFormatError(f"{path}, line 1: expected {len(expected_header)} columns "
                              f"({','.join(expected_header)}), found {ncols}")
    label_idx = _resolve(labels, names if names is not None else
                         (list(expected_header) if expected_header else None), ncols, path, "label")
    if features is None:
        feature_idx = [i for i in range(ncols) if i not in label_idx]
    else:
        feature_idx = _resolve(features, names if names is not None else
                               (list(expected_header) if expected_header else None), ncols, path, "feature")
    overlap = set(label_idx) & set(feature_idx)
    if overlap:
        raise DataFormatError(f"{path}: column(s) {sorted(overlap)} named both as label and as feature")
    rest = [i for i in range(ncols) if i not in label_idx and i not in feature_idx]
    display = names or (list(expected_header) if expected_header else None)
    ignored = [display[i] if display else i for i in rest]
    if rest and extra == "error":
        raise DataFormatError(f"{path}: column(s) {ignored} are neither labels nor features "
                              f"(pass extra='ignore' to skip them)")
    if extra not in ("ignore", "error"):
        raise ValueError(f"extra must be 'ignore' or 'error', got {extra!r}")
    wanted = label_idx + feature_idx
    kinds = ["bytes"] * len(label_idx) + [feature_kind] * len(feature_idx)
    skip = 1 if has_header else 0
    with open(path, "rb") as f:
        quoted = b'"' in f.read(1 << 20)
    columns: list[list] = [[] for _ in wanted]
    if quoted:
        for j, arr in enumerate(_read_with_csv_module(path, skip, ncols, wanted, kinds)):
            columns[j].append(arr)
    else:
        for base, buf in iter_chunks(path, chunk_bytes):
            if skip and base == 0:
                cut = int(np.flatnonzero(buf == 10)[0]) + 1
                base, buf = cut, buf[cut:]
                if len(buf) == 0:
                    continue
            if (buf == 34).any():
                raise DataFormatError(f"{path}: a quote character appears after the first MiB; "
                                      f"quoted CSV must show a quote early (or use Parquet)")
            try:
                _, parts = _tokenize_chunk(buf, ncols, wanted, kinds)
            except ChunkError as err:
                raise line_of(path, base, err) from None
            for j, arr in enumerate(parts):
                columns[j].append(arr)
    merged = []
    for j, kind in enumerate(kinds):
        parts = columns[j]
        if not parts:
            merged.append(np.zeros(0, np.int64 if kind == "int" else "S1"))
        elif kind == "bytes":
            width = max(p.dtype.itemsize for p in parts)
            merged.append(np.concatenate([p.astype(f"S{width}") for p in parts]))
        else:
            merged.append(np.concatenate(parts))
    first_line = 1 + skip
    label_names = [display[i] if display else str(i) for i in label_idx]
    y = (np.stack([_parse_labels(merged[j], path, first_line, label_names[j]) for j in range(len(label_idx))], 1)
         if len(merged[0]) else np.zeros((0, len(label_idx))))
    return Table(path=path, labels=y, features=merged[len(label_idx):], first_line=first_line,
                 header=names, ignored=ignored, label_names=label_names,
                 feature_names=[display[i] if display else str(i) for i in feature_idx])


def read_parquet(path: Path, labels: Sequence[str], features: Optional[Sequence[str]], extra: str = "ignore"
                 ) -> Table:
    """Label and feature columns of a Parquet file (needs pyarrow: ``pip install pyarrow``)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("reading Parquet needs pyarrow, which is not installed: pip install pyarrow") from None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Parquet file not found: {path}")
    schema_names = list(pq.read_schema(path).names)
    for role, cols in (("label", labels), ("feature", features or ())):
        for c in cols:
            if c not in schema_names:
                raise DataFormatError(f"{path}: {role} column {c!r} is not in the file's columns {schema_names}")
    if features is None:
        features = [c for c in schema_names if c not in labels]
    rest = [c for c in schema_names if c not in labels and c not in features]
    if rest and extra == "error":
        raise DataFormatError(f"{path}: column(s) {rest} are neither labels nor features "
                              f"(pass extra='ignore' to skip them)")
    table = pq.read_table(path, columns=list(labels) + list(features))
    y = np.stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in labels], 1) \
        if table.num_rows else np.zeros((0, len(labels)))
    feats = []
    for c in features:
        col = table.column(c).to_numpy(zero_copy_only=False)
        if col.dtype.kind in "iu":
            if col.size and col.min() < 0:
                r = int(np.flatnonzero(col < 0)[0])
                raise DataFormatError(f"{path}, row {r + 1}: id {c!r} = {col[r]} is negative")
            feats.append(col.astype(np.int64))
        else:
            feats.append(np.array([b"" if v is None else str(v).encode() for v in col], dtype=bytes)
                         if col.size else np.zeros(0, "S1"))
    return Table(path=path, labels=y, features=feats, first_line=1, header=schema_names, ignored=rest,
                 label_names=list(labels), feature_names=list(features))


def read_any(path: Path, labels, features, feature_kind="int", extra="ignore", header="auto",
             expected_header=None) -> Table:
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        table = read_parquet(path, labels, features, extra)
        table.where = lambda row: f"row {row + 1}"  # type: ignore[method-assign]
        return table
    return read_csv(path, labels, features, feature_kind, extra, header, expected_header)


# ---------------------------------------------------------------------------------------------------------------
# encoding and splitting helpers shared by the table loaders
# ---------------------------------------------------------------------------------------------------------------
def finish_table(table: Table, task_names: Sequence[str], policy: str, stats: dict, key: str):
    """Label checks + cascade policy on one file; returns (features list, y float32) of the kept rows."""
    check_labels(table.labels, table.label_names or task_names, str(table.path), where=table.where)
    fstats: dict = {"rows": len(table.labels)}
    keep = apply_policy(table.labels, policy, task_names, str(table.path), fstats, where=table.where)
    y = table.labels.astype(np.float32)
    feats = table.features
    if keep is not None:
        y = y[keep]
        feats = [f[keep] for f in feats]
    fstats["kept"] = len(y)
    stats[key] = fstats
    return feats, y


def encode_bytes_columns(train_cols: list, other: dict, min_count: int):
    """Vocabulary per column from the train tokens (count >= min_count -> 1..n in sorted order; else 0)."""
    dims, encoded_train, encoded_other = [], [], {k: [] for k in other}
    for j, col in enumerate(train_cols):
        uniq, inverse, counts = np.unique(col, return_inverse=True, return_counts=True)
        kept = (counts >= min_count) & (uniq != b"")
        codes = np.cumsum(kept).astype(np.int32)
        codes[~kept] = 0
        encoded_train.append(codes[inverse.reshape(-1)])
        keys = uniq[kept]
        dims.append(int(kept.sum()) + 1)
        for name, cols in other.items():
            c = cols[j]
            pos = np.searchsorted(keys, c)
            pos_c = np.minimum(pos, max(len(keys) - 1, 0))
            hit = (keys[pos_c] == c) if len(keys) else np.zeros(len(c), dtype=bool)
            encoded_other[name].append(np.where(hit, pos_c + 1, 0).astype(np.int32))
    return dims, encoded_train, encoded_other


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
def _assemble(parts: dict, dims, field_names, task_names, source: str, stats: dict) -> tuple[dict, dict]:
    arrays = {}
    for split, (x, y) in parts.items():
        arrays[f"{split}.x"] = x
        arrays[f"{split}.y"] = y
        stats[f"{split}_rows"] = len(y)
    info = {"source": source, "field_names": [str(n) for n in field_names], "field_dims": [int(d) for d in dims],
            "task_names": list(task_names), "stats": stats, "bag_groups": []}
    return arrays, info


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


def load_aitm_csv(directory: Path, policy: str = "drop", valid_fraction: float = 0.1, seed: int = 0,
                  dims: str = "aitm") -> tuple[dict, dict]:
    """The AITM 18-field encoded CSV (``click,purchase,101,...,301``, all integers, header optional).

    ``dims='aitm'``: the field sizes of the AITM protocol (ids must lie below them); ``'data'``: max id + 1.
    Validation: ctr_cvr.dev when present, else ``valid_fraction`` of train drawn by ``seed``.
    """
    check_policy(policy)
    if dims not in ("aitm", "data"):
        raise ValueError(f"dims must be 'aitm' or 'data', got {dims!r}")
    files = aitm_files(directory)
    expected = list(AITM_LABELS) + list(AITM_FIELDS)
    stats: dict = {"policy": policy, "files": {k: str(v) for k, v in files.items()}}
    task_names = ("click", "conversion")
    sizes = [AITM_VOCAB_SIZES[f] for f in AITM_FIELDS]
    loaded = {}
    for split, path in files.items():
        table = read_csv(path, labels=[0, 1], features=list(range(2, 20)), feature_kind="int",
                         expected_header=expected)
        if dims == "aitm":
            check_id_range(table.features, sizes, AITM_FIELDS, table, "the AITM vocabulary; use dims='data' "
                                                                       "for data encoded otherwise")
        stats[split + "_header"] = table.header is not None
        loaded[split] = finish_table(table, task_names, policy, stats, split + "_file")
    if dims == "data":
        sizes = [max(int(f[j].max(initial=0)) for f, _ in loaded.values()) + 1 for j in range(len(AITM_FIELDS))]
    parts = {}
    for split, (feats, y) in loaded.items():
        x = stack_features(feats)
        if split == "train" and "valid" not in files:
            parts.update(_split_train(x, y, valid_fraction, seed))
        else:
            parts[split] = (x, y)
    return _assemble(parts, sizes, AITM_FIELDS, task_names, "aitm-csv", stats)


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


def load_rechub_csv(directory: Path, policy: str = "drop") -> tuple[dict, dict]:
    """torch-rechub's Ali-CCP CSV: labels click, purchase; the 23 sparse columns (dense D* columns ignored).

    Its ids were encoded by torch-rechub over the full data, so field sizes are max id + 1 over the 3 files.
    """
    check_policy(policy)
    files = rechub_files(directory)
    task_names = ("click", "conversion")
    stats: dict = {"policy": policy, "files": {k: str(v) for k, v in files.items()}}
    loaded = {}
    for split, path in files.items():
        table = read_csv(path, labels=list(RECHUB_LABELS), features=list(RECHUB_SPARSE), feature_kind="int",
                         header="auto")
        if table.header is None:
            raise DataFormatError(f"{path}: torch-rechub files start with a header line (click,purchase,101,...)")
        stats["ignored_columns"] = [str(c) for c in table.ignored]
        loaded[split] = finish_table(table, task_names, policy, stats, split + "_file")
    for split, (feats, _) in loaded.items():
        ints_fit(feats, files[split])
    sizes = [max(int(f[j].max(initial=0)) for f, _ in loaded.values()) + 1 for j in range(len(RECHUB_SPARSE))]
    parts = {split: (stack_features(feats), y) for split, (feats, y) in loaded.items()}
    return _assemble(parts, sizes, RECHUB_SPARSE, task_names, "rechub-csv", stats)


def _table_files(path: Path) -> dict:
    path = Path(path)
    if path.is_file():
        return {"all": path}
    if not path.is_dir():
        raise FileNotFoundError(f"table not found: {path}")
    files = {}
    for split, stems in (("train", ("train",)), ("valid", ("valid", "val", "dev")), ("test", ("test",))):
        for stem in stems:
            for ext in (".csv", ".parquet", ".pq"):
                if (path / (stem + ext)).is_file():
                    files.setdefault(split, path / (stem + ext))
    if "train" not in files or "test" not in files:
        raise FileNotFoundError(f"{path}: a table directory needs train.csv|.parquet and test.csv|.parquet "
                                f"(valid/val/dev optional); found {sorted(p.name for p in path.iterdir())}")
    return files


def load_table(path: Path, labels: Sequence[str], features: Optional[Sequence[str]] = None, extra: str = "ignore",
               encode: bool = True, min_count: int = 1, policy: str = "drop", valid_fraction: float = 0.1,
               test_fraction: float = 0.2, seed: int = 0, header: str = "auto",
               task_names: Optional[Sequence[str]] = None) -> tuple[dict, dict]:
    """A generic CSV / Parquet table (one file split by ``seed``, or a directory of train/valid/test files).

    ``labels``: the label columns in funnel order (names, or indices for a header-less CSV); ``features``: the
    categorical columns (default: all others); ``extra``: 'ignore' or 'error' for columns named by neither.
    ``encode=True``: any token is an id, the vocabulary comes from train (count >= ``min_count`` -> 1..n,
    others, unseen and empty -> 0). ``encode=False``: columns already hold non-negative integer ids
    (sizes = max id + 1).
    """
    check_policy(policy)
    if not labels or len(labels) < 2:
        raise ValueError("name at least 2 label columns, in funnel order (e.g. labels=['click', 'purchase'])")
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    files = _table_files(path)
    names = list(task_names) if task_names else [str(c) for c in labels]
    if len(names) != len(labels):
        raise ValueError(f"{len(names)} task names for {len(labels)} label columns")
    stats: dict = {"policy": policy, "files": {k: str(v) for k, v in files.items()}, "encode": encode}
    loaded = {}
    feature_names = None
    for split, p in files.items():
        table = read_any(p, labels, features, "bytes" if encode else "int", extra, header)
        if feature_names is None:
            feature_names = [str(c) for c in table.feature_names]
        elif [str(c) for c in table.feature_names] != feature_names:
            raise DataFormatError(f"{p}: feature columns {table.feature_names} differ from the other files' "
                                  f"{feature_names}")
        if len(table.features) != len(feature_names):
            raise DataFormatError(f"{p}: {len(table.features)} feature columns, the other files have "
                                  f"{len(feature_names)}")
        stats["ignored_columns"] = [str(c) for c in table.ignored]
        loaded[split] = finish_table(table, names, policy, stats, split + "_file")
    if "all" in loaded:
        feats, y = loaded.pop("all")
        fractions = [valid_fraction, test_fraction] if valid_fraction > 0 else [test_fraction]
        idx = split_rows(len(y), fractions, seed)
        keys = ["train", "valid", "test"] if valid_fraction > 0 else ["train", "test"]
        for key, rows in zip(keys, idx):
            loaded[key] = ([f[rows] for f in feats], y[rows])
    if encode:
        dims, train_cols, others = encode_bytes_columns(loaded["train"][0],
                                                         {k: v[0] for k, v in loaded.items() if k != "train"},
                                                         min_count)
        encoded = {"train": train_cols, **others}
    else:
        for split, (feats, _) in loaded.items():
            ints_fit(feats, Path(path))
        dims = [max(int(f[j].max(initial=0)) for f, _ in loaded.values()) + 1 for j in range(len(feature_names))]
        encoded = {k: v[0] for k, v in loaded.items()}
    parts = {}
    for split in ("train", "valid", "test"):
        if split not in loaded:
            continue
        x = stack_features(encoded[split])
        y = loaded[split][1]
        if split == "train" and "valid" not in loaded and valid_fraction > 0 and "all" not in files:
            parts.update(_split_train(x, y, valid_fraction, seed))
        else:
            parts[split] = (x, y)
    return _assemble(parts, dims, feature_names, names, "csv", stats)
