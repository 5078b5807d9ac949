"""One spec string per data source: ``load(spec, ...)`` returns :class:`Splits` ready for the batcher.

    synthetic[:PRESET]      demo (default), demo3, aliccp, industrial, funnel  (generated, never cached)
    aliccp-raw:DIR          sample_skeleton_{train,test}.csv + common_features_{train,test}.csv
    aitm-csv:DIR            AITM's ctr_cvr.{train,dev,test} or PaddleRec's train.csv + test.csv
    rechub-csv:DIR          torch-rechub's ali_ccp_{train,val,test}*.csv (23 sparse fields + the dense D* columns)
    csv:PATH                a CSV or Parquet file (split by seed) or a directory of train/valid/test files

Options go after ``?`` as ``key=value`` pairs joined by ``&`` (``synthetic:aliccp?scale=0.1&samples=1000000``,
``csv:data.parquet?labels=click,buy&features=user,item&dense=price,age``) or as keyword arguments of
:func:`load`; the same option given twice (in the spec, or in the spec and as an argument) must agree.
``features`` and ``dense`` take comma lists and shell-style globs (``features=cat_*&dense=num_*``);
rechub-csv reads its ``D*`` columns unless ``dense=none`` (or names a subset). File
sources are preprocessed once into an atomic cache (see :mod:`.cache`); ``cache_dir=None`` turns that off.
"""
from __future__ import annotations

import hashlib
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import parse_qsl

import numpy as np
import torch

from . import aliccp, cache, tables
from ._bytes import DataFormatError
from .core import BagTable, CascadeData, Splits
from .synthetic import PRESETS, generate, preset_config, train_test_split
from .vocab import FieldVocab, Vocabulary

KINDS = ("synthetic", "aliccp-raw", "aitm-csv", "rechub-csv", "csv")


def _bool(text) -> bool:
    if isinstance(text, bool):
        return text
    low = str(text).lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean, got {text!r}")


def _names(text) -> list[str]:
    if isinstance(text, (list, tuple)):
        return [str(t) for t in text]
    return [t.strip() for t in str(text).split(",") if t.strip()]


_TYPES: dict[str, Callable[[Any], Any]] = {
    "samples": int, "seed": int, "scale": float, "valid_fraction": float, "test_fraction": float,
    "min_count": int, "variant": str, "policy": str, "labels": _names, "features": _names, "dense": _names,
    "extra": str, "encode": _bool, "dims": str, "header": str, "threads": int, "task_names": _names, "cache": str,
}
_ALLOWED = {
    "synthetic": {"samples", "seed", "scale", "valid_fraction", "test_fraction"},
    "aliccp-raw": {"variant", "min_count", "policy", "valid_fraction", "seed", "threads", "cache"},
    "aitm-csv": {"policy", "valid_fraction", "seed", "dims", "cache"},
    "rechub-csv": {"policy", "dense", "cache"},
    "csv": {"labels", "features", "dense", "extra", "encode", "min_count", "policy", "valid_fraction",
            "test_fraction", "seed", "header", "task_names", "cache"},
}


def accepts(kind: str, option: str) -> bool:
    """Whether the source kind takes ``option`` (e.g. rechub-csv has fixed splits: no seed)."""
    return option in _ALLOWED[kind]


