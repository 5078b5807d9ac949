"""The byte-level table reader: CSV and Parquet columns as arrays (labels, id tokens, dense tokens).

CSV files are tokenized in chunks on their raw bytes (numpy, no per-line Python). Files with quoted fields
fall back to Python's ``csv`` module (same results, slower). A header line is recognised by its content
(a first line with a non-numeric token in a label or feature column), never assumed: AITM's test.csv has
no header, and PaddleRec's reader silently loses its first row by skipping one anyway. The loaders built on
it are in :mod:`.tables`; scoring files are read by :mod:`.scoring`.
"""
from __future__ import annotations

import csv as _csv
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ._bytes import ChunkError, DataFormatError, iter_chunks, line_of, parse_uint, token_text
from .vocab import fnv_digest, value_text

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
    dense_tokens: list = field(default_factory=list)  # one array per dense column (bytes tokens or floats)
    dense_names: list = field(default_factory=list)
    row_lines: Optional[np.ndarray] = None  # file line of each row where rows may span lines (quoted cells)

    def where(self, row: int) -> str:
        if self.row_lines is not None:
            return f"line {int(self.row_lines[row])}"
        return f"line {self.first_line + row}"


MAX_CELL_BYTES = 1 << 20  # a cell above 1 MiB is an error (documented in docs/data.md)
MAX_TOKEN_WIDTH = 64  # id tokens longer than this are kept as a 128-bit digest: memory stays rows x 64 bytes
MAX_RAW_VOCAB = 1 << 26  # encode=False: a field whose max id + 1 exceeds this is rejected (use encode=True)
_MISSING = {b"", b"na", b"nan", b"null", b"none", b"?", b"-", b"n/a", b"#n/a"}
_BOM = b"\xef\xbb\xbf"


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def match_columns(patterns: Sequence, header: Optional[list], ncols: int, path: Path, role: str) -> list[int]:
    """Column indices of ``patterns``: names, shell-style globs (``categorical_*``) or 0-based indices."""
    out = []
    for c in patterns:
        if isinstance(c, int) or (isinstance(c, str) and c.isdigit() and (header is None or c not in header)):
            i = int(c)
            if not 0 <= i < ncols:
                raise DataFormatError(f"{path}: {role} column index {i} is out of range (the file has {ncols})")
            found = [i]
        elif header is None:
            raise DataFormatError(f"{path}: {role} column {c!r} is named, but the file has no header line "
                                  f"(name columns by index instead)")
        elif any(ch in c for ch in "*?["):
            found = [i for i, name in enumerate(header) if fnmatch.fnmatchcase(name, c)]
            if not found:
                raise DataFormatError(f"{path}: the {role} pattern {c!r} matches no column of {header}")
        elif c not in header:
            raise DataFormatError(f"{path}: {role} column {c!r} is not in the header {header}")
        else:
            found = [i for i, name in enumerate(header) if name == c]
            if len(found) > 1:
                raise DataFormatError(f"{path}: the header names {c!r} {len(found)} times (columns "
                                      f"{[i + 1 for i in found]}); rename the duplicates")
        out.extend(i for i in found if i not in out)
    return out


def select_columns(header: Optional[list], ncols: int, path: Path, labels: Sequence,
                   features: Optional[Sequence], dense: Optional[Sequence], extra: str):
    """(label, feature, dense, ignored) column indices. ``features=None``: every column that is neither a
    label nor dense. Globs expand in file order; overlaps between the roles and used duplicates are errors."""
    if extra not in ("ignore", "error"):
        raise ValueError(f"extra must be 'ignore' or 'error', got {extra!r}")
    label_idx = match_columns(labels, header, ncols, path, "label")
    if len(label_idx) != len(labels):
        raise DataFormatError(f"{path}: label columns must name one column each, got {list(labels)}")
    dense_idx = match_columns(dense or (), header, ncols, path, "dense")
    if features is None:
        feature_idx = [i for i in range(ncols) if i not in label_idx and i not in dense_idx]
    else:
        feature_idx = match_columns(features, header, ncols, path, "feature")
    for a, b, ia, ib in (("label", "feature", label_idx, feature_idx), ("label", "dense", label_idx, dense_idx),
                         ("feature", "dense", feature_idx, dense_idx)):
        overlap = sorted(set(ia) & set(ib))
        if overlap:
            shown = [header[i] if header else i for i in overlap]
            raise DataFormatError(f"{path}: column(s) {shown} named both as {a} and as {b}")
    if header is not None:
        used = label_idx + feature_idx + dense_idx
        names = [header[i] for i in used]
        dups = sorted({n for n in names if header.count(n) > 1})
        if dups:
            raise DataFormatError(f"{path}: the header names {dups} more than once; rename the duplicates "
                                  f"(a duplicate name is ambiguous)")
    rest = [i for i in range(ncols) if i not in label_idx and i not in feature_idx and i not in dense_idx]
    ignored = [header[i] if header else i for i in rest]
    if rest and extra == "error":
        raise DataFormatError(f"{path}: column(s) {ignored} are neither labels nor features "
                              f"(pass extra='ignore' to skip them)")
    return label_idx, feature_idx, dense_idx, ignored


