"""Ali-CCP in its raw Tianchi format: ``sample_skeleton_{train,test}.csv`` + ``common_features_{train,test}.csv``.

Layout (see docs/data.md and shared/data/ali-ccp/PROVENANCE.md §4)::

    sample_skeleton:  sample_id,click,conversion,common_feature_index,feature_num,feature_list
    common_features:  common_feature_index,feature_num,feature_list
    feature_list = feat \\x01 feat \\x01 ...;   feat = field \\x02 feature_id \\x03 value

Parsing is vectorized over chunks of whole lines (numpy on the raw bytes, no per-line Python); every line is
validated (separators in order, ``feature_num`` equal to the number of features, 0/1 labels, hex join key),
and a bad line raises :class:`DataFormatError` naming the file and line.

Two variants:

* ``aitm`` (the official AITM protocol): the 18 single-valued fields of ``AITM_FIELDS``; a field with several
  values in one row keeps the last one, as AITM's dict does; user fields come from common_features.
* ``full``: 17 single-valued fields in ``x`` plus the 6 multi-valued fields (210, 853 per impression;
  109_14, 110_14, 127_14, 150_14 per user context) kept whole as bags (CSR), never truncated.

Vocabulary (both variants): from the train file after the cascade policy, per field, ids seen at least
``min_count`` times get codes 1..n in the bytes order of their decimal text (the order of the common
:class:`~.vocab.Vocabulary`, whose keys are that text); rarer ids, unseen ids and missing fields get 0.
The default ``min_count=12`` is AITM's rule (its counter starts at 0 and keeps ids whose count is > 10).
User-side ids are counted once per impression (after the join), as AITM counts them.
"""
from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ._bytes import ChunkError, DataFormatError, iter_chunks, line_of, name_key, pack_names, parse_hex, parse_uint, \
    token_text
from .cache import VOCABULARY_ARRAY
from .vocab import FieldVocab, Vocabulary

AITM_FIELDS = ("101", "121", "122", "124", "125", "126", "127", "128", "129", "205", "206", "207", "216", "508",
               "509", "702", "853", "301")
# embedding rows per field in AITM.py (vocabulary + 1 for the id 0): the sizes every AITM-protocol paper uses
AITM_VOCAB_SIZES = {"101": 238635, "121": 98, "122": 14, "124": 3, "125": 8, "126": 4, "127": 4, "128": 3,
                    "129": 5, "205": 467298, "206": 6929, "207": 263942, "216": 106399, "508": 5888, "509": 104830,
                    "702": 51878, "853": 37148, "301": 4}
USER_FIELDS = ("101", "121", "122", "124", "125", "126", "127", "128", "129", "109_14", "110_14", "127_14", "150_14")
FULL_SINGLE_FIELDS = tuple(f for f in AITM_FIELDS if f != "853")  # 17
FULL_BAG_FIELDS = ("210", "853", "109_14", "110_14", "127_14", "150_14")  # 6, with the 17: 23 fields
ALL_FIELDS = FULL_SINGLE_FIELDS + FULL_BAG_FIELDS
ITEM_BAGS = ("210", "853")
USER_BAGS = ("109_14", "110_14", "127_14", "150_14")
VARIANTS = ("aitm", "full")

_SEPARATOR = np.zeros(256, dtype=bool)
_SEPARATOR[[1, 2, 3, 10, 13, 44]] = True
# allowed (previous separator, next separator) pairs inside a well-formed line sequence
_TRANSITION = np.zeros((256, 256), dtype=bool)
for _a, _bs in {44: (44, 2, 10, 13), 2: (3,), 3: (1, 10, 13), 1: (2,), 13: (10,), 10: (44,)}.items():
    for _b in _bs:
        _TRANSITION[_a, _b] = True
_TRANSITION_FLAT = _TRANSITION.ravel()
_SEP_NAMES = {1: "\\x01", 2: "\\x02", 3: "\\x03", 10: "end of line", 13: "\\r", 44: "','"}