def check_options(opts: dict, spec: str) -> None:
    """Value checks that need no data: fractions, counts, the cascade policy, encode and header choices."""
    vf, tf = opts.get("valid_fraction"), opts.get("test_fraction")
    if vf is not None and not 0 <= vf < 1:
        raise ValueError(f"valid_fraction must be in [0, 1), got {vf} (data spec {spec!r})")
    if tf is not None and not 0 < tf < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {tf} (data spec {spec!r}): a run needs test rows")
    if vf is not None and tf is not None and vf + tf >= 1:
        raise ValueError(f"valid_fraction {vf} + test_fraction {tf} leave no training rows (data spec {spec!r})")
    for key, low in (("samples", 1), ("min_count", 1), ("threads", 1)):
        if key in opts and opts[key] < low:
            raise ValueError(f"{key} must be >= {low}, got {opts[key]} (data spec {spec!r})")
    if "scale" in opts and not opts["scale"] > 0:
        raise ValueError(f"scale must be > 0, got {opts['scale']} (data spec {spec!r})")
    if "policy" in opts:
        from .cascade import check_policy
        check_policy(opts["policy"])
    for key, choices in (("header", ("auto", "yes", "no")), ("extra", ("ignore", "error")),
                         ("variant", ("aitm", "full")), ("dims", ("aitm", "data"))):
        if key in opts and opts[key] not in choices:
            raise ValueError(f"{key} must be {' or '.join(map(repr, choices))}, got {opts[key]!r} "
                             f"(data spec {spec!r})")
    for key in ("labels", "features", "dense"):
        if key in opts and not opts[key]:
            raise ValueError(f"{key}= names no column (data spec {spec!r})")