# the first bytes of files that are not CSV text, with what they are
BINARY_SIGNATURES = ((b"\x1f\x8b", "gzip-compressed: decompress it first (gunzip -k FILE)"),
                     (b"BZh", "bzip2-compressed: decompress it first (bunzip2 -k FILE)"),
                     (b"\xfd7zXZ\x00", "xz-compressed: decompress it first (unxz -k FILE)"),
                     (b"\x28\xb5\x2f\xfd", "zstd-compressed: decompress it first (unzstd FILE)"),
                     (b"PK\x03\x04", "a zip archive: extract the CSV from it first"),
                     (b"PAR1", "a Parquet file: name it FILE.parquet (or .pq) so that it is read as Parquet"))


def read_first_line(path: Path) -> tuple[bytes, int]:
    """(first line without a UTF-8 BOM, length of the BOM); bounded by the cell-size limit. A compressed,
    archived or Parquet file, or one whose first line holds a NUL byte, is refused: it is not CSV text."""
    with open(path, "rb") as f:
        line = f.readline(64 * MAX_CELL_BYTES + 1)
    if not line:
        raise DataFormatError(f"{path}: the file is empty")
    for magic, what in BINARY_SIGNATURES:
        if line.startswith(magic):
            raise DataFormatError(f"{path} is {what}; pimm_fast reads plain CSV text or Parquet")
    if b"\x00" in line:
        raise DataFormatError(f"{path}, line 1: holds a NUL byte: this is not a CSV text file (binary data, or "
                              f"UTF-16 text: save it as UTF-8)")
    if len(line) > 64 * MAX_CELL_BYTES:
        raise DataFormatError(f"{path}, line 1: longer than {64 * MAX_CELL_BYTES >> 20} MiB")
    bom = len(_BOM) if line.startswith(_BOM) else 0
    return line[bom:], bom


def split_line(line: bytes, path: Optional[Path] = None) -> list[str]:
    """The cells of one CSV line (the header), quotes resolved."""
    text = line.decode("utf-8", errors="replace").rstrip("\r\n")
    try:
        return next(_csv.reader([text]))
    except _csv.Error as err:  # a bare carriage return inside the line, say
        raise DataFormatError(f"{path or 'CSV'}, line 1: {err}") from None


def _parse_labels(tokens: np.ndarray, where: Callable[[int], str], path: Path, name: str) -> np.ndarray:
    """Label tokens (bytes) -> float64, through their few distinct values (errors name the line)."""
    uniq, inverse = np.unique(tokens, return_inverse=True)
    values = np.empty(len(uniq))
    for i, tok in enumerate(uniq):
        text = tok.decode("utf-8", errors="replace").strip()
        try:
            values[i] = float(text)
        except ValueError:
            row = int(np.flatnonzero(inverse == i)[0])
            what = "is empty (a missing label)" if not text else "is not a number"
            raise DataFormatError(f"{path}, {where(row)}: label {name!r} = {text!r} {what}") from None
    return values[inverse.reshape(-1)]


