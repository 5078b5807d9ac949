"""Read any CSV or Parquet file for scoring with a trained model's :class:`~.vocab.Vocabulary`.

    table = read_for_scoring("new.csv", vocabulary)        # every row, in file order
    scores = model(torch.from_numpy(table.x), dense=...)    # table.keys["request_id"] lines the scores up

Unlike :func:`pimm_fast.data.load` nothing is split, dropped or checked against the cascade: a scoring file
is whatever needs scores. Columns are matched by name, in any order, so the file needs a header line; a
header-less CSV is read by position only when positions are the model's names: a model trained on a
header-less CSV (its fields are named by column index, "0", "1", ...) or on aitm-csv (the fixed layout
click,purchase,101,...,301, header optional).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ._bytes import DataFormatError
from .aliccp import AITM_FIELDS
from .readers import (_is_number, _parquet_row, column_names, match_columns, parquet_dense_tokens, parquet_tokens,
                      parse_floats, read_columns, read_first_line, split_line)
from .vocab import Vocabulary

AITM_LAYOUT = ("click", "purchase") + AITM_FIELDS  # aitm-csv's fixed columns


@dataclass
class ScoringTable:
    """A file read for scoring: codes ``x`` int64 [N, F] (the vocabulary's single-valued fields), ``dense``
    float32 [N, K] raw values (NaN = missing) or None, ``labels`` float32 [N, T] (NaN = missing) when the
    file holds every label column, else None, ``keys`` {column: array} the passed-through columns (CSV: str
    cells as read; Parquet: the column's values), ``unseen`` {field: cells that got the unseen code 0},
    ``where(row)`` the place of row ``row`` (0-based) in the file ("line 7", "row 7") for messages."""

    x: np.ndarray
    dense: Optional[np.ndarray]
    labels: Optional[np.ndarray]
    keys: dict = field(default_factory=dict)
    unseen: dict = field(default_factory=dict)
    rows: int = 0
    path: Optional[Path] = None
    where: Callable[[int], str] = _parquet_row


def read_for_scoring(path, vocabulary: Vocabulary, keep_columns: Optional[Sequence[str]] = None,
                     chunk_bytes: int = 4 << 20, require_labels: bool = False) -> ScoringTable:
    """Every row of the CSV or Parquet file ``path``, in file order, encoded with ``vocabulary``.

    The model's fields and dense columns must be in the file (a DataFormatError names the missing ones);
    labels are read when all of the model's label columns are there (``require_labels``: a missing one is an
    error, as evaluating needs them). ``keep_columns``: the columns
    passed through into ``keys`` (default: every column that is neither a field nor a dense column);
    one that is missing is an error. Id cells are encoded as in training (unseen, rare, empty: 0); an id
    outside an identity field's range, a cell with a NUL or invalid UTF-8, and a dense value that is not a
    number are errors naming the line (row for Parquet) and the column.
    """
    path = Path(path)
    if vocabulary.bag_fields:
        raise DataFormatError(f"{path}: the model has multi-valued fields {[f.name for f in vocabulary.bag_fields]} "
                              f"(source {vocabulary.source!r}); scoring reads tables of single-valued fields only "
                              f"(raw Ali-CCP bags are not a table format)")
    if not path.is_file():
        raise FileNotFoundError(f"file to score not found: {path}")
    if path.suffix.lower() in (".parquet", ".pq"):
        return _read_parquet(path, vocabulary, keep_columns, require_labels)
    return _read_csv(path, vocabulary, keep_columns, chunk_bytes, require_labels)


def _roles(names: list, vocabulary: Vocabulary, keep_columns, path: Path, require_labels: bool = False):
    """(feature, dense, label (or None), key) column indices of a file whose columns are ``names``."""
    vocabulary.check_columns(names, f"{path} (a scoring file needs a header line naming its columns)")
    ncols = len(names)
    features = match_columns([f.name for f in vocabulary.single_fields], names, ncols, path, "feature")
    dense = match_columns(list(vocabulary.dense_names), names, ncols, path, "dense")
    labels = None
    missing = [n for n in vocabulary.label_names if n not in names]
    if require_labels and missing:
        raise DataFormatError(f"{path}: the label column(s) {missing} are missing (the model's labels are "
                              f"{list(vocabulary.label_names)}); evaluating needs every label, predict scores a "
                              f"file without them")
    if vocabulary.label_names and not missing:
        labels = match_columns(list(vocabulary.label_names), names, ncols, path, "label")
    if keep_columns is None:
        used = set(features) | set(dense)  # labels too come back: the scores can be checked against them
        keys = [i for i in range(ncols) if i not in used]
    else:
        missing = [c for c in keep_columns if c not in names]
        if missing:
            raise DataFormatError(f"{path}: keep_columns {missing} are not in the file's columns {names}")
        keys = match_columns(list(keep_columns), names, ncols, path, "key")
    return features, dense, labels, keys


def _finish(path, vocabulary, feats, dense, labels, keys, where) -> ScoringTable:
    x, unseen = vocabulary.encode(feats, where, str(path))
    dense_names = vocabulary.dense_names
    d = (np.stack([parse_floats(t, where, str(path), n)[0] for n, t in zip(dense_names, dense)], 1)
         if dense_names else None)
    y = None
    if labels is not None:
        y = np.stack([parse_floats(t, where, str(path), n, "label")[0]
                      for n, t in zip(vocabulary.label_names, labels)], 1) if labels else np.zeros((len(x), 0))
    return ScoringTable(x=x, dense=d, labels=y, keys=keys, unseen=unseen, rows=len(x), path=path, where=where)


def _read_csv(path: Path, vocabulary: Vocabulary, keep_columns, chunk_bytes: int,
              require_labels: bool) -> ScoringTable:
    line, bom = read_first_line(path)
    first = [t.strip() for t in split_line(line, path)]
    ncols = len(first)
    model = [f.name for f in vocabulary.single_fields] + list(vocabulary.dense_names)
    by_index = vocabulary.source == "csv" and all(n.isdigit() for n in model)
    if vocabulary.source == "aitm-csv" and first != list(AITM_LAYOUT) and all(_is_number(t) for t in first):
        names = list(AITM_LAYOUT) if ncols == len(AITM_LAYOUT) else None  # the fixed layout, no header
        if names is None:
            raise DataFormatError(f"{path}, line 1: an aitm-csv file without a header has {len(AITM_LAYOUT)} "
                                  f"columns ({','.join(AITM_LAYOUT)}), found {ncols}")
        skip = 0
    elif by_index and not _label_header(first, vocabulary):  # header-less, as the training file was
        names, skip = [str(i) for i in range(ncols)], 0
    else:
        names, skip = first, 1
    features, dense, labels, keys = _roles(names, vocabulary, keep_columns, path, require_labels)
    wanted = features + dense + (labels or []) + keys
    kinds = ["bytes"] * len(features) + ["float"] * len(dense) + ["label"] * len(labels or []) + \
        ["text"] * len(keys)
    columns, row_lines = read_columns(path, ncols, skip, bom, wanted, kinds, [names[i] for i in wanted], chunk_bytes)

    def where(row: int) -> str:
        return f"line {int(row_lines[row]) if row_lines is not None else 1 + skip + row}"

    nf, nd, nl = len(features), len(dense), len(labels or [])
    return _finish(path, vocabulary, columns[:nf], columns[nf:nf + nd],
                   None if labels is None else columns[nf + nd:nf + nd + nl],
                   {names[i]: c for i, c in zip(keys, columns[nf + nd + nl:])}, where)


def _read_parquet(path: Path, vocabulary: Vocabulary, keep_columns, require_labels: bool) -> ScoringTable:
    import pyarrow as pa
    import pyarrow.parquet as pq
    names = column_names(path)
    features, dense, labels, keys = _roles(names, vocabulary, keep_columns, path, require_labels)
    wanted = sorted(set(features + dense + (labels or []) + keys))
    try:
        table = pq.read_table(path, columns=[names[i] for i in wanted])
    except (pa.ArrowException, OSError) as err:
        raise DataFormatError(f"{path}: cannot read the Parquet data ({err})") from None
    feats = [parquet_tokens(table.column(names[i]), path, names[i]) for i in features]
    dense_tokens = [parquet_dense_tokens(table.column(names[i]), path, names[i]) for i in dense]
    label_tokens = None if labels is None else \
        [parquet_dense_tokens(table.column(names[i]), path, names[i]) for i in labels]
    key_arrays = {names[i]: table.column(names[i]).to_numpy(zero_copy_only=False) for i in keys}
    return _finish(path, vocabulary, feats, dense_tokens, label_tokens, key_arrays, _parquet_row)


def _label_header(first: list, vocabulary: Vocabulary) -> bool:
    """Whether the first line of a file for a model named by column indices is a header: as in training,
    a label cell that is not a number says so (without label columns the file is taken as header-less)."""
    cells = [first[int(n)] for n in vocabulary.label_names if n.isdigit() and int(n) < len(first)]
    return any(c and not _is_number(c) for c in cells)