def parse_spec(spec: str) -> tuple[str, str, dict]:
    """(kind, argument, options) of a spec string; ValueError naming the problem for a bad one."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"unknown data spec {spec!r}: expected one of {', '.join(k + ':...' for k in KINDS)}")
    spec = spec.strip()
    kind, _, rest = spec.partition(":")
    if kind not in KINDS:
        raise ValueError(f"unknown data spec {spec!r}: the kind {kind!r} is not one of {', '.join(KINDS)}")
    arg, _, query = rest.partition("?")
    options: dict = {}
    if query:
        try:
            pairs = parse_qsl(query, keep_blank_values=False, strict_parsing=True)
        except ValueError:
            raise ValueError(f"bad options {query!r} in data spec {spec!r}: expected key=value&key=value") from None
        for key, value in pairs:
            if key not in _TYPES:
                raise ValueError(f"unknown option {key!r} in data spec {spec!r}; known: {sorted(_ALLOWED[kind])}")
            try:
                value = _TYPES[key](value)
            except ValueError as err:
                raise ValueError(f"bad value for {key!r} in data spec {spec!r}: {err}") from None
            if key in options and options[key] != value:  # e.g. ?labels= in the spec and --labels disagree
                raise ValueError(f"option {key!r} is given twice with different values in data spec {spec!r}: "
                                 f"{options[key]!r} and {value!r}")
            options[key] = value
    if kind == "synthetic":
        arg = arg or "demo"
        if arg not in PRESETS:
            raise ValueError(f"unknown data spec {spec!r}: synthetic presets are {', '.join(sorted(PRESETS))}")
    elif not arg:
        raise ValueError(f"data spec {spec!r} needs a path: {kind}:PATH")
    return kind, arg, options


def _merge(kind: str, spec: str, from_spec: dict, given: dict) -> dict:
    out = dict(from_spec)
    for key, value in given.items():
        if value is None:
            continue
        value = _TYPES[key](value) if key in _TYPES else value
        if key in out and out[key] != value:
            raise ValueError(f"option {key!r} is {out[key]!r} in the data spec {spec!r} but {value!r} as an argument")
        out[key] = value
    unknown = set(out) - _ALLOWED[kind]
    if unknown:
        raise ValueError(f"option(s) {sorted(unknown)} do not apply to {kind}; it takes {sorted(_ALLOWED[kind])}")
    check_options(out, spec)
    return out


def _report(stats: dict, splits: dict) -> None:
    """Fill stats['dropped'] / ['altered'] for loaders that count per file (the table loader counts per split)."""
    if "dropped" in stats:
        return
    from .tables import CASCADE_DROP, CASCADE_KEEP
    dropped, kept = {}, {}
    for name in ("train", "valid", "test"):
        fstats = stats.get(f"{name}_file")
        if fstats is None:
            continue
        # a train file that also feeds the validation split drops before the validation draw
        key = "train+valid" if name == "train" and splits.get("valid") is not None and "valid_file" not in stats \
            else name
        dropped[key] = {CASCADE_DROP: int(fstats.get("cascade_dropped", 0))}
        if stats.get("policy") == "keep" and fstats.get("cascade_violations"):
            kept[key] = {CASCADE_KEEP: int(fstats["cascade_violations"])}
    stats["dropped"] = dropped
    if kept:
        stats["kept"] = kept
    stats.setdefault("altered", {})
    stats.setdefault("warnings", [])


def _to_splits(arrays: dict, info: dict, meta: dict) -> Splits:
    field_dims = tuple(int(d) for d in info["field_dims"])
    task_names = tuple(info["task_names"])
    out = {}
    for split in ("train", "valid", "test"):
        if f"{split}.x" not in arrays:
            out[split] = None
            continue
        bags = []
        for group in info.get("bag_groups", []):
            file = info["split_file"][split]
            offsets = tuple(torch.from_numpy(np.asarray(arrays[f"table.{group['name']}.{file}.{f}.offsets"]))
                            for f in group["fields"])
            values = tuple(torch.from_numpy(np.asarray(arrays[f"table.{group['name']}.{file}.{f}.values"]))
                           for f in group["fields"])
            bags.append(BagTable(names=tuple(group["fields"]), dims=tuple(group["dims"]), offsets=offsets,
                                 values=values, index=torch.from_numpy(np.asarray(arrays[f"{split}.bag.{group['name']}"]))))
        dense = arrays.get(f"{split}.dense")
        out[split] = CascadeData(x=torch.from_numpy(np.asarray(arrays[f"{split}.x"])),
                                 y=torch.from_numpy(np.asarray(arrays[f"{split}.y"])),
                                 field_dims=field_dims, task_names=task_names,
                                 meta=dict(meta, split=split, field_names=list(info["field_names"])),
                                 bags=tuple(bags),
                                 dense=None if dense is None else torch.from_numpy(np.asarray(dense)),
                                 dense_names=tuple(info.get("dense_names", ())) if dense is not None else ())
    if out["test"] is None:
        raise ValueError("the source produced no test split")
    for split in ("train", "test"):
        if out[split] is None or len(out[split]) == 0:
            raise DataFormatError(f"the {split} split of {meta.get('spec')} is empty: nothing to "
                                  f"{'train on' if split == 'train' else 'evaluate'}")
    stats = info.get("stats", {})
    _report(stats, out)
    vocabulary = Vocabulary.from_bytes(np.asarray(arrays[cache.VOCABULARY_ARRAY]).tobytes(),
                                       where=f"the vocabulary of {meta.get('cache') or meta.get('spec')}")
    if vocabulary.field_dims != field_dims + tuple(d for g in info.get("bag_groups", []) for d in g["dims"]):
        raise DataFormatError(f"{meta.get('spec')}: the vocabulary's field sizes {vocabulary.field_dims} disagree "
                              f"with the data's {field_dims}")
    return Splits(train=out["train"], valid=out["valid"], test=out["test"], field_dims=field_dims,
                  task_names=task_names, stats=stats, vocabulary=vocabulary)


def _sha256_files(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        with open(p, "rb") as f:
            while True:
                block = f.read(16 << 20)
                if not block:
                    break
                h.update(block)
    return h.hexdigest()


def _load_synthetic(preset: str, opts: dict, spec: str) -> Splits:
    samples = opts.get("samples", 300_000)
    seed = opts.get("seed", 0)
    valid_fraction = opts.get("valid_fraction", 0.1)
    test_fraction = opts.get("test_fraction", 0.2)
    check_options({"valid_fraction": valid_fraction, "test_fraction": test_fraction}, spec)
    config = preset_config(preset, opts.get("scale"))
    data = generate(samples, config, seed)
    data.meta["field_names"] = [f"f{i}" for i in range(len(config.field_dims))]
    train, test = train_test_split(data, test_fraction, seed)
    valid = None
    if valid_fraction > 0:
        train, valid = train_test_split(train, valid_fraction / (1 - test_fraction), seed + 1)
    stats = {"source": spec, "samples": samples, "seed": seed, "train_rows": len(train),
             "valid_rows": 0 if valid is None else len(valid), "test_rows": len(test),
             "rates": data.rates(), "oracle_auc": data.oracle_auc(), "cascade_dropped": 0,
             "dropped": {}, "altered": {}, "warnings": []}  # generated rows obey the cascade: none dropped
    vocabulary = Vocabulary([FieldVocab(n, "identity", d) for n, d in zip(data.meta["field_names"], config.field_dims)],
                            label_names=config.task_names, task_names=config.task_names, source="synthetic")
    return Splits(train=train, valid=valid, test=test, field_dims=tuple(config.field_dims),
                  task_names=tuple(config.task_names), stats=stats, vocabulary=vocabulary)


def _sources(kind: str, arg: str, opts: dict) -> list[Path]:
    if kind == "aliccp-raw":
        d = Path(arg)
        if not d.is_dir():
            raise FileNotFoundError(f"Ali-CCP raw directory not found: {d}")
        paths = [d / f"{a}_{s}.csv" for s in ("train", "test") for a in ("sample_skeleton", "common_features")]
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"{d}: missing {p.name} (an Ali-CCP raw directory holds "
                                        f"sample_skeleton_{{train,test}}.csv and common_features_{{train,test}}.csv)")
        return paths
    if kind == "aitm-csv":
        return list(tables.aitm_files(Path(arg)).values())
    if kind == "rechub-csv":
        return list(tables.rechub_files(Path(arg)).values())
    return list(tables._table_files(Path(arg)).values())


def load(spec: str = "synthetic:demo", *, samples: Optional[int] = None, seed: Optional[int] = None,
         policy: Optional[str] = None, valid_fraction: Optional[float] = None, test_fraction: Optional[float] = None,
         scale: Optional[float] = None, min_count: Optional[int] = None, variant: Optional[str] = None,
         labels=None, features=None, dense=None, extra: Optional[str] = None, encode: Optional[bool] = None,
         dims: Optional[str] = None, header: Optional[str] = None, task_names=None, threads: Optional[int] = None,
         cache_dir: Optional[str | Path] = "auto", mmap: bool = True, log: Optional[Callable[[str], None]] = None,
         vocabulary: Optional[Vocabulary] = None, parsed: Optional[tuple[str, str, dict]] = None) -> Splits:
    """Load the source named by ``spec`` into train / valid / test splits (see the module doc for specs).

    Common options: ``seed`` (splits; default 0), ``policy`` ('drop' | 'error' | 'keep' rows that break the
    cascade; default 'drop'), ``valid_fraction`` (of train, by seed; 0.1). Raw Ali-CCP: ``variant`` ('aitm':
    18 single-valued fields, or 'full': 17 + 6 multi-valued bags), ``min_count`` (12). CSV: ``labels`` (funnel
    order), ``features`` (categorical) and ``dense`` (numerical) columns (comma lists or globs), ``extra``,
    ``encode``, ``test_fraction``. ``cache_dir``: 'auto' ($PIMM_FAST_CACHE_DIR
    or ~/.cache/pimm_fast), a directory, or None (no cache). ``mmap``: map a cache instead of reading it.

    ``vocabulary``: a trained model's (``Splits.vocabulary`` of its training data): the files are encoded
    with it, not with a vocabulary built from their training split, so codes mean what they meant in
    training. csv: fields and dense columns matched by name in any column order (labels default to the
    model's); aitm-csv, rechub-csv: sizes are the model's, an id outside them is an error naming the line;
    aliccp-raw: the raw ids are looked up in the model's keys. Synthetic data takes none.

    ``parsed``: ``parse_spec(spec)`` where the caller has it already (the command line parses a spec once).
    """
    kind, arg, from_spec = parse_spec(spec) if parsed is None else parsed
    given = {"samples": samples, "seed": seed, "policy": policy, "valid_fraction": valid_fraction,
             "test_fraction": test_fraction, "scale": scale, "min_count": min_count, "variant": variant,
             "labels": labels, "features": features, "dense": dense, "extra": extra, "encode": encode, "dims": dims,
             "header": header, "task_names": task_names, "threads": threads}
    opts = _merge(kind, spec, from_spec, given)
    say = log or (lambda msg: None)
    if kind == "synthetic":
        if vocabulary is not None:
            raise ValueError(f"data spec {spec!r}: synthetic data is generated, not encoded: it takes no vocabulary")
        return _load_synthetic(arg, opts, spec)
    if "cache" in opts:  # the spec names the cache: 'none' / 'off' disables it, 'auto' is the default place
        cache_dir = None if opts["cache"].lower() in ("none", "off", "") else opts["cache"]
    if "policy" in opts:
        from .cascade import check_policy
        check_policy(opts["policy"])
    paths = _sources(kind, arg, opts)
    cache_options = {k: v for k, v in opts.items() if k not in ("threads", "cache")}
    if vocabulary is not None:  # the codes depend on it
        cache_options["vocabulary_sha256"] = hashlib.sha256(vocabulary.to_bytes()).hexdigest()
    key = cache.cache_key(kind, cache.fingerprint(paths), cache_options)
    target = None
    if cache_dir is not None:
        root = cache.default_cache_root() if cache_dir == "auto" else Path(cache_dir)
        target = root / f"{kind}-{key}"
        hit = cache.read_cache(target, key, mmap=mmap)
        if hit is not None:
            arrays, info = hit
            say(f"{spec}: read the cache {target}")
            return _to_splits(arrays, info, {"source": kind, "spec": spec, "cache": str(target)})
    started = time.perf_counter()
    hasher = hashlib.sha256()
    if kind == "aliccp-raw":
        arrays, info = aliccp.load_raw_arrays(Path(arg), variant=opts.get("variant", "aitm"),
                                              min_count=opts.get("min_count", 12), policy=opts.get("policy", "drop"),
                                              valid_fraction=opts.get("valid_fraction", 0.1),
                                              seed=opts.get("seed", 0), threads=opts.get("threads", 1),
                                              hasher=hasher, log=say, vocabulary=vocabulary)
        source_hash = hasher.hexdigest()
    else:
        if kind == "aitm-csv":
            arrays, info = tables.load_aitm_csv(Path(arg), policy=opts.get("policy", "drop"),
                                                valid_fraction=opts.get("valid_fraction", 0.1),
                                                seed=opts.get("seed", 0), dims=opts.get("dims", "aitm"),
                                                vocabulary=vocabulary)
        elif kind == "rechub-csv":
            arrays, info = tables.load_rechub_csv(Path(arg), policy=opts.get("policy", "drop"),
                                                  dense=opts.get("dense"), vocabulary=vocabulary)
        else:
            if "labels" not in opts and vocabulary is None:
                raise ValueError(f"data spec {spec!r}: name the label columns in funnel order, e.g. "
                                 f"csv:{arg}?labels=click,purchase (or labels=[...])")
            arrays, info = tables.load_table(Path(arg), labels=opts.get("labels"), features=opts.get("features"),
                                             extra=opts.get("extra", "ignore"), encode=opts.get("encode"),
                                             min_count=opts.get("min_count", 1), policy=opts.get("policy", "drop"),
                                             valid_fraction=opts.get("valid_fraction", 0.1),
                                             test_fraction=opts.get("test_fraction", 0.2), seed=opts.get("seed", 0),
                                             header=opts.get("header", "auto"), task_names=opts.get("task_names"),
                                             dense=opts.get("dense"), vocabulary=vocabulary)
        source_hash = _sha256_files(paths)
    info.update(key=key, kind=kind, spec=spec, options=cache_options, sources=cache.fingerprint(paths),
                source_sha256=source_hash, created=time.strftime("%Y-%m-%dT%H:%M:%S"),
                seconds=time.perf_counter() - started)
    if target is not None:
        try:
            cache.write_cache(target, arrays, info)
            say(f"{spec}: wrote the cache {target}")
        except OSError as err:  # an unwritable cache costs time next run, never this run's result
            warnings.warn(f"could not write the data cache {target}: {err}", RuntimeWarning, stacklevel=2)
    return _to_splits(arrays, info, {"source": kind, "spec": spec, "cache": None if target is None else str(target)})