def parse_floats(tokens: np.ndarray, where, source: str, name: str, role: str = "dense column"
                 ) -> tuple[np.ndarray, int]:
    """Numerical tokens (bytes) -> (float32 values with NaN for missing, count of missing cells).

    Missing: an empty cell, NA, NaN, null, None, ?, -, N/A (any case) and +-inf. Anything else that is
    not a number is an error naming the row."""
    try:
        values = tokens.astype(np.float64)
    except ValueError:
        uniq, inverse = np.unique(tokens, return_inverse=True)
        table = np.empty(len(uniq))
        for i, tok in enumerate(uniq):
            t = bytes(tok).strip()
            if t.lower() in _MISSING:
                table[i] = np.nan
                continue
            try:
                table[i] = float(t)
            except ValueError:
                row = int(np.flatnonzero(inverse == i)[0])
                raise DataFormatError(f"{source}, {where(row)}: {role} {name!r} = "
                                      f"{t[:40].decode('utf-8', 'replace')!r} is not a number") from None
        values = table[inverse.reshape(-1)]
    values[~np.isfinite(values)] = np.nan
    return values.astype(np.float32), int(np.isnan(values).sum())


def looks_numerical(column: np.ndarray, sample: int = 20000) -> bool:
    """Whether the tokens of a column (bytes) are numbers with a fraction or exponent (not ids)."""
    if column.dtype.kind != "S" or not len(column):
        return column.dtype.kind == "f"
    uniq = np.unique(column[:sample])
    uniq = uniq[uniq != b""]
    if not len(uniq) or not any((b"." in u) or (b"e" in u.lower()) for u in uniq[:1000]):
        return False
    try:
        uniq[:1000].astype(np.float64)
    except ValueError:
        return False
    return True


def _tokens_as_bytes(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, long: str = "digest") -> np.ndarray:
    """Tokens as a fixed-width ``S`` array of at most MAX_TOKEN_WIDTH bytes: memory is rows x 64 bytes
    whatever the longest cell. Longer tokens: ``long='digest'`` keeps a digest (ids stay distinct),
    ``'error'`` raises."""
    lens = ends - starts
    over = np.flatnonzero(lens > MAX_TOKEN_WIDTH)
    if len(over) and long == "error":
        i = int(over[0])
        raise ChunkError(starts[i], f"a cell of {int(lens[i]):,} bytes is not a number")
    width = max(1, min(int(lens.max(initial=1)), MAX_TOKEN_WIDTH))
    out = np.zeros((len(starts), width), dtype=np.uint8)
    for k in range(width):
        inside = lens > k
        out[:, k] = np.where(inside, buf[np.minimum(starts + k, len(buf) - 1)], 0)
    out = out.view(f"S{width}").reshape(-1)
    if len(over):
        out = out.astype(f"S{max(width, 33)}")
        for i in over:
            out[i] = fnv_digest(bytes(buf[starts[i]:ends[i]]))
    return out


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _odd_bytes(buf: np.ndarray) -> Optional[np.ndarray]:
    """None when a chunk holds no NUL and is UTF-8 text throughout (the usual case: one pass), else the
    running count of its NUL and non-ASCII bytes, to find the cells worth decoding one by one."""
    if not (buf == 0).any():
        try:
            buf.tobytes().decode("utf-8")
            return None
        except UnicodeDecodeError:
            pass
    return np.concatenate(([0], np.cumsum((buf == 0) | (buf >= 0x80))))


def _bad_text_cells(buf: np.ndarray, count: np.ndarray, lo: np.ndarray, hi: np.ndarray
                    ) -> Optional[tuple[int, str]]:
    """(row, problem) of the first cell buf[lo:hi] holding a NUL byte or bytes that are not UTF-8, or None
    (``count``: :func:`_odd_bytes`). Such a cell is never a valid id: a NUL could pose as a digest, and
    invalid bytes would be changed by any reader that decodes them."""
    for r in np.flatnonzero(count[hi] > count[lo]):
        raw = bytes(buf[lo[r]:hi[r]])
        if b"\x00" in raw:
            return int(r), "holds a NUL byte"
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            return int(r), f"is not UTF-8 text (byte 0x{raw[err.start]:02x} at position {err.start + 1})"
    return None