def variant_fields(variant: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(single-valued fields, bag fields) of a variant."""
    if variant == "aitm":
        return AITM_FIELDS, ()
    if variant == "full":
        return FULL_SINGLE_FIELDS, FULL_BAG_FIELDS
    raise ValueError(f"unknown Ali-CCP variant {variant!r}; choose one of {VARIANTS}")


@dataclass
class _Chunk:
    rows: int
    key: np.ndarray  # uint64 [L]
    labels: Optional[np.ndarray]  # uint8 [L, 2] (skeleton only)
    single: np.ndarray  # int64 [L, S], -1 = missing
    bag_len: dict  # name -> int64 [L]
    bag_val: dict  # name -> int64 [nnz]
    features: int
    unknown: int
    multi: int  # (row, single field) pairs that had several values (the last one is kept)
    misplaced: int  # features of a bag field on the other side (skeleton vs common): not used


def _parse_chunk(buf: np.ndarray, ncommas: int, single: Sequence[str], bags: Sequence[str],
                 skeleton: bool, misplaced: Sequence[str] = ()) -> _Chunk:
    """Parse whole lines of one raw file (``ncommas`` = 5 for sample_skeleton, 2 for common_features)."""
    cand = np.flatnonzero(buf < 45)
    s = buf[cand]
    keep = _SEPARATOR[s]
    if not keep.all():
        cand, s = cand[keep], s[keep]
    if s[0] != 44:
        raise ChunkError(0, f"expected {ncommas} comma-separated header fields before the feature list")
    pair = (s[:-1].astype(np.uint16) << 8) | s[1:]
    ok = _TRANSITION_FLAT[pair]
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        a, b = int(s[i]), int(s[i + 1])
        raise ChunkError(cand[i + 1], f"malformed line: {_SEP_NAMES[b]} after {_SEP_NAMES[a]} "
                                      f"(expected field\\x02id\\x03value features separated by \\x01)")
    is_nl = s == 10
    nl_idx = np.flatnonzero(is_nl)
    rows = len(nl_idx)
    nl = cand[nl_idx]
    line_start_idx = np.empty(rows, dtype=np.int64)  # index into s of each line's first separator
    line_start_idx[0] = 0
    line_start_idx[1:] = nl_idx[:-1] + 1
    line_start = np.empty(rows, dtype=np.int64)
    line_start[0] = 0
    line_start[1:] = nl[:-1] + 1
    # exactly ncommas commas per line: the first ncommas separators are commas, the next one is not
    for j in range(ncommas + 1):
        idx = line_start_idx + j
        if j < ncommas:
            bad = (idx >= len(s)) | (s[np.minimum(idx, len(s) - 1)] != 44)
        else:
            bad = s[idx] == 44
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise ChunkError(line_start[r], f"expected {ncommas + 1} comma-separated columns")
    commas = cand[line_start_idx[:, None] + np.arange(ncommas)]  # [L, K]
    line_end = nl - (s[np.maximum(nl_idx - 1, 0)] == 13)  # strip \r
    # features: one \x02 each
    idx2 = np.flatnonzero(s == 2)
    fstart = cand[idx2 - 1] + 1
    f2 = cand[idx2]
    f3 = cand[idx2 + 1]
    counts = np.diff(np.searchsorted(idx2, nl_idx), prepend=0)  # features per line
    for lo, hi, what in ((fstart, f2, "field name"), (f2 + 1, f3, "feature id")):
        empty = hi <= lo
        if empty.any():
            i = int(np.flatnonzero(empty)[0])
            raise ChunkError(lo[i], f"empty {what} in the feature list")
    declared = parse_uint(buf, commas[:, ncommas - 2] + 1, commas[:, ncommas - 1], "feature_num")
    mismatch = declared != counts
    if mismatch.any():
        r = int(np.flatnonzero(mismatch)[0])
        raise ChunkError(line_start[r], f"feature_num says {declared[r]} but the line holds {counts[r]} features")
    key_col = 3 if skeleton else 0
    kstart = line_start if key_col == 0 else commas[:, key_col - 1] + 1
    key = parse_hex(buf, kstart, commas[:, key_col], "common_feature_index")
    labels = None
    if skeleton:
        labels = np.empty((rows, 2), dtype=np.uint8)
        for j, name in ((0, "click"), (1, "conversion")):
            lo, hi = commas[:, j] + 1, commas[:, j + 1]
            ch = buf[lo] - np.uint8(48)
            bad = (hi - lo != 1) | (ch > 1)
            if bad.any():
                r = int(np.flatnonzero(bad)[0])
                raise ChunkError(line_start[r], f"{name} label {token_text(buf, lo[r], hi[r])} is not 0 or 1")
            labels[:, j] = ch
    # which field each feature belongs to
    names = pack_names(buf, fstart, f2, width=6)
    wanted = list(single) + list(bags)
    table_keys = np.array([name_key(n) for n in ALL_FIELDS], dtype=np.uint64)
    order = np.argsort(table_keys)
    sorted_keys = table_keys[order]
    pos = np.minimum(np.searchsorted(sorted_keys, names), len(sorted_keys) - 1)
    known = sorted_keys[pos] == names
    field_of_all = np.where(known, order[pos], -1)  # index into ALL_FIELDS
    # map ALL_FIELDS index -> wanted index (single first, then bags), -1 if not wanted
    remap = np.full(len(ALL_FIELDS) + 1, -1, dtype=np.int64)
    for w, n in enumerate(wanted):
        remap[ALL_FIELDS.index(n)] = w
    field_of = remap[field_of_all]  # -1 maps through remap[-1] = -1
    line_of_feat = np.repeat(np.arange(rows), counts)
    sel = np.flatnonzero(field_of >= 0)
    ids = parse_uint(buf, f2[sel] + 1, f3[sel], "feature id")
    fsel = field_of[sel]
    lsel = line_of_feat[sel]
    S = len(single)
    out = np.full((rows, S), -1, dtype=np.int64)
    multi = 0
    is_single = fsel < S
    if is_single.any():
        flat = lsel[is_single] * S + fsel[is_single]
        vals = ids[is_single]
        hits = np.bincount(flat, minlength=rows * S)
        dup = hits > 1
        if dup.any():
            multi = int(dup.sum())
            # keep the last value of a field in a row, as AITM's dict does (numpy leaves the winner of a
            # repeated-index assignment unspecified, so the last position is found explicitly)
            where = np.arange(len(flat))
            last = np.full(rows * S, -1, dtype=np.int64)
            np.maximum.at(last, flat, where)
            winner = last[flat] == where
            out.reshape(-1)[flat[winner]] = vals[winner]
        else:
            out.reshape(-1)[flat] = vals
    bag_len, bag_val = {}, {}
    for b, name in enumerate(bags):
        m = fsel == S + b
        bag_val[name] = _downcast(ids[m])
        bag_len[name] = np.bincount(lsel[m], minlength=rows)
    misplaced_count = 0
    if misplaced:
        flags = np.zeros(len(ALL_FIELDS) + 1, dtype=bool)
        flags[[ALL_FIELDS.index(n) for n in misplaced]] = True
        misplaced_count = int(flags[field_of_all].sum())
    return _Chunk(rows=rows, key=key, labels=labels, single=_downcast(out), bag_len=bag_len, bag_val=bag_val,
                  features=int(len(idx2)), unknown=int((~known).sum()), multi=multi, misplaced=misplaced_count)


@dataclass
class RawTable:
    """One parsed raw file: per-line arrays, raw (not yet encoded) ids, -1 for a missing field."""

    path: Path
    rows: int
    key: np.ndarray
    labels: Optional[np.ndarray]
    single: np.ndarray  # [rows, S] int64
    bag_offsets: dict  # name -> int64 [rows + 1]
    bag_values: dict  # name -> int64 [nnz]
    stats: dict = field(default_factory=dict)


def _downcast(a: np.ndarray) -> np.ndarray:
    if a.size and a.max(initial=0) < 2 ** 31 - 1:
        return a.astype(np.int32)
    return a


def read_raw_file(path: Path, kind: str, single: Sequence[str], bags: Sequence[str], chunk_bytes: int = 2 << 20,
                  threads: int = 1, misplaced: Sequence[str] = (), hasher=None) -> RawTable:
    """Parse a whole sample_skeleton (``kind="skeleton"``) or common_features (``kind="common"``) file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Ali-CCP raw file not found: {path}")
    skeleton = kind == "skeleton"
    ncommas = 5 if skeleton else 2
    started = time.perf_counter()
    parts: list[_Chunk] = []
    bases: list[int] = []

    def collect(item):
        base, future = item
        try:
            parts.append(future.result())
        except ChunkError as err:
            raise line_of(path, base, err) from None
        bases.append(base)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending: deque = deque()
        for base, buf in iter_chunks(path, chunk_bytes, hasher):
            pending.append((base, pool.submit(_parse_chunk, buf, ncommas, single, bags, skeleton, misplaced)))
            while len(pending) > max(1, threads):
                collect(pending.popleft())
        while pending:
            collect(pending.popleft())
    if not parts:
        raise DataFormatError(f"{path}: the file is empty")
    rows = sum(p.rows for p in parts)
    key = np.concatenate([p.key for p in parts])
    labels = np.concatenate([p.labels for p in parts]) if skeleton else None
    single_arr = np.concatenate([p.single for p in parts]) if single else np.zeros((rows, 0), np.int64)
    single_arr = _downcast(single_arr)
    bag_offsets, bag_values = {}, {}
    for name in bags:
        lengths = np.concatenate([p.bag_len[name] for p in parts])
        off = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(lengths, out=off[1:])
        bag_offsets[name] = off
        bag_values[name] = _downcast(np.concatenate([p.bag_val[name] for p in parts]))
        del lengths
    stats = {"rows": rows, "features": sum(p.features for p in parts),
             "unknown_field_features": sum(p.unknown for p in parts),
             "multi_valued_single_fields": sum(p.multi for p in parts),
             "misplaced_features": sum(p.misplaced for p in parts),
             "bytes": path.stat().st_size, "seconds": time.perf_counter() - started}
    return RawTable(path=path, rows=rows, key=key, labels=labels, single=single_arr, bag_offsets=bag_offsets,
                    bag_values=bag_values, stats=stats)


def write_synthetic_raw(directory: Path, split: str = "train", num_rows: int = 10_000, num_common: Optional[int] = None,
                        seed: int = 0, violations: int = 0) -> tuple[Path, Path]:
    """Write a raw-format pair ``sample_skeleton_{split}.csv`` + ``common_features_{split}.csv`` of realistic shape.

    For benchmarks and tests of scale: skeleton rows carry 8-20 features (205/206/207/216/301 single, 1-8 values
    of 210, 0-3 of 853, 508/509/702 half the time), common rows 300-900 (the 9 user fields, 126 missing in a fifth
    of them, and 40-300 values each of 109_14/110_14/127_14/150_14), about 58 impressions per common row as in
    the real train file (42.3 M / 730 k). Ids are Zipf-like; labels: CTR ~4 %, CVR|click ~5 % (dense enough to
    count), plus ``violations`` rows with click=0 and conversion=1.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    num_common = num_common or max(1, num_rows // 58)

    def zipf_ids(n, vocab, base):
        return base + (rng.zipf(1.3, n) - 1) % vocab

    keys = [f"{v:016x}" for v in rng.integers(0, 2 ** 63, num_common, dtype=np.int64)]
    common_path = directory / f"common_features_{split}.csv"
    tmp = common_path.with_name(common_path.name + ".part")
    user_single = {"101": 300_000, "121": 97, "122": 13, "124": 2, "125": 7, "126": 3, "127": 3, "128": 2, "129": 4}
    bag_sizes = {"109_14": (40, 200), "110_14": (60, 300), "127_14": (40, 250), "150_14": (40, 200)}
    base_of = {name: 1_000_000 * (i + 1) for i, name in enumerate(ALL_FIELDS)}
    with open(tmp, "w", newline="\n") as f:
        for c in range(num_common):
            feats = []
            for name, vocab in user_single.items():
                if name == "126" and rng.random() < 0.2:
                    continue
                feats.append(f"{name}\x02{int(zipf_ids(1, vocab, base_of[name])[0])}\x031.0")
            for name, (lo, hi) in bag_sizes.items():
                n = int(rng.integers(lo, hi))
                ids = zipf_ids(n, 50_000, base_of[name])
                vals = np.round(rng.random(n) * 5, 5)
                feats.extend(f"{name}\x02{i}\x03{v}" for i, v in zip(ids.tolist(), vals.tolist()))
            f.write(f"{keys[c]},{len(feats)},{chr(1).join(feats)}\n")
    tmp.replace(common_path)

    skeleton_path = directory / f"sample_skeleton_{split}.csv"
    tmp = skeleton_path.with_name(skeleton_path.name + ".part")
    owner = np.sort(rng.integers(0, num_common, num_rows))  # impressions of one user context are adjacent
    click = rng.random(num_rows) < 0.04
    conv = click & (rng.random(num_rows) < 0.05)
    bad = rng.choice(num_rows, size=min(violations, num_rows), replace=False)
    click[bad], conv[bad] = False, True
    single_vocab = {"205": 4_000_000, "206": 9_000, "207": 600_000, "216": 200_000, "301": 3}
    draws = {name: zipf_ids(num_rows, vocab, base_of[name]).tolist() for name, vocab in single_vocab.items()}
    n210 = rng.integers(1, 9, num_rows).tolist()
    n853 = rng.integers(0, 4, num_rows).tolist()
    has = (rng.random((num_rows, 3)) < 0.5).tolist()
    with open(tmp, "w", newline="\n") as f:
        lines = []
        for r in range(num_rows):
            feats = [f"210\x02{i}\x031.0" for i in zipf_ids(n210[r], 100_000, base_of["210"]).tolist()]
            feats += [f"{name}\x02{draws[name][r]}\x031.0" for name in ("216", "301", "205", "206", "207")]
            for j, name in enumerate(("508", "509", "702")):
                if has[r][j]:
                    feats.append(f"{name}\x02{base_of[name] + (draws['206'][r] % 7000)}\x030.69315")
            feats += [f"853\x02{i}\x031.09861" for i in zipf_ids(n853[r], 40_000, base_of["853"]).tolist()]
            lines.append(f"{r + 1},{int(click[r])},{int(conv[r])},{keys[owner[r]]},{len(feats)},"
                         f"{chr(1).join(feats)}\n")
            if len(lines) >= 20_000:
                f.write("".join(lines))
                lines.clear()
        f.write("".join(lines))
    tmp.replace(skeleton_path)
    return skeleton_path, common_path


# ---------------------------------------------------------------------------------------------------------------
# join, vocabulary, encoding, split
# ---------------------------------------------------------------------------------------------------------------
_DENSE_LIMIT = 1 << 28  # raw ids below this are counted with bincount (a dense table), above with np.unique


class RawIds:
    """Codes 1..n for the raw ids of one field seen at least ``min_count`` times, else 0; code i + 1 goes to
    the i-th kept id in the bytes order of the decimal text, so :meth:`field` (keys = that text) encodes
    the text of an id exactly as this encodes the integer.

    Counting uses a dense table over [smallest id, largest id] when that range is not much larger than the
    number of values (one bincount, O(n)); otherwise a sort (np.unique).
    """

    def __init__(self, values: np.ndarray, min_count: int, weights: Optional[np.ndarray] = None,
                 row_weights: Optional[tuple[np.ndarray, np.ndarray]] = None):
        """``weights``: one per value; or ``row_weights=(offsets, weight per row)`` for CSR values, expanded
        block by block (the user-history bags hold hundreds of millions of values at full scale)."""
        self.dense: Optional[np.ndarray] = None
        self.keys: Optional[np.ndarray] = None  # kept ids, increasing (when no dense table)
        self.codes: Optional[np.ndarray] = None  # code of each of keys
        self.text = np.zeros(0, "S1")  # the kept ids' decimal text in bytes order (the common vocabulary's keys)
        self.min_count = min_count
        self.base = 0
        present = values >= 0
        if not present.all():
            if row_weights is not None:  # expand the row weights before dropping values
                weights, row_weights = np.repeat(row_weights[1], np.diff(row_weights[0])), None
            values = values[present]
            weights = None if weights is None else weights[present]
        if len(values) == 0:
            self.size = 1
            self.keys = np.zeros(0, dtype=np.int64)
            self.codes = np.zeros(0, dtype=np.int32)
            return
        low, top = int(values.min()), int(values.max())
        span = top - low + 1
        if span < _DENSE_LIMIT and span < 16 * len(values) + (1 << 22):  # a dense table pays off
            self.base = low
            if row_weights is not None:
                offsets, per_row = row_weights
                counts = np.zeros(span, dtype=np.float64)
                block = 1 << 16  # rows per block: never one weight per value for the whole table
                for lo in range(0, len(per_row), block):
                    hi = min(lo + block, len(per_row))
                    a, b = int(offsets[lo]), int(offsets[hi])
                    w = np.repeat(per_row[lo:hi], np.diff(offsets[lo:hi + 1]))
                    counts += np.bincount(values[a:b] - low, weights=w, minlength=span)
            else:
                counts = np.bincount(values - low if low else values, weights=weights, minlength=span)
            kept = np.flatnonzero(counts >= min_count - 1e-9)
            del counts
            self.size = len(kept) + 1
            self.dense = np.zeros(span, dtype=np.int32)
            self.dense[kept] = self._text_order(kept + low)
        else:
            if row_weights is not None:
                weights = np.repeat(row_weights[1], np.diff(row_weights[0]))
            uniq, inverse = np.unique(values, return_inverse=True)
            counts = np.bincount(inverse.reshape(-1), weights=weights, minlength=len(uniq))
            self.keys = uniq[counts >= min_count - 1e-9]
            self.size = len(self.keys) + 1
            self.codes = self._text_order(self.keys)

    def _text_order(self, ids: np.ndarray) -> np.ndarray:
        """Codes (int32) of increasing ids: 1 + the rank of their decimal text in bytes order."""
        text = np.asarray(ids, dtype=np.int64).astype("S20")
        order = np.argsort(text, kind="stable")
        self.text = text[order]
        codes = np.empty(len(ids), dtype=np.int32)
        codes[order] = np.arange(1, len(ids) + 1, dtype=np.int32)
        return codes

    def field(self, name: str, bag: bool) -> FieldVocab:
        """The common vocabulary's field: keys = the kept ids' decimal text."""
        return FieldVocab(name, "encoded", self.size, self.min_count, self.text, bag=bag)

    @classmethod
    def from_field(cls, f: FieldVocab) -> "RawIds":
        """The encoder of a model's field, whose keys must be decimal ids (a field trained on aliccp-raw)."""
        out = cls(np.zeros(0, dtype=np.int64), f.min_count)
        keys = f.keys if f.keys is not None else np.zeros(0, "S1")
        if f.kind != "encoded" or (len(keys) and not np.char.isdigit(keys).all()):
            raise DataFormatError(f"the model's field {f.name!r} ({f.kind}) does not hold raw Ali-CCP ids")
        ids = keys.astype(np.int64) if len(keys) else np.zeros(0, np.int64)
        order = np.argsort(ids, kind="stable")
        out.keys, out.codes, out.text, out.size = ids[order], (order + 1).astype(np.int32), keys, f.size
        return out

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """int32 codes of raw ids (-1 = missing, ids not in the vocabulary: 0)."""
        raw = np.asarray(raw)
        if self.dense is not None:
            shifted = raw - self.base if self.base else raw
            inside = (raw >= 0) & (shifted >= 0) & (shifted < len(self.dense))
            return np.where(inside, self.dense[np.where(inside, shifted, 0)], 0).astype(np.int32)
        if not len(self.keys):
            return np.zeros(raw.shape, dtype=np.int32)
        pos_c = np.minimum(np.searchsorted(self.keys, raw), len(self.keys) - 1)
        hit = (raw >= 0) & (self.keys[pos_c] == raw)
        return np.where(hit, self.codes[pos_c], 0).astype(np.int32)


def _join(skeleton: RawTable, common: RawTable) -> np.ndarray:
    """Row of common_features for every skeleton line (int32); errors name the line of a missing or repeated key."""
    order = np.argsort(common.key, kind="stable")
    keys = common.key[order]
    if len(keys) > 1:
        dup = np.flatnonzero(keys[1:] == keys[:-1])
        if len(dup):
            rows = np.sort(order[dup[0]:dup[0] + 2])
            raise DataFormatError(f"{common.path}, lines {rows[0] + 1} and {rows[1] + 1}: the common_feature_index "
                                  f"{int(keys[dup[0]]):016x} appears twice")
    pos = np.minimum(np.searchsorted(keys, skeleton.key), max(len(keys) - 1, 0))
    found = keys[pos] == skeleton.key if len(keys) else np.zeros(len(skeleton.key), dtype=bool)
    if not found.all():
        bad = np.flatnonzero(~found)
        raise DataFormatError(f"{skeleton.path}, line {bad[0] + 1}: common_feature_index "
                              f"{int(skeleton.key[bad[0]]):016x} is not in {common.path.name} "
                              f"({len(bad)} line(s) in all)")
    return order[pos].astype(np.int32)


def _read_pair(directory: Path, split: str, variant: str, threads: int, chunk_bytes: int, hasher, log):
    single, bags = variant_fields(variant)
    item_single = tuple(f for f in single if f not in USER_FIELDS)
    user_single = tuple(f for f in single if f in USER_FIELDS)
    item_bags = tuple(b for b in bags if b not in USER_FIELDS)
    user_bags = tuple(b for b in bags if b in USER_FIELDS)
    skeleton_path = directory / f"sample_skeleton_{split}.csv"
    common_path = directory / f"common_features_{split}.csv"
    for p in (skeleton_path, common_path):
        if not p.is_file():
            raise FileNotFoundError(f"Ali-CCP raw directory {directory} lacks {p.name} "
                                    f"(expected sample_skeleton_{{train,test}}.csv and common_features_{{train,test}}.csv)")
    used = set(single) | set(bags)
    common = read_raw_file(common_path, "common", user_single, user_bags, chunk_bytes, threads,
                           misplaced=tuple(f for f in used if f not in USER_FIELDS), hasher=hasher)
    log(f"{common_path.name}: {common.rows:,} rows in {common.stats['seconds']:.1f} s")
    skeleton = read_raw_file(skeleton_path, "skeleton", item_single, item_bags, chunk_bytes, threads,
                             misplaced=tuple(f for f in used if f in USER_FIELDS), hasher=hasher)
    log(f"{skeleton_path.name}: {skeleton.rows:,} rows in {skeleton.stats['seconds']:.1f} s "
        f"({skeleton.rows / max(skeleton.stats['seconds'], 1e-9):,.0f} rows/s)")
    join = _join(skeleton, common)
    return skeleton, common, join, item_single, user_single, item_bags, user_bags


def load_raw_arrays(directory: Path, variant: str = "aitm", min_count: int = 12, policy: str = "drop",
                    valid_fraction: float = 0.1, seed: int = 0, threads: int = 1, chunk_bytes: int = 2 << 20,
                    hasher=None, log=lambda msg: None, vocabulary: Optional[Vocabulary] = None
                    ) -> tuple[dict, dict]:
    """Parse, join, encode and split a raw Ali-CCP directory; returns (arrays, info) for :mod:`.cache`.

    arrays: ``{train,valid,test}.x`` int32 [N, F], ``.y`` float32 [N, 2]; for the ``full`` variant also the bag
    tables ``table.{item,user}.{train,test}.{field}.{offsets,values}`` and per split ``{split}.bag.{group}``
    (owner row of each sample). info: field names and sizes, bag groups, statistics. ``arrays["vocabulary"]``:
    the common :class:`~.vocab.Vocabulary` (keys = decimal text of the raw ids). With a model's
    ``vocabulary`` the ids are encoded with it instead of one counted on the train file.
    """
    from .cascade import apply_policy, check_policy

    check_policy(policy)
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must lie in [0, 1), got {valid_fraction}")
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"Ali-CCP raw directory not found: {directory}")
    started = time.perf_counter()
    single, bags = variant_fields(variant)
    task_names = ("click", "conversion")
    stats: dict = {"variant": variant, "min_count": min_count, "policy": policy}
    arrays: dict = {}
    vocab: dict = {}
    if vocabulary is not None:
        if vocabulary.field_names != tuple(single) + tuple(bags) or \
                tuple(f.name for f in vocabulary.bag_fields) != tuple(bags):
            raise DataFormatError(f"the model's fields {list(vocabulary.field_names)} (source "
                                  f"{vocabulary.source!r}) are not the {variant!r} variant's {list(single)} + "
                                  f"bags {list(bags)}")
        vocab = {f.name: RawIds.from_field(f) for f in vocabulary.fields}
    raw_rows = 0
    for split in ("train", "test"):
        t0 = time.perf_counter()
        sk, cm, join, item_single, user_single, item_bags, user_bags = _read_pair(
            directory, split, variant, threads, chunk_bytes, hasher, log)
        raw_rows += sk.rows
        fstats = {"raw_rows": sk.rows, "common_rows": cm.rows,
                  "skeleton_features": sk.stats["features"], "common_features": cm.stats["features"],
                  "unknown_field_features": sk.stats["unknown_field_features"] + cm.stats["unknown_field_features"],
                  "misplaced_features": sk.stats["misplaced_features"] + cm.stats["misplaced_features"],
                  "multi_valued_single_fields": sk.stats["multi_valued_single_fields"]
                  + cm.stats["multi_valued_single_fields"]}
        y = sk.labels.astype(np.float32)
        keep = apply_policy(y, policy, task_names, str(sk.path), fstats, where=lambda r: f"line {r + 1}")
        rows = np.arange(sk.rows, dtype=np.int64) if keep is None else np.flatnonzero(keep)
        kept_join = join[rows]
        if split == "train" and vocabulary is None:  # from the train file after the cascade policy
            usage = np.bincount(kept_join, minlength=cm.rows).astype(np.float64)
            for j, name in enumerate(item_single):
                vocab[name] = RawIds(sk.single[rows, j], min_count)
            for j, name in enumerate(user_single):
                vocab[name] = RawIds(cm.single[:, j], min_count, weights=usage)
            for name in item_bags:
                lengths = np.diff(sk.bag_offsets[name])
                mask = np.repeat(keep if keep is not None else np.ones(sk.rows, bool), lengths)
                vocab[name] = RawIds(sk.bag_values[name][mask], min_count)
            for name in user_bags:
                vocab[name] = RawIds(cm.bag_values[name], min_count, row_weights=(cm.bag_offsets[name], usage))
        for name in item_bags:  # encode, then let the raw ids go at once (they are the bulk at full scale)
            arrays[f"table.item.{split}.{name}.offsets"] = sk.bag_offsets[name]
            arrays[f"table.item.{split}.{name}.values"] = vocab[name].encode(sk.bag_values.pop(name))
        for name in user_bags:
            arrays[f"table.user.{split}.{name}.offsets"] = cm.bag_offsets[name]
            arrays[f"table.user.{split}.{name}.values"] = vocab[name].encode(cm.bag_values.pop(name))
        del kept_join
        if split == "train" and valid_fraction > 0:  # exact count, seeded; each part is built directly
            n_valid = int(round(len(rows) * valid_fraction))
            is_valid = np.zeros(len(rows), dtype=bool)
            is_valid[np.random.default_rng(seed).permutation(len(rows))[:n_valid]] = True
            parts = {"train": rows[~is_valid], "valid": rows[is_valid]}
            del is_valid
        else:
            parts = {split: rows}
        del rows
        user_codes = {name: vocab[name].encode(cm.single[:, user_single.index(name)]) for name in user_single}
        for part, part_rows in parts.items():
            x = np.empty((len(part_rows), len(single)), dtype=np.int32)
            part_join = join[part_rows]
            for j, name in enumerate(single):
                if name in USER_FIELDS:
                    x[:, j] = user_codes[name][part_join]
                else:
                    x[:, j] = vocab[name].encode(sk.single[part_rows, item_single.index(name)])
            arrays[f"{part}.x"] = x
            arrays[f"{part}.y"] = y[part_rows]
            if bags:
                arrays[f"{part}.bag.item"] = part_rows
                arrays[f"{part}.bag.user"] = part_join.astype(np.int64)
            del x, part_join
        del sk, cm, join, y, parts
        fstats["seconds"] = time.perf_counter() - t0
        stats[split + "_file"] = fstats
    stats["raw_rows"] = raw_rows
    stats["seconds"] = time.perf_counter() - started
    common = Vocabulary([vocab[n].field(n, False) for n in single] + [vocab[n].field(n, True) for n in bags],
                        label_names=("click", "conversion"), task_names=task_names, source="aliccp-raw")
    arrays[VOCABULARY_ARRAY] = np.frombuffer(common.to_bytes(), dtype=np.uint8)
    info = {
        "source": "aliccp-raw", "field_names": list(single), "field_dims": [vocab[n].size for n in single],
        "task_names": list(task_names), "stats": stats,
        "bag_groups": ([{"name": "item", "fields": list(ITEM_BAGS), "dims": [vocab[n].size for n in ITEM_BAGS]},
                        {"name": "user", "fields": list(USER_BAGS), "dims": [vocab[n].size for n in USER_BAGS]}]
                       if bags else []),
        "split_file": {"train": "train", "valid": "train", "test": "test"},
    }
    return arrays, info
