"""The id encoding of a trained model (:class:`Vocabulary`), so new raw data is encoded as training encoded its own.

The contract (API and text format, shared with the C++ scorer) is in docs/data.md, "The vocabulary"; in short:
one :class:`FieldVocab` per embedding field, kind ``encoded`` (sorted raw tokens; key i gets code i + 1,
every other token code 0) or ``identity`` (the token is the code, 0 <= v < size). Raw tokens are the
cell's bytes; a token longer than MAX_TOKEN_BYTES is replaced by :func:`fnv_digest` (b"\\x00" + 32 hex).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Collection, Optional, Sequence

import numpy as np

from ._bytes import DataFormatError

MAGIC = b"pimm_fast.vocabulary/1"
KINDS = ("encoded", "identity")
MAX_TOKEN_BYTES = 64  # longer tokens are looked up by their digest
_FNV_PRIME = 0x100000001b3
_FNV_BASES = (0xcbf29ce484222325, 0x6c62272e07bb0142)
_MASK = (1 << 64) - 1

_SPECIAL = re.compile(rb"[\\\t\n\r\x00]")
_ESCAPE = {b"\\": b"\\\\", b"\t": b"\\t", b"\n": b"\\n", b"\r": b"\\r", b"\x00": b"\\0"}
_UNESCAPE = {b"\\": b"\\", b"t": b"\t", b"n": b"\n", b"r": b"\r", b"0": b"\x00"}
_ESCAPED = re.compile(rb"\\(.?)", re.S)
_DIGEST = re.compile(rb"\x00[0-9a-f]{32}\Z")


def _fnv1a64(data: bytes, basis: int) -> int:
    h = basis
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & _MASK
    return h


def fnv_digest(raw: bytes) -> bytes:
    """A long token's stand-in: b"\\x00" + 32 lowercase hex digits (two FNV-1a 64 hashes, two bases)."""
    return b"\x00" + ("%016x%016x" % tuple(_fnv1a64(raw, b) for b in _FNV_BASES)).encode()


def canonical_token(raw: bytes) -> bytes:
    """The bytes looked up for a raw cell: the cell itself, or its digest when longer than MAX_TOKEN_BYTES."""
    return raw if len(raw) <= MAX_TOKEN_BYTES else fnv_digest(raw)


_MISSING_TYPES = ("NAType", "NaTType")  # pandas.NA, pandas.NaT (named, so that pandas is not imported)


def is_missing(value) -> bool:
    """None, a float NaN, pandas.NA or pandas.NaT: a missing cell."""
    return value is None or (isinstance(value, float) and value != value) or type(value).__name__ in _MISSING_TYPES