def _tokenize_chunk(buf: np.ndarray, ncols: int, wanted: Sequence[int], kinds: Sequence[str],
                    names: Optional[Sequence[str]] = None):
    """Tokens of the ``wanted`` columns of a chunk of whole lines: kinds 'int' (int64), 'bytes' (S, long
    cells digested; a cell with a NUL or invalid UTF-8 is an error), 'label' / 'float' (S, long cells an
    error). ``names``: the wanted columns' names, for messages."""
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
    odd = _odd_bytes(buf) if "bytes" in kinds else None
    for col, kind in zip(wanted, kinds):
        lo = (np.concatenate(([0], nl[:-1] + 1)) if col == 0 else ends[:, col - 1] + 1)
        hi = ends[:, col]
        if col == ncols - 1:
            hi = hi - (buf[np.maximum(hi - 1, 0)] == 13)
        too_long = np.flatnonzero(hi - lo > MAX_CELL_BYTES)
        if len(too_long):
            i = int(too_long[0])
            raise ChunkError(lo[i], f"a cell of {int(hi[i] - lo[i]):,} bytes is above the limit of "
                                    f"{MAX_CELL_BYTES:,} bytes")
        if kind == "int":
            out.append(parse_uint(buf, lo, hi, "id"))
            continue
        if kind == "text":
            raw = buf.tobytes()
            out.append(_objects([raw[a:b].decode("utf-8", "surrogateescape") for a, b in zip(lo.tolist(), hi.tolist())]))
            continue
        if kind == "bytes" and odd is not None:
            bad = _bad_text_cells(buf, odd, lo, hi)
            if bad is not None:
                name = names[len(out)] if names else col
                raise ChunkError(lo[bad[0]], f"column {name!r}: the id cell {token_text(buf, lo[bad[0]], hi[bad[0]])} "
                                             f"{bad[1]}")
        out.append(_tokens_as_bytes(buf, lo, hi, "digest" if kind == "bytes" else "error"))
    return rows, out


def _as_fixed(tokens: list[str], long: str, path: Path, where: Callable[[int], str], name="") -> np.ndarray:
    """Cells (str, invalid bytes as surrogate escapes) as an ``S`` array. ``long='digest'`` (id cells):
    long cells digested, a NUL or bytes that are not UTF-8 an error; ``'error'``: a long cell is an error."""
    if not tokens:
        return np.zeros(0, "S1")
    out = []
    for i, t in enumerate(tokens):
        try:
            b = t.encode("utf-8")
        except UnicodeEncodeError:  # a surrogate escape: the file's bytes there are not UTF-8
            b = t.encode("utf-8", "surrogateescape")
            if long == "digest":
                raise DataFormatError(f"{path}, {where(i)}: column {name!r}: the id cell "
                                      f"{b[:40].decode('utf-8', 'replace')!r} is not UTF-8 text") from None
        if long == "digest" and "\x00" in t:
            raise DataFormatError(f"{path}, {where(i)}: column {name!r}: the id cell {t[:40]!r} holds a NUL byte")
        if len(b) > MAX_TOKEN_WIDTH:
            if long == "error":
                raise DataFormatError(f"{path}, {where(i)}: a cell of {len(b):,} bytes is not a number")
            b = fnv_digest(b)
        out.append(b)
    return np.array(out, dtype=bytes)


def _read_with_csv_module(path: Path, skip: int, ncols: int, wanted, kinds, names=None):
    """Quoted CSV through Python's csv module (cells up to MAX_CELL_BYTES; long id cells digested).

    Returns (columns, the file line where each row starts). Bytes that are not UTF-8 are kept as surrogate
    escapes (never replaced), so an id cell holding them is refused and other cells keep their bytes. A
    quote left open is reported at the line where its row starts."""
    cols = [[] for _ in wanted]
    starts: list[int] = []
    old_limit = _csv.field_size_limit()
    _csv.field_size_limit(MAX_CELL_BYTES)
    start = 1
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            reader = _csv.reader(f, strict=True)
            for row in reader:
                lineno, row_start, start = reader.line_num, start, reader.line_num + 1
                if lineno <= skip:
                    continue
                if len(row) != ncols:
                    raise DataFormatError(f"{path}, line {row_start}: expected {ncols} columns, found {len(row)}")
                starts.append(row_start)
                for j, c in enumerate(wanted):
                    cols[j].append(row[c])
    except _csv.Error as err:
        text = str(err)
        if "unexpected end of data" in text or "field larger than field limit" in text:
            raise DataFormatError(f"{path}, line {start}: the row starting here does not end: a quote opened "
                                  f"in it is never closed, or a cell is above the limit of {MAX_CELL_BYTES:,} "
                                  f"bytes ({text})") from None
        raise DataFormatError(f"{path}, line {reader.line_num}: {text} (the row starts at line {start})") from None
    finally:
        _csv.field_size_limit(old_limit)
    lines = np.array(starts, dtype=np.int64)

    def where(i: int) -> str:
        return f"line {int(lines[i])}"

    out = []
    for j, kind in enumerate(kinds):
        name = names[j] if names else wanted[j]
        if kind == "text":
            out.append(_objects(cols[j]))
        elif kind == "int":
            arr = np.empty(len(cols[j]), dtype=np.int64)
            for i, tok in enumerate(cols[j]):
                if not (tok.isascii() and tok.isdigit()) or len(tok) > 18:
                    raise DataFormatError(f"{path}, {where(i)}: id {tok[:40]!r} is not a non-negative integer")
                arr[i] = int(tok)
            out.append(arr)
        else:
            out.append(_as_fixed(cols[j], "digest" if kind == "bytes" else "error", path, where, name))
        cols[j] = None
    return out, lines