def value_text(value) -> str:
    """The id a typed cell (Parquet, pandas, Python) holds, as text: None, NaN, pandas.NA and NaT are the
    empty (missing) cell; a float with an integral value is that integer (pandas turns an integer column with
    a missing cell into floats: 205.0 is the id 205, as the CSV cell "205" is); anything else ``str(value)``."""
    if is_missing(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def escape(raw: bytes) -> bytes:
    return _SPECIAL.sub(lambda m: _ESCAPE[m.group()], raw)


def unescape(text: bytes, where: str = "") -> bytes:
    def one(m):
        out = _UNESCAPE.get(m.group(1))
        if out is None:
            raise DataFormatError(f"{where}: bad escape {m.group()!r} (known: \\\\ \\t \\n \\r \\0)")
        return out
    return _ESCAPED.sub(one, text) if b"\\" in text else text


def _show(key: bytes) -> str:
    """A key for a message: its text, or <digest> for a long cell's stand-in."""
    return "<digest of a long cell>" if key.startswith(b"\x00") else repr(key.decode("utf-8", "replace"))


def _row_where(row: int) -> str:
    return f"row {row + 1}"


@dataclass
class FieldVocab:
    """One embedding field: ``keys`` (kind 'encoded': sorted ``S`` array of canonical tokens) or none
    (kind 'identity': the token is the code). ``size`` = embedding rows (len(keys) + 1 when encoded)."""

    name: str
    kind: str
    size: int
    min_count: int = 1
    keys: Optional[np.ndarray] = None
    bag: bool = False

    def __post_init__(self):
        self.name = str(self.name)
        self.size, self.min_count, self.bag = int(self.size), int(self.min_count), bool(self.bag)
        if self.kind not in KINDS:
            raise ValueError(f"field {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "identity":
            if self.keys is not None and len(self.keys):
                raise ValueError(f"field {self.name!r}: an identity field holds no keys")
            self.keys = None
            if self.size < 1:
                raise ValueError(f"field {self.name!r}: size must be >= 1, got {self.size}")
            return
        keys = np.zeros(0, "S1") if self.keys is None else np.asarray(self.keys)
        if keys.dtype.kind != "S":
            keys = np.array([bytes(k) for k in keys.tolist()], dtype="S") if len(keys) else np.zeros(0, "S1")
        self.keys = keys
        if len(keys) and (keys[0] == b"" or bool((keys[1:] <= keys[:-1]).any())):
            raise ValueError(f"field {self.name!r}: keys must be non-empty and strictly increasing (bytes order)")
        if self.size != len(keys) + 1:
            raise ValueError(f"field {self.name!r}: an encoded field has size len(keys) + 1 = {len(keys) + 1}, "
                             f"got {self.size}")

    def encode(self, tokens: np.ndarray, where: Optional[Callable[[int], str]] = None, source: str = ""
               ) -> tuple[np.ndarray, int]:
        """(int64 codes, count of cells that got the unseen code 0) of canonical tokens (``S`` array) or of
        integers (int64 array, read as their decimal text). Identity fields: a token outside [0, size) is a
        DataFormatError naming ``where(row)``, the column and the value."""
        tokens = np.asarray(tokens)
        if self.kind == "identity":
            return self._identity(tokens, where or _row_where, source), 0
        if tokens.dtype.kind in "iu":
            tokens = tokens.astype(np.int64).astype("S21")
        elif tokens.dtype.kind != "S":
            raise TypeError(f"field {self.name!r}: tokens must be an S (bytes) or integer array, got {tokens.dtype}")
        keys = self.keys
        if not len(keys) or not len(tokens):
            return np.zeros(len(tokens), np.int64), len(tokens)
        pos = np.minimum(np.searchsorted(keys, tokens), len(keys) - 1)
        hit = keys[pos] == tokens
        codes = np.where(hit, pos + 1, 0).astype(np.int64)
        return codes, int(len(tokens) - np.count_nonzero(hit))

    def _identity(self, tokens: np.ndarray, where, source: str) -> np.ndarray:
        prefix = f"{source}, " if source else ""
        if tokens.dtype.kind in "iu":
            values = tokens.astype(np.int64)
        elif tokens.dtype.kind == "S":
            try:
                values = tokens.astype(np.int64) if len(tokens) else np.zeros(0, np.int64)
                ok = True
            except (ValueError, OverflowError):
                ok = False
            if ok:  # numpy also reads ' 5', '+5' and '5.0' style spellings: only plain decimals are ids
                plain = np.char.isdigit(np.char.lstrip(tokens, b"-")) if len(tokens) else np.zeros(0, bool)
                ok = bool(plain.all())
            if not ok:
                for r, tok in enumerate(tokens.tolist()):
                    if not re.fullmatch(rb"-?[0-9]+", tok):
                        raise DataFormatError(f"{prefix}{where(r)}: field {self.name!r} = "
                                              f"{tok[:40].decode('utf-8', 'replace')!r} is not an integer id "
                                              f"(the model's ids are 0..{self.size - 1})")
                values = tokens.astype(np.int64)
        else:
            raise TypeError(f"field {self.name!r}: tokens must be an S (bytes) or integer array, got {tokens.dtype}")
        bad = (values < 0) | (values >= self.size)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise DataFormatError(f"{prefix}{where(r)}: field {self.name!r} = {int(values[r])} is outside the "
                                  f"model's ids 0..{self.size - 1} ({int(bad.sum())} such cell(s))")
        return values


class Vocabulary:
    """The fields (single-valued first, then bags), dense, label and task names, and the source kind."""

    def __init__(self, fields: Sequence[FieldVocab], dense_names: Sequence[str] = (),
                 label_names: Sequence[str] = (), task_names: Sequence[str] = (), source: str = ""):
        self.fields = tuple(fields)
        self.dense_names = tuple(str(n) for n in dense_names)
        self.label_names = tuple(str(n) for n in label_names)
        self.task_names = tuple(str(n) for n in task_names)
        self.source = str(source)
        seen_bag = False
        for f in self.fields:
            if not isinstance(f, FieldVocab):
                raise TypeError(f"fields must be FieldVocab, got {type(f).__name__}")
            if seen_bag and not f.bag:
                raise ValueError(f"field {f.name!r}: single-valued fields come before the bag fields")
            seen_bag |= f.bag
        names = self.field_names + self.dense_names
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ValueError(f"vocabulary: the names {dups} appear more than once among fields and dense columns")

    # -- views ---------------------------------------------------------------------------------------------------
    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def field_dims(self) -> tuple[int, ...]:
        return tuple(f.size for f in self.fields)

    @property
    def single_fields(self) -> tuple[FieldVocab, ...]:
        return tuple(f for f in self.fields if not f.bag)

    @property
    def bag_fields(self) -> tuple[FieldVocab, ...]:
        return tuple(f for f in self.fields if f.bag)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self.to_bytes() == other.to_bytes()

    def __repr__(self) -> str:
        return (f"Vocabulary(source={self.source!r}, fields={len(self.fields)} "
                f"({', '.join(f'{f.name}:{f.kind}:{f.size}' for f in self.fields[:6])}"
                f"{', ...' if len(self.fields) > 6 else ''}), dense={len(self.dense_names)}, "
                f"tasks={list(self.task_names)})")

    def difference(self, other: "Vocabulary") -> Optional[str]:
        """The first difference from ``other`` in words (fields, their kinds, sizes and keys, dense, label and
        task names), or None when the two encode alike."""
        if self == other:
            return None
        for what in ("field_names", "dense_names", "label_names", "task_names"):
            mine, theirs = getattr(self, what), getattr(other, what)
            if mine != theirs:
                return f"{what.replace('_', ' ')} {list(mine)} against {list(theirs)}"
        for a, b in zip(self.fields, other.fields):
            if (a.kind, a.size, a.bag, a.min_count) != (b.kind, b.size, b.bag, b.min_count):
                return (f"field {a.name!r}: {a.kind} of size {a.size} (min_count {a.min_count}) against {b.kind} of "
                        f"size {b.size} (min_count {b.min_count})")
            if a.keys is not None and not np.array_equal(a.keys, b.keys):
                i = int(np.flatnonzero(a.keys != b.keys)[0])
                return (f"field {a.name!r}: code {i + 1} is {_show(a.keys[i])} against {_show(b.keys[i])} (same "
                        f"size, other values)")
        return f"source {self.source!r} against {other.source!r}"

    def change_from_unsaved(self, integer_fields: Collection[str] = (),
                            float_fields: Collection[str] = ()) -> Optional[str]:
        """Why a run saved before vocabularies were (its checkpoint or package holds none) numbered these data
        otherwise than this vocabulary does, or None when its codes are these. ``integer_fields``: the fields
        whose ids were integers in the data (raw Ali-CCP, Parquet integer columns), numbered in numeric order
        then; ``float_fields``: Parquet float columns, whose integral values were the text "205.0" then
        ("205" now, :func:`value_text`); cells over 64 bytes were digested with BLAKE2b then (FNV-1a now)."""
        for f in self.fields:
            if f.keys is None or not len(f.keys):
                continue
            if f.keys[0].startswith(b"\x00"):
                return (f"field {f.name!r} has cells over {MAX_TOKEN_BYTES} bytes, which were digested otherwise "
                        f"then")
            if f.name in float_fields and any(k.lstrip(b"-").isdigit() for k in f.keys.tolist()):
                return f"field {f.name!r}: its float ids were written '205.0' then, '205' now"
            if f.name in integer_fields:
                try:
                    numbers = [int(k) for k in f.keys.tolist()]
                except ValueError:
                    continue
                if any(b < a for a, b in zip(numbers, numbers[1:])):
                    return (f"field {f.name!r}: its integer ids were numbered in numeric order then, in the order of "
                            f"their decimal text now")
        return None

    # -- encoding ------------------------------------------------------------------------------------------------
    def encode_column(self, j: int, tokens: np.ndarray, where: Optional[Callable[[int], str]] = None,
                      source: str = "") -> tuple[np.ndarray, int]:
        """(int64 codes, unseen count) of field ``j``'s column (see :meth:`FieldVocab.encode`)."""
        return self.fields[j].encode(tokens, where, source)

    def encode(self, columns: Sequence[np.ndarray], where: Optional[Callable[[int], str]] = None,
               source: str = "") -> tuple[np.ndarray, dict]:
        """Codes int64 [N, F_single] of the single-valued fields' columns, and {field name: unseen count}."""
        single = self.single_fields
        if len(columns) != len(single):
            raise ValueError(f"{len(columns)} columns for {len(single)} single-valued fields")
        n = len(columns[0]) if len(columns) else 0
        out = np.empty((n, len(single)), np.int64)
        unseen = {}
        for j, (f, col) in enumerate(zip(single, columns)):
            if len(col) != n:
                raise ValueError(f"column {f.name!r} has {len(col)} rows, the first one {n}")
            out[:, j], unseen[f.name] = f.encode(col, where, source)
        return out, unseen

    def check_columns(self, available: Sequence[str], where: str) -> None:
        """Every field and dense name must be among ``available`` (a DataFormatError naming the missing ones)."""
        have = set(str(a) for a in available)
        missing = [n for n in self.field_names + self.dense_names if n not in have]
        if missing:
            raise DataFormatError(f"{where}: the model's column(s) {missing} are missing; the file has "
                                  f"{list(available)}")

    # -- text format ---------------------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The text format (docs/data.md): a header, one ``field`` line per field followed by its keys."""
        def names(label, values):
            return b"\t".join([label] + [escape(str(v).encode()) for v in values])

        out = [MAGIC, names(b"source", [self.source]), names(b"tasks", self.task_names),
               names(b"labels", self.label_names), names(b"dense", self.dense_names),
               b"fields\t%d" % len(self.fields)]
        for f in self.fields:
            nkeys = 0 if f.keys is None else len(f.keys)
            out.append(b"field\t%s\t%s\t%d\t%d\t%s\t%d" % (escape(f.name.encode()), f.kind.encode(), f.size,
                                                              f.min_count, b"bag" if f.bag else b"single", nkeys))
            if nkeys:
                keys = f.keys.tolist()
                blob = b"".join(keys)
                if _SPECIAL.search(blob):
                    keys = [escape(k) for k in keys]
                out.append(b"\n".join(keys))
        out.append(b"end\n")
        return b"\n".join(out)

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "") -> "Vocabulary":
        """Parse :meth:`to_bytes`'s format; a DataFormatError naming ``where`` and the line for anything off."""
        where = where or "vocabulary"
        if isinstance(data, memoryview):
            data = data.tobytes()
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"{where}: expected bytes, got {type(data).__name__}")
        lines = bytes(data).split(b"\n")

        def fail(i: int, msg: str):
            raise DataFormatError(f"{where}, line {i + 1}: {msg}")

        if lines[0] != MAGIC:
            fail(0, f"not a pimm_fast vocabulary (the first line must be {MAGIC.decode()!r}, got "
                    f"{lines[0][:60].decode('utf-8', 'replace')!r})")
        if len(lines) < 7 or lines[-1] != b"" or lines[-2] != b"end":
            fail(len(lines) - 1, "truncated: the file must end with a line 'end'")
        header = {}
        for i, label in enumerate((b"source", b"tasks", b"labels", b"dense", b"fields"), start=1):
            parts = lines[i].split(b"\t")
            if parts[0] != label:
                fail(i, f"expected a {label.decode()!r} line, got {lines[i][:60].decode('utf-8', 'replace')!r}")
            header[label] = [unescape(p, f"{where}, line {i + 1}").decode("utf-8") for p in parts[1:]]
        if len(header[b"source"]) > 1:
            fail(1, "the source line names more than one source")
        try:
            nfields = int(header[b"fields"][0]) if len(header[b"fields"]) == 1 else -1
        except ValueError:
            nfields = -1
        if nfields < 0:
            fail(5, "expected 'fields<TAB>count'")
        fields = []
        i = 6
        end = len(lines) - 2  # index of the 'end' line
        for _ in range(nfields):
            if i >= end:
                fail(i, f"{nfields} fields announced, found {len(fields)}")
            parts = lines[i].split(b"\t")
            if len(parts) != 7 or parts[0] != b"field":
                fail(i, f"expected 'field<TAB>name<TAB>kind<TAB>size<TAB>min_count<TAB>single|bag<TAB>keys', got "
                        f"{lines[i][:80].decode('utf-8', 'replace')!r}")
            name = unescape(parts[1], f"{where}, line {i + 1}").decode("utf-8")
            kind = parts[2].decode("utf-8", "replace")
            try:
                size, min_count, nkeys = int(parts[3]), int(parts[4]), int(parts[6])
            except ValueError:
                fail(i, f"field {name!r}: size, min_count and the key count must be integers")
            if parts[5] not in (b"single", b"bag"):
                fail(i, f"field {name!r}: expected 'single' or 'bag', got {parts[5].decode('utf-8', 'replace')!r}")
            if kind not in KINDS:
                fail(i, f"field {name!r}: unknown kind {kind!r} (known: {', '.join(KINDS)})")
            if nkeys < 0 or i + 1 + nkeys > end:
                fail(i, f"field {name!r}: {nkeys} key lines announced, only {max(end - i - 1, 0)} lines follow "
                        f"before 'end'")
            if kind == "encoded" and size != nkeys + 1:
                fail(i, f"field {name!r}: an encoded field of {nkeys} keys has size {nkeys + 1}, not {size}")
            if kind == "identity" and (nkeys or size < 1):
                fail(i, f"field {name!r}: an identity field has no keys and a size >= 1")
            keys = None
            if kind == "encoded":
                raw = lines[i + 1:i + 1 + nkeys]
                if b"\\" in b"".join(raw):
                    raw = [unescape(k, f"{where}, line {i + 2 + k_i}") for k_i, k in enumerate(raw)]
                keys = _checked_keys(raw, name, i + 1, fail)
            fields.append(FieldVocab(name, kind, size, min_count, keys, parts[5] == b"bag"))
            i += 1 + nkeys
        if i != end:
            fail(i, f"expected 'end' after {nfields} fields, got {lines[i][:60].decode('utf-8', 'replace')!r}")
        try:
            return cls(fields, header[b"dense"], header[b"labels"], header[b"tasks"],
                       header[b"source"][0] if header[b"source"] else "")
        except ValueError as err:
            raise DataFormatError(f"{where}: {err}") from None


def _checked_keys(raw: list, name: str, first: int, fail) -> np.ndarray:
    """Keys as an ``S`` array; each a canonical token (no NUL except a digest), strictly increasing."""
    if not raw:
        return np.zeros(0, "S1")
    blob = b"".join(raw)
    if b"\x00" in blob or max(map(len, raw)) > MAX_TOKEN_BYTES or b"" in raw:
        for k_i, k in enumerate(raw):
            if not k:
                fail(first + k_i, f"field {name!r}: an empty key (the empty cell always gets the unseen code 0)")
            if (b"\x00" in k and not _DIGEST.match(k)) or len(k) > MAX_TOKEN_BYTES:
                fail(first + k_i, f"field {name!r}: key {k[:40]!r} is not a canonical token (at most "
                                  f"{MAX_TOKEN_BYTES} bytes, no NUL except a digest)")
    keys = np.array(raw, dtype=f"S{max(map(len, raw))}")
    bad = np.flatnonzero(keys[1:] <= keys[:-1])
    if len(bad):
        k_i = int(bad[0]) + 1
        fail(first + k_i, f"field {name!r}: keys must be strictly increasing (raw bytes order); "
                          f"{raw[k_i][:40]!r} follows {raw[k_i - 1][:40]!r}")
    return keys