def read_csv(path: Path, labels: Sequence, features: Optional[Sequence] = (), feature_kind: str = "int",
             extra: str = "ignore", header: str = "auto", expected_header: Optional[Sequence[str]] = None,
             chunk_bytes: int = 4 << 20, dense: Optional[Sequence] = None) -> Table:
    """Read label, feature and dense columns of a CSV file.

    ``labels``/``features``/``dense``: column names or shell-style globs (header needed) or 0-based indices;
    ``features=None`` takes every other column. ``extra``: 'ignore' the remaining columns or raise ('error').
    ``header``: 'auto' (by content), 'yes' or 'no'. ``expected_header``: the exact names a header line must
    have (when there is one). A UTF-8 byte-order mark is skipped. Memory is bounded whatever the line
    length: cells above MAX_CELL_BYTES are an error, id cells above MAX_TOKEN_WIDTH bytes are kept as digests.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    line, bom = read_first_line(path)
    first = split_line(line, path)
    ncols = len(first)
    if header == "auto":
        stripped = [t.strip() for t in first]
        if expected_header is not None:
            has_header = stripped == list(expected_header)
            if not has_header and not all(_is_number(t) for t in first):
                raise DataFormatError(f"{path}, line 1: neither the expected header {list(expected_header)} nor "
                                      f"numeric data: {first[:6]}...")
        else:  # by the label columns: named labels appear in a header; label cells of data rows are numbers
            named = [c for c in labels if not (isinstance(c, int) or str(c).isdigit())]
            if named:  # an empty cell is no evidence either way (a data row may miss a value)
                has_header = (all(str(c) in stripped for c in named)
                              or any(t and not _is_number(t) for t in stripped))
            else:
                has_header = any(stripped[int(c)] and not _is_number(stripped[int(c)])
                                 for c in labels if int(c) < ncols)
    elif header in ("yes", "no"):
        has_header = header == "yes"
    else:
        raise ValueError(f"header must be 'auto', 'yes' or 'no', got {header!r}")
    names = [t.strip() for t in first] if has_header else None
    if expected_header is not None and ncols != len(expected_header):
        raise DataFormatError(f"{path}, line 1: expected {len(expected_header)} columns "
                              f"({','.join(expected_header)}), found {ncols}")
    display = names or (list(expected_header) if expected_header else None)
    label_idx, feature_idx, dense_idx, ignored = select_columns(display, ncols, path, labels, features, dense, extra)
    wanted = label_idx + feature_idx + dense_idx
    kinds = ["label"] * len(label_idx) + [feature_kind] * len(feature_idx) + ["float"] * len(dense_idx)
    skip = 1 if has_header else 0
    merged, row_lines = read_columns(path, ncols, skip, bom, wanted, kinds,
                                     [display[i] if display else i for i in wanted], chunk_bytes)
    table = Table(path=path, labels=np.zeros((0, len(label_idx))), features=[], first_line=1 + skip,
                  header=names, ignored=ignored, row_lines=row_lines)
    label_names = [display[i] if display else str(i) for i in label_idx]
    nl = len(label_idx)
    nf = len(feature_idx)
    if len(merged[0]):
        table.labels = np.stack([_parse_labels(merged[j], table.where, path, label_names[j]) for j in range(nl)], 1)
    table.label_names, table.features = label_names, merged[nl:nl + nf]
    table.feature_names = [display[i] if display else str(i) for i in feature_idx]
    table.dense_tokens, table.dense_names = merged[nl + nf:], [display[i] if display else str(i) for i in dense_idx]
    return table


def read_columns(path: Path, ncols: int, skip: int, bom: int, wanted: Sequence[int], kinds: Sequence[str],
                 names: Sequence, chunk_bytes: int = 4 << 20) -> tuple[list, Optional[np.ndarray]]:
    """The ``wanted`` columns of a CSV file of ``ncols`` columns, past ``skip`` header lines: kinds 'int'
    (int64 ids), 'bytes' (canonical id tokens, ``S``), 'label' / 'float' (``S`` tokens), 'text' (the cells
    as str, object array: passed-through columns). Returns (columns, the file line of each row when the
    file is quoted, else None: rows are then lines)."""
    columns: list[list] = [[] for _ in wanted]
    quoted = False
    max_line = ncols * (MAX_CELL_BYTES + 1) + 2
    for base, buf in iter_chunks(path, chunk_bytes, max_line_bytes=max_line):
        if base == 0:
            cut = int(np.flatnonzero(buf == 10)[0]) + 1 if skip else bom
            base, buf = cut, buf[cut:]
            if len(buf) == 0:
                continue
        if (buf == 34).any():  # a quote anywhere: the csv module reads the whole file (quotes are legal)
            quoted = True
            break
        try:
            _, parts = _tokenize_chunk(buf, ncols, wanted, kinds, names)
        except ChunkError as err:
            raise line_of(path, base, err) from None
        for j, arr in enumerate(parts):
            columns[j].append(arr)
    row_lines = None
    if quoted:
        arrays, row_lines = _read_with_csv_module(path, skip, ncols, wanted, kinds, names)
        columns = [[arr] for arr in arrays]
    merged = []
    for j, kind in enumerate(kinds):
        parts = columns[j]
        if not parts:
            merged.append(np.zeros(0, {"int": np.int64, "text": object}.get(kind, "S1")))
        elif kind in ("int", "text"):
            merged.append(np.concatenate(parts))
        else:
            width = max(p.dtype.itemsize for p in parts)
            merged.append(np.concatenate([p.astype(f"S{width}") for p in parts]))
        columns[j] = None
    return merged, row_lines


def read_parquet(path: Path, labels: Sequence[str], features: Optional[Sequence[str]], extra: str = "ignore",
                 dense: Optional[Sequence[str]] = None, feature_kind: str = "bytes") -> Table:
    """Label, feature and dense columns of a Parquet file (needs pyarrow: ``pip install pyarrow``).

    ``feature_kind='int'`` (encode=False): feature columns must hold non-null integers."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("reading Parquet needs pyarrow, which is not installed: pip install pyarrow") from None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Parquet file not found: {path}")
    try:
        schema_names = list(pq.read_schema(path).names)
    except (pa.ArrowException, OSError) as err:
        raise DataFormatError(f"{path}: not a readable Parquet file ({err})") from None
    label_idx, feature_idx, dense_idx, rest = select_columns(schema_names, len(schema_names), path, labels,
                                                             features, dense, extra)
    labels = [schema_names[i] for i in label_idx]
    features = [schema_names[i] for i in feature_idx]
    dense = [schema_names[i] for i in dense_idx]
    try:
        table = pq.read_table(path, columns=labels + features + dense)
    except (pa.ArrowException, OSError) as err:
        raise DataFormatError(f"{path}: cannot read the Parquet data ({err})") from None
    y = np.stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in labels], 1) \
        if table.num_rows else np.zeros((0, len(labels)))
    feats = []
    for c in features:
        column = table.column(c)
        if feature_kind == "int":
            if column.null_count or not pa.types.is_integer(column.type):
                what = f"{column.null_count} null(s)" if column.null_count else f"{column.type} values"
                raise DataFormatError(f"{path}: feature column {c!r} holds {what}; encode=false needs non-null "
                                      f"integer ids (use encode=true, or name a numerical column with dense=)")
            col = column.to_numpy(zero_copy_only=False)
            if col.size and col.min() < 0:
                r = int(np.flatnonzero(col < 0)[0])
                raise DataFormatError(f"{path}, row {r + 1}: id {c!r} = {col[r]} is negative (encode=false "
                                      f"needs ids 0, 1, ...; encode=true takes any integer)")
            feats.append(col.astype(np.int64))
        else:
            feats.append(parquet_tokens(column, path, c))
    dense_tokens = [parquet_dense_tokens(table.column(c), path, c) for c in dense]
    return Table(path=path, labels=y, features=feats, first_line=1, header=schema_names, ignored=rest,
                 label_names=list(labels), feature_names=list(features), dense_tokens=dense_tokens,
                 dense_names=dense)


def _parquet_row(row: int) -> str:
    return f"row {row + 1}"


def parquet_tokens(column, path: Path, name: str) -> np.ndarray:
    """Canonical id tokens (``S``) of a Parquet column: integers as their decimal text, strings as UTF-8
    (one holding a NUL is an error), null as b"" (missing), other values by :func:`.vocab.value_text` (NaN is
    missing, 205.0 is the id 205)."""
    import pyarrow as pa
    if pa.types.is_integer(column.type):
        ints = column.fill_null(0).to_numpy(zero_copy_only=False)
        text = ints.astype(np.uint64 if ints.dtype.kind == "u" else np.int64).astype("S21")
        if column.null_count:
            text[column.is_null().to_numpy(zero_copy_only=False)] = b""
        return text
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        values = [b"" if v is None else v for v in column.to_pylist()]
        return _as_fixed([v.decode("utf-8", "surrogateescape") for v in values], "digest", path, _parquet_row, name)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return _as_fixed(["" if v is None else v for v in column.to_pylist()], "digest", path, _parquet_row, name)
    return _as_fixed([value_text(v) for v in column.to_pylist()], "digest", path, _parquet_row, name)


def parquet_dense_tokens(column, path: Path, name: str) -> np.ndarray:
    """A Parquet dense column for :func:`parse_floats`: numbers as float64 (null = NaN), text as tokens."""
    import pyarrow as pa
    if pa.types.is_floating(column.type) or pa.types.is_integer(column.type) or pa.types.is_boolean(column.type):
        return column.to_numpy(zero_copy_only=False).astype(np.float64)
    return _as_fixed(["" if v is None else str(v) for v in column.to_pylist()], "error", path, _parquet_row, name)


def column_names(path: Path) -> list[str]:
    """The column names of a file: a CSV's first line (whatever it holds), a Parquet file's schema."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq
        try:
            return list(pq.read_schema(path).names)
        except Exception as err:  # pyarrow raises several types for a file that is not Parquet
            raise DataFormatError(f"{path}: not a readable Parquet file ({err})") from None
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    return [t.strip() for t in split_line(read_first_line(path)[0], path)]


def read_any(path: Path, labels, features, feature_kind="int", extra="ignore", header="auto",
             expected_header=None, dense=None) -> Table:
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        table = read_parquet(path, labels, features, extra, dense, feature_kind)
        table.where = lambda row: f"row {row + 1}"  # type: ignore[method-assign]
        return table
    return read_csv(path, labels, features, feature_kind, extra, header, expected_header, dense=dense)


def dense_matrix(table: Table) -> Optional[np.ndarray]:
    """The table's dense columns as float32 [N, K] (NaN = missing, see :func:`parse_floats`), or None."""
    if not table.dense_names:
        return None
    return np.stack([parse_floats(tokens, table.where, str(table.path), str(name))[0]
                     for name, tokens in zip(table.dense_names, table.dense_tokens)], 1)
