"""Export a trained model as one file (an AOTInductor package, ``.pt2``) and load it to score ids.

    import pimm_fast.export as px
    px.save(model, "model.pt2")          # eval mode, torch.export -> AOTInductor, ~25-50 s of C++ compile
    score = px.load("model.pt2")         # needs pimm_fast installed (its kernels), not the model class
    probs = score(ids)                   # ids [B, F] int64/int32 (+ dense [B, K] floats) -> probs [B, T]
    score.metadata["task_names"]

With the model's vocabulary (``pimm_fast.data.Vocabulary``, the id encoding of its training file) the
package scores raw values, from Python and from C++ (examples/score_csv.cpp):

    px.save(model, "model.pt2", vocabulary=vocab)   # stored in the archive: extra/pimm_fast/vocabulary.txt
    probs, unseen = px.load("model.pt2").score_columns({"user": ["u1", "u7"], "hour": [3, 5], ...})

A model with multi-valued (bag) fields - the last ``num_bag_fields`` fields, as the data loaders order
them - is exported too; its package takes the single-valued ids and the bags apart:

    probs = score(ids, bag_values, bag_offsets)   # ids [B, F_single]; the bags of the F_bag bag fields,
                                                  # field-major: bag (k, b) = bag_values[bag_offsets[k*B + b]
                                                  # : bag_offsets[k*B + b + 1]], bag_offsets [F_bag*B + 1]

The package holds the model's graph compiled to C++ (the pimm_fast ops stay calls to the fused
kernels of the backend the model ran on), its weights, and pimm_fast's metadata (field sizes, task
names, dense-feature names and training statistics, backend, versions). A C++ program runs it with
torch's ``AOTIModelPackageLoader`` after loading pimm_fast's library (examples/score_csv.cpp).

Weights are stored beside the compiled ``.so`` inside the package (``package_constants_in_so=False``
with ``package_constants_on_disk_format="binary_blob"``): tables of several GB cannot be linked into
a shared object, and the weights are then one plain blob that is read once at load.

Checks made so that a package does not silently serve something else than what was trained: the
backend is frozen at export (the kernels in the graph must be the asked backend's; exporting the
reference path by accident, e.g. because the compiled library did not load, is an error); Triton
kernels (launched from Python) cannot be packaged. ``load``
checks that the file is an intact pimm_fast package and that this CPU has the instruction set the
package was compiled for.

``python -m pimm_fast.export --selfcheck [--device cuda]`` exports every model class, reloads each
package in a fresh process and compares it with the eager model (the GPU check script calls it).
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

FORMAT_VERSION = 1  # a package that takes ids [B, F] (+ dense)
BAG_FORMAT_VERSION = 2  # a package that takes ids [B, F_single], bag_values, bag_offsets (+ dense)
SUPPORTED_FORMATS = (FORMAT_VERSION, BAG_FORMAT_VERSION)
METADATA_KEY = "pimm_fast"
VOCAB_NAME = "pimm_fast/vocabulary.txt"  # an extra file of the PT2 archive (text format of pimm_fast.data.vocab)
VOCAB_RECORD = "extra/" + VOCAB_NAME  # its record name (torch.export.pt2_archive.constants.EXTRA_DIR)
_ISA_ORDER = ("DEFAULT", "NO AVX", "ZVECTOR", "AVX2", "AVX512")  # torch.backends.cpu.get_cpu_capability()

__all__ = ["save", "load", "read_metadata", "read_vocabulary", "ExportedModel", "ExportedBagModel", "ExportError",
           "PackageError"]


class ExportError(RuntimeError):
    """The model cannot be exported as asked."""


class PackageError(ValueError):
    """The file is not an intact pimm_fast package, or it cannot run here."""


# ----------------------------------------------------------------------------------------------
# save
# ----------------------------------------------------------------------------------------------
class _Serving(nn.Module):
    """The eval-mode forward without labels: ids (+ dense) -> probabilities."""

    def __init__(self, model: nn.Module, with_dense: bool):
        super().__init__()
        self.model = model
        self.with_dense = with_dense

    def forward(self, ids: torch.Tensor, dense: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.with_dense:
            return self.model(ids, dense=dense)
        return self.model(ids)


class _BagServing(nn.Module):
    """The eval-mode forward of a model with bag fields: single-valued ids [B, F_single], the bags of the
    last F_bag fields (flat field-major values, offsets [F_bag*B + 1]) (+ dense) -> probabilities.

    Builds the model's own input, ``JaggedIds`` over all F fields (a single-valued field is a field of
    bags of length 1, as ``JaggedIds.from_fields`` makes it in training and evaluation), so the package
    runs the same kernel on the same values and offsets as the eager model."""

    def __init__(self, model: nn.Module, num_single: int, num_bags: int, with_dense: bool):
        super().__init__()
        self.model = model
        self.num_single, self.num_bags, self.with_dense = num_single, num_bags, with_dense

    def forward(self, ids: torch.Tensor, bag_values: torch.Tensor, bag_offsets: torch.Tensor,
                dense: Optional[torch.Tensor] = None) -> torch.Tensor:
        from .modules import JaggedIds

        singles = self.num_single * ids.shape[0]
        values = torch.cat([ids.t().reshape(-1), bag_values])
        offsets = torch.cat([torch.arange(singles, dtype=torch.int64, device=ids.device), bag_offsets + singles])
        x = JaggedIds(values, offsets, self.num_single + self.num_bags)
        if self.with_dense:
            return self.model(x, dense=dense)
        return self.model(x)


def _model_device(model: nn.Module) -> torch.device:
    tensors = list(model.parameters()) + list(model.buffers())
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ExportError(f"the model's parameters and buffers must be on one device, found {sorted(map(str, devices))}")
    return devices.pop()


def _bag_fields(pooling: Sequence[str], num_fields: int, num_bag_fields: Optional[int]) -> int:
    """How many of the last fields are bags: ``num_bag_fields`` when given, else the trailing run of
    mean-pooled fields (the layout of the data loaders and ``pimm-fast train``: single-valued fields with
    sum pooling, then the bags, mean-pooled). A single-valued field is fed as a bag of one id, which
    sum and mean pool alike, so with num_bag_fields given any field's pooling is accepted."""
    mean = [f for f, mode in enumerate(pooling) if mode == "mean"]
    if num_bag_fields is None:
        num_bag_fields = len(mean)
        if mean and mean != list(range(num_fields - len(mean), num_fields)):
            raise ExportError(f"mean-pooled (bag) fields {mean} are not the last fields of the model: a package "
                              f"takes the single-valued fields first, then the bags (as the data loaders order "
                              f"them); pass num_bag_fields to say how many of the last fields are bags")
        return num_bag_fields
    if isinstance(num_bag_fields, bool) or not isinstance(num_bag_fields, int) or \
            not 0 <= num_bag_fields <= num_fields:
        raise ExportError(f"num_bag_fields must be an int in [0, {num_fields}], got {num_bag_fields!r}")
    return num_bag_fields


def _model_metadata(model: nn.Module, field_names: Optional[Sequence[str]],
                    num_bag_fields: Optional[int] = None) -> dict[str, Any]:
    embedding = getattr(model, "embedding", None)
    field_dims = getattr(embedding, "field_dims", None) or getattr(model, "field_dims", None)
    if field_dims is None:
        raise ExportError(f"{type(model).__name__} has no embedding with field_dims: not a pimm_fast cascade model")
    field_dims = [int(d) for d in field_dims]
    pooling = tuple(getattr(embedding, "pooling", ()) or ())
    if num_bag_fields is not None and num_bag_fields and not pooling:
        raise ExportError(f"{type(embedding).__name__} does not pool bags (no 'pooling'): the model takes one id "
                          f"per field, export it without num_bag_fields")
    num_bags = _bag_fields(pooling, len(field_dims), num_bag_fields)
    if field_names is not None:
        field_names = [str(n) for n in field_names]
        if len(field_names) != len(field_dims):
            raise ExportError(f"{len(field_names)} field names for {len(field_dims)} fields")
    meta: dict[str, Any] = {
        "model_class": type(model).__name__,
        "field_dims": field_dims,
        "field_names": field_names,
        "task_names": [str(n) for n in model.task_names],
        "num_tasks": int(model.num_tasks),
        "num_dense": int(getattr(model, "num_dense", 0) or 0),
        "dense_names": [], "dense_mean": [], "dense_std": [],
        "num_bag_fields": num_bags,
        "bag_pooling": list(pooling[len(field_dims) - num_bags:]) if num_bags else [],
    }
    dense_input = getattr(model, "dense_input", None)
    if meta["num_dense"] and dense_input is not None:
        meta["dense_names"] = [str(n) for n in getattr(dense_input, "names", ())]
        for stat in ("mean", "std"):
            value = getattr(dense_input, stat, None)
            if isinstance(value, torch.Tensor):
                meta[f"dense_{stat}"] = [float(v) for v in value.detach().cpu().tolist()]
        fitted = getattr(dense_input, "fitted", None)
        meta["dense_fitted"] = bool(fitted) if fitted is not None else None
    if hasattr(model, "backbone"):
        meta["backbone"] = str(model.backbone)
    return meta


def _pimm_ops(exported: torch.export.ExportedProgram) -> list[str]:
    """The pimm_fast op overloads called in the exported graph, e.g. ["embedding_concat.cpp"]."""
    names = set()
    for node in exported.graph_module.graph.nodes:
        target = node.target
        if node.op == "call_function" and isinstance(target, torch._ops.OpOverload) and target.namespace == "pimm_fast":
            names.add(f"{target._opname}.{target._overloadname}")
    return sorted(names)


def _check_backend(ops_used: list[str], asked: str, resolved: str) -> None:
    kernels = {name.rsplit(".", 1)[1] for name in ops_used}
    if resolved == "reference":
        if asked != "reference":
            from . import _extension

            raise ExportError(f"backend {asked!r} resolves to the pure-PyTorch reference here (the compiled library "
                              f"is not loaded: {_extension.STATE.reason}); build the kernels, or pass "
                              f"backend='reference' to export the reference path on purpose")
        if ops_used:
            raise ExportError(f"backend 'reference' was asked but the model calls fused kernels {ops_used}; build it "
                              f"with backend='reference'")
        return
    if not ops_used:
        raise ExportError(f"the model runs on the reference path (no pimm_fast kernel in its graph) but backend "
                          f"{asked!r} ({resolved}) was asked; build the model with backend={resolved!r} or "
                          f"backend='auto', or export with backend='reference'")
    if kernels != {resolved}:
        raise ExportError(f"the model calls the {sorted(kernels)} kernels ({ops_used}) but backend {asked!r} "
                          f"({resolved}) was asked; build the model with the backend to serve")


def save(model: nn.Module, path: Union[str, os.PathLike], example: Optional[Any] = None,
         dynamic_batch: bool = True, *, backend: str = "auto", field_names: Optional[Sequence[str]] = None,
         num_bag_fields: Optional[int] = None, inductor_configs: Optional[dict] = None,
         vocabulary: Optional[Any] = None) -> Path:
    """Export ``model`` (a pimm_fast cascade model) in eval mode to an AOTInductor package at ``path``.

    example: ids [B, F] (or a tuple ``(ids, dense)`` for a model with dense features) to trace with,
        on the model's device; by default zeros with B = 2. For a model with bag fields: ``(ids,
        bag_values, bag_offsets)`` (+ dense), ids [B, F_single]; only its batch size and dense rows are
        used (the trace's bags hold 2-3 ids each; the number of values is always dynamic).
    dynamic_batch: any batch size >= 1 (default); False fixes the batch to the example's.
    num_bag_fields: how many of the last fields are multi-valued (bags); by default the trailing run of
        mean-pooled fields of the model's embedding (``pimm-fast train`` mean-pools bags and orders the
        fields single-valued first). A package with bags is called ``fn(ids, bag_values, bag_offsets,
        dense=None)`` (see :class:`ExportedBagModel`); 0 keeps ``fn(ids, dense=None)``.
    backend: the kernels the package must call: "auto" (the fused kernels of the model's device, never
        the reference fallback), "cpp", "cuda" or "reference" (on purpose). A model whose graph calls
        other kernels is an error.
    field_names: names of the id columns, stored in the metadata (``predict`` writes them); by default the
        vocabulary's field names.
    vocabulary: the model's id encoding (a ``pimm_fast.data.Vocabulary`` or its text-format bytes), stored
        in the package so that it scores raw values (:meth:`ExportedModel.score_columns`, the C++
        example); it must match the model (field count and sizes, bag fields, dense and task names),
        else ExportError.
    inductor_configs: extra AOTInductor options (e.g. ``{"aot_inductor.compile_wrapper_opt_level": "O0"}``
        compiles twice as fast, for tests).
    Returns the path written. The file is written atomically (a temporary file renamed into place).
    """
    from . import __version__, ops

    if not isinstance(model, nn.Module) or not hasattr(model, "task_names"):
        raise ExportError(f"expected a pimm_fast cascade model, got {type(model).__name__}")
    path = Path(path)
    if path.suffix != ".pt2":
        raise ExportError(f"the package path must end in .pt2, got {str(path)!r}")
    device = _model_device(model)
    resolved = ops.resolve_backend(backend, device)
    if resolved == "triton":
        raise ExportError("Triton kernels are launched from Python and cannot be packaged; export with the "
                          "'cuda' backend (build the model with backend='cuda' or 'auto')")
    meta = _model_metadata(model, field_names, num_bag_fields)
    vocab_text = _vocabulary_text(vocabulary, meta) if vocabulary is not None else None
    num_fields, num_dense, num_bags = len(meta["field_dims"]), meta["num_dense"], meta["num_bag_fields"]
    num_single = num_fields - num_bags

    if example is None:
        ids = torch.zeros(2, num_single, dtype=torch.int64, device=device)
        dense = torch.zeros(2, num_dense, device=device) if num_dense else None
    else:
        parts = tuple(example) if isinstance(example, (tuple, list)) else (example,)
        if num_bags:
            if len(parts) not in (3, 4) or not all(isinstance(t, torch.Tensor) for t in parts):
                raise ExportError("example must be a tuple (ids, bag_values, bag_offsets) or (ids, bag_values, "
                                  "bag_offsets, dense) of tensors for a model with bag fields")
            parts = (parts[0],) + parts[3:]
        elif len(parts) not in (1, 2) or not all(isinstance(t, torch.Tensor) for t in parts):
            raise ExportError("example must be ids [B, F] or a tuple (ids, dense) of tensors")
        ids, dense = parts[0].to(device), (parts[1].to(device) if len(parts) == 2 else None)
    if ids.dim() != 2 or ids.shape[1] != num_single or ids.shape[0] < 1:
        what = f"[B, {num_single}] (the {num_single} single-valued fields)" if num_bags else f"[B, {num_fields}]"
        raise ExportError(f"example ids must be {what} with B >= 1, got {list(ids.shape)}")
    if num_dense and dense is None:
        raise ExportError(f"the model has {num_dense} dense features: pass the example with dense")
    if not num_dense and dense is not None:
        raise ExportError("dense features were given but the model has none")
    if dynamic_batch and ids.shape[0] == 1:  # torch.export specialises a size-1 dimension
        ids = ids.expand(2, -1).contiguous()
        dense = dense.expand(2, -1).contiguous() if dense is not None else None
    batch = torch.export.Dim("batch", min=1, max=1 << 30) if dynamic_batch else None
    row = {0: batch} if dynamic_batch else None
    if num_bags:
        # The trace's bags hold 2 or 3 ids each (id 0: in range for every field); their values do not shape
        # the graph, and a value count of 0 or 1 would be specialised. The count is always dynamic.
        lengths = (2 + torch.arange(ids.shape[0], device=device) % 2).repeat(num_bags)
        bag_offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
        bag_values = torch.zeros(int(bag_offsets[-1]), dtype=torch.int64, device=device)
        ids = ids.to(torch.int64)  # the wrapper passes int64 (the graph concatenates ids and bag values)
        args = (ids, bag_values, bag_offsets) + ((dense,) if dense is not None else ())
        shapes = (row, {0: torch.export.Dim("bag_values", min=0)},
                  {0: num_bags * batch + 1} if dynamic_batch else None) + ((row,) if dense is not None else ())
        serving = _BagServing(model, num_single, num_bags, num_dense > 0)
    else:
        args = (ids,) if dense is None else (ids, dense)
        shapes = tuple(row for _ in args)
        serving = _Serving(model, num_dense > 0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            exported = torch.export.export(serving, args, dynamic_shapes=shapes, strict=False)
    except Exception as exc:
        raise ExportError(f"torch.export failed for {type(model).__name__}: {exc}") from exc
    finally:
        model.train(was_training)
    ops_used = _pimm_ops(exported)
    _check_backend(ops_used, backend, resolved)

    meta.update({
        "format": BAG_FORMAT_VERSION if num_bags else FORMAT_VERSION,
        "inputs": (["ids", "bag_values", "bag_offsets"] if num_bags else ["ids"]) + (["dense"] if num_dense else []),
        "pimm_fast_version": __version__,
        "torch_version": torch.__version__,
        "backend": resolved,
        "device": device.type,
        "ops": ops_used,
        "dynamic_batch": bool(dynamic_batch),
        "batch": None if dynamic_batch else int(ids.shape[0]),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "weights": "binary blob beside the .so",
        "vocabulary": None if vocab_text is None else {"record": VOCAB_RECORD, "bytes": len(vocab_text.encode())},
    })
    configs = {
        # Weights beside the .so, as one blob (constants in the .so cannot exceed 2 GB; the flag alone,
        # without the blob format, produced packages that crashed on torch 2.14).
        "aot_inductor.package_constants_in_so": False,
        "aot_inductor.package_constants_on_disk_format": "binary_blob",
        "aot_inductor.metadata": _flat_metadata(meta),
    }
    configs.update(inductor_configs or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    _quiet_cuda_home_warning()
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.pt2")
    try:
        _compile_and_package(exported, tmp, configs, vocab_text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _vocabulary_text(vocabulary: Any, meta: dict) -> str:
    """The vocabulary's text format, checked against the model's metadata (which takes its field names)."""
    from .data import DataFormatError
    from .data.vocab import Vocabulary

    if isinstance(vocabulary, (bytes, bytearray, memoryview)):
        try:
            vocabulary = Vocabulary.from_bytes(bytes(vocabulary), "the vocabulary passed to save")
        except DataFormatError as err:
            raise ExportError(str(err)) from None
    if not isinstance(vocabulary, Vocabulary):
        raise ExportError(f"vocabulary must be a pimm_fast.data.Vocabulary or its bytes, got "
                          f"{type(vocabulary).__name__}")
    problems = []
    if list(vocabulary.field_dims) != meta["field_dims"]:
        problems.append(f"field sizes {list(vocabulary.field_dims)} (fields {list(vocabulary.field_names)}) != the "
                        f"model's field_dims {meta['field_dims']}")
    elif len(vocabulary.bag_fields) != meta["num_bag_fields"]:
        problems.append(f"{len(vocabulary.bag_fields)} bag fields != the package's {meta['num_bag_fields']}")
    if meta["field_names"] is not None and list(vocabulary.field_names) != meta["field_names"]:
        problems.append(f"field names {list(vocabulary.field_names)} != field_names {meta['field_names']}")
    if list(vocabulary.dense_names) != meta["dense_names"]:
        problems.append(f"dense columns {list(vocabulary.dense_names)} != the model's {meta['dense_names']}")
    if vocabulary.task_names and list(vocabulary.task_names) != meta["task_names"]:
        problems.append(f"tasks {list(vocabulary.task_names)} != the model's {meta['task_names']}")
    if problems:
        raise ExportError("the vocabulary does not match the model: " + "; ".join(problems))
    meta["field_names"] = list(vocabulary.field_names)
    try:
        return vocabulary.to_bytes().decode("utf-8")
    except UnicodeDecodeError as err:  # the archive stores text; the readers refuse non-UTF-8 cells
        raise ExportError(f"the vocabulary is not UTF-8 text ({err})") from None


def _compile_and_package(exported, path: Path, configs: dict, vocab_text: Optional[str]) -> None:
    """``aoti_compile_and_package`` with the vocabulary as an extra file of the PT2 archive (package_pt2's
    extra_files, under EXTRA_DIR): a plain zip member that C++ reads with PyTorchStreamReader, of any size
    (AOTInductor's metadata is compiled into the .so as string literals)."""
    from torch.export.pt2_archive._package import package_pt2

    try:
        gm = exported.module(check_guards=False)  # as aoti_compile_and_package (aot_compile drops guards too)
    except TypeError:  # a torch without the argument
        gm = exported.module()
    args, kwargs = exported.example_inputs
    files = torch._inductor.aot_compile(gm, args, kwargs, options={**configs, "aot_inductor.package": True})
    package_pt2(str(path), aoti_files=files, extra_files=None if vocab_text is None else {VOCAB_NAME: vocab_text})


def _flat_metadata(meta: dict) -> dict[str, str]:
    """AOTInductor metadata is str -> str: the full record as JSON, plus the few keys a C++ program needs
    as plain comma-separated text (no JSON parser there)."""
    return {
        METADATA_KEY: json.dumps(meta, sort_keys=True),
        f"{METADATA_KEY}.field_dims": ",".join(str(d) for d in meta["field_dims"]),
        f"{METADATA_KEY}.task_names": ",".join(meta["task_names"]),
        f"{METADATA_KEY}.num_dense": str(meta["num_dense"]),
        f"{METADATA_KEY}.num_bag_fields": str(meta["num_bag_fields"]),
        f"{METADATA_KEY}.backend": meta["backend"],
        **({f"{METADATA_KEY}.vocabulary": meta["vocabulary"]["record"]} if meta.get("vocabulary") else {}),
    }


# ----------------------------------------------------------------------------------------------
# load
# ----------------------------------------------------------------------------------------------
def read_metadata(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """pimm_fast's metadata of a package, read from the archive without loading its code.

    Raises PackageError for a missing file, a file that is not a (intact) .pt2 archive, or a .pt2
    that pimm_fast did not write."""
    path = Path(path)
    if not path.is_file():
        raise PackageError(f"{path}: no such package file")
    if not zipfile.is_zipfile(path):
        raise PackageError(f"{path}: not a .pt2 package (not a zip archive); export one with pimm_fast.export.save "
                           f"or `pimm-fast export`")
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()  # reads every member: a truncated or altered file fails its CRC
            if broken is not None:
                raise PackageError(f"{path}: corrupt package (member {broken} fails its checksum); export it again")
            found = None
            for name in archive.namelist():
                if name.endswith("_metadata.json") and "/aotinductor/" in name:
                    record = json.loads(archive.read(name))
                    if METADATA_KEY in record:
                        found = record[METADATA_KEY]
                        break
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        if isinstance(exc, PackageError):
            raise
        raise PackageError(f"{path}: corrupt package ({exc}); export it again") from None
    if found is None:
        raise PackageError(f"{path}: not a pimm_fast package (an AOTInductor or other .pt2 without pimm_fast's "
                           f"metadata); export the model with pimm_fast.export.save or `pimm-fast export`")
    meta = json.loads(found)
    if meta.get("format") not in SUPPORTED_FORMATS:
        raise PackageError(f"{path}: package format {meta.get('format')} is not supported by this pimm_fast "
                           f"(formats {', '.join(map(str, SUPPORTED_FORMATS))}); export it again")
    meta.setdefault("num_bag_fields", 0)
    meta.setdefault("vocabulary", None)  # packages written before vocabularies travelled with them
    return meta


def read_vocabulary(path: Union[str, os.PathLike]):
    """The vocabulary stored in a package (a ``pimm_fast.data.Vocabulary``), or None for a package exported
    without one. Raises PackageError as :func:`read_metadata` does."""
    return _read_vocabulary(Path(path), read_metadata(path))


def _read_vocabulary(path: Path, meta: dict):
    from .data import DataFormatError
    from .data.vocab import Vocabulary

    info = meta.get("vocabulary")
    if not info:
        return None
    with zipfile.ZipFile(path) as archive:  # members are "<archive root>/<record>"
        members = [n for n in archive.namelist() if n.partition("/")[2] == info["record"]]
        if not members:
            raise PackageError(f"{path}: the metadata names a vocabulary, but the archive has no {info['record']}")
        data = archive.read(members[0])
    try:
        return Vocabulary.from_bytes(data, f"{path}:{info['record']}")
    except DataFormatError as err:
        raise PackageError(str(err)) from None


def _token(value: Any) -> bytes:
    """A raw cell as the bytes the vocabulary looks up (the Parquet rules of pimm_fast.data.vocab)."""
    from .data.vocab import value_text

    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return value_text(value).encode("utf-8")  # None / NaN missing, 205.0 the id 205


def _raw_tokens(values: Any, name: str):
    """A column of raw values -> numpy ``S`` array of canonical tokens (long ones digested)."""
    import numpy as np
    from .data.vocab import MAX_TOKEN_BYTES, canonical_token

    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"score_columns: column {name!r} must be 1-D, got shape {list(arr.shape)}")
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64).astype("S21")
    if arr.dtype.kind == "U":
        arr = np.char.encode(arr, "utf-8")
    elif arr.dtype.kind != "S":
        arr = np.array([_token(v) for v in arr.tolist()], dtype="S") if len(arr) else np.zeros(0, "S1")
    if arr.dtype.itemsize > MAX_TOKEN_BYTES:
        arr = np.array([canonical_token(t) for t in arr.tolist()], dtype="S")
    return arr


def _bag_tokens(values: Any, name: str):
    """A bag column (per row: a sequence of values, or one str/bytes cell with '|' between them) ->
    (canonical tokens of all rows, int64 offsets [N + 1])."""
    import numpy as np

    from .data.vocab import is_missing

    flat, offsets = [], [0]
    for cell in values:
        if is_missing(cell):
            parts = []
        elif isinstance(cell, (str, bytes)):
            raw = _token(cell)
            parts = raw.split(b"|") if raw else []
        else:
            parts = [_token(v) for v in cell]
        flat.extend(parts)
        offsets.append(len(flat))
    return _raw_tokens(np.array(flat, dtype=object), name), np.array(offsets, dtype=np.int64)


def _dense_values(values: Any, name: str):
    """A dense column -> float32 with NaN for missing, as the training reader reads it (parse_floats)."""
    import numpy as np
    from .data.readers import parse_floats

    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"score_columns: column {name!r} must be 1-D, got shape {list(arr.shape)}")
    if arr.dtype.kind in "fiub":
        out = arr.astype(np.float64)
        out[~np.isfinite(out)] = np.nan
        return out.astype(np.float32)
    if arr.dtype.kind == "U":
        arr = np.char.encode(arr, "utf-8")
    elif arr.dtype.kind != "S":
        arr = np.array([_token(v) for v in arr.tolist()], dtype="S")
    return parse_floats(arr, lambda r: f"row {r + 1}", "score_columns", name)[0]


def _quiet_cuda_home_warning() -> None:
    """Import torch.utils.cpp_extension with its logger quiet on a machine without a GPU.

    A CUDA build of torch warns "No CUDA runtime is found, using CUDA_HOME=..." when that module is imported
    (module-level ``_find_cuda_home``) and no GPU is visible; AOTInductor imports it on every package load
    and export (``pick_vec_isa`` compiles a probe through cpp_builder). On a CPU machine there is nothing
    to warn about; with a GPU the module is imported as usual."""
    import importlib
    import logging
    import sys

    if "torch.utils.cpp_extension" in sys.modules or torch.cuda.is_available():
        return

    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        importlib.import_module("torch.utils.cpp_extension")
    finally:
        logger.setLevel(level)


def _check_cpu(meta: dict, path: Path) -> None:
    built, here = meta.get("cpu_capability"), torch.backends.cpu.get_cpu_capability()
    if meta.get("device") != "cpu" or built is None or built == here:
        return
    if built in _ISA_ORDER and here in _ISA_ORDER and _ISA_ORDER.index(here) < _ISA_ORDER.index(built):
        raise PackageError(f"{path}: compiled for {built} CPUs but this CPU supports {here}; export the model on "
                           f"(or for) the serving machine")


class ExportedModel:
    """A loaded package: ``fn(ids, dense=None) -> probs [B, T]`` (float32, on the package's device).

    Checks every call's input (dtype, field count, batch >= 1, ids in range per field, dense shape) and
    raises TypeError / ValueError / IndexError naming the problem. Inputs on another device are
    copied to the package's device. ``metadata`` holds field_dims, task_names, dense_names and
    statistics, backend, versions. ``vocabulary``: the id encoding stored with the model (a
    ``pimm_fast.data.Vocabulary``; None for a package exported without one), which
    :meth:`score_columns` uses to score raw values."""

    def __init__(self, runner, metadata: dict, device: torch.device, path: Path, vocabulary=None):
        self._runner = runner
        self.metadata = metadata
        self.vocabulary = vocabulary
        self.device = device
        self.path = path
        self.field_dims = tuple(metadata["field_dims"])
        self.task_names = tuple(metadata["task_names"])
        self.num_dense = int(metadata.get("num_dense", 0))
        self._limits = torch.tensor(self.field_dims, dtype=torch.int64, device=device)

    def __repr__(self) -> str:
        return (f"ExportedModel({self.metadata['model_class']}, {len(self.field_dims)} fields, tasks "
                f"{list(self.task_names)}, backend {self.metadata['backend']} on {self.device}, "
                f"{self._vocabulary_repr()}, from {self.path})")

    def _vocabulary_repr(self) -> str:
        if self.vocabulary is None:
            return "no vocabulary (ids only)"
        keys = sum(0 if f.keys is None else len(f.keys) for f in self.vocabulary.fields)
        return f"vocabulary of {keys:,} keys"

    def score_columns(self, columns: Mapping[str, Any], batch_size: int = 65536) -> tuple[torch.Tensor, dict]:
        """Score raw values by column name with the package's vocabulary: ``(probs, unseen)``.

        columns: {name: 1-D array-like} holding at least every field and dense column of the vocabulary, in
            any order (other columns are ignored); missing ones are a DataFormatError naming them. Field cells:
            str (UTF-8), bytes or int (as its decimal text) raw values, as in the training file; None / NaN
            is the empty cell. A bag field's cell is a sequence of values, or a str/bytes with the values
            separated by '|' ("" = an empty bag). Dense cells: numbers, or text read as the training reader
            does (empty, NA, NaN, null, None, ?, -, N/A and +-inf are missing: NaN).
        Values that are not a key of an encoded field get the unseen code 0 (counted); an identity field's
        value that is not an id of the field is a DataFormatError naming the row, the column and the value.
        Scores ``batch_size`` rows per call of the package. Returns probs float32 [N, T] (CPU), rows in the
        input's order, and {field name: count of unseen values} of the encoded fields."""
        import numpy as np

        vocab = self.vocabulary
        if vocab is None:
            raise ValueError(f"{self.path}: the package has no vocabulary (exported without one, or by an older "
                             f"pimm_fast): raw values cannot be encoded; export it with its vocabulary, or call it "
                             f"with encoded ids")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        vocab.check_columns(list(columns), "score_columns")
        lengths = {name: len(columns[name]) for name in vocab.field_names + vocab.dense_names}
        n = next(iter(lengths.values()), 0)
        if len(set(lengths.values())) > 1:
            raise ValueError(f"score_columns: the columns have different lengths: {lengths}")
        if n == 0:
            raise ValueError("score_columns: no rows to score")
        singles, bags, unseen = [], [], {}
        for j, field in enumerate(vocab.fields):
            if field.bag:
                tokens, offsets = _bag_tokens(columns[field.name], field.name)
                where = lambda i, o=offsets: f"row {int(np.searchsorted(o, i, side='right'))}"  # noqa: E731
                codes, missed = vocab.encode_column(j, tokens, where, "score_columns")
                bags.append((torch.from_numpy(codes), torch.from_numpy(offsets)))
            else:
                codes, missed = vocab.encode_column(j, _raw_tokens(columns[field.name], field.name),
                                                    source="score_columns")
                singles.append(codes)
            if field.kind == "encoded":
                unseen[field.name] = missed
        ids = torch.from_numpy(np.stack(singles, 1) if singles else np.zeros((n, 0), np.int64))
        dense = None
        if vocab.dense_names:
            dense = torch.from_numpy(np.stack([_dense_values(columns[name], name) for name in vocab.dense_names], 1))
        out = [self._score_rows(ids, bags, dense, start, min(start + batch_size, n)).cpu()
               for start in range(0, n, batch_size)]
        return torch.cat(out), unseen

    def _score_rows(self, ids, bags, dense, start: int, stop: int) -> torch.Tensor:
        return self(ids[start:stop], None if dense is None else dense[start:stop])

    def _field(self, f: int) -> str:
        names = self.metadata.get("field_names")
        return f"field {f} ({names[f]})" if names else f"field {f}"

    def check(self, ids: torch.Tensor, dense: Optional[torch.Tensor] = None) -> None:
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"ids must be a torch.Tensor [B, {len(self.field_dims)}], got {type(ids).__name__}")
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"ids must be int64 or int32, got {ids.dtype}")
        if ids.dim() != 2 or ids.shape[1] != len(self.field_dims):
            raise ValueError(f"ids must be [B, F] with F = {len(self.field_dims)} fields, got shape {list(ids.shape)}")
        if ids.shape[0] < 1:
            raise ValueError("ids must hold at least one row (B >= 1), got B = 0")
        batch = self.metadata.get("batch")
        if batch is not None and ids.shape[0] != batch:
            raise ValueError(f"this package was exported for batch {batch} (dynamic_batch=False), got B = {ids.shape[0]}")
        bad = (ids < 0) | (ids >= self._limits)
        if bool(bad.any()):
            r, f = (int(i) for i in bad.nonzero()[0])
            raise IndexError(f"id {int(ids[r, f])} at row {r} is out of range for {self._field(f)}, which has "
                             f"{self.field_dims[f]} values (ids must be in [0, {self.field_dims[f]}))")
        self._check_dense(dense, ids.shape[0])

    def _check_dense(self, dense: Optional[torch.Tensor], rows: int) -> None:
        if self.num_dense:
            if dense is None:
                raise ValueError(f"this model takes {self.num_dense} dense features: pass dense [B, {self.num_dense}]")
            if not isinstance(dense, torch.Tensor) or not dense.is_floating_point():
                raise TypeError(f"dense must be a float tensor, got "
                                f"{dense.dtype if isinstance(dense, torch.Tensor) else type(dense).__name__}")
            if dense.dim() != 2 or dense.shape != (rows, self.num_dense):
                raise ValueError(f"dense must be [B, K] = [{rows}, {self.num_dense}], got {list(dense.shape)}")
        elif dense is not None:
            raise ValueError("this model takes no dense features, but dense was passed")

    def __call__(self, ids: torch.Tensor, dense: Optional[torch.Tensor] = None) -> torch.Tensor:
        ids = ids.to(self.device) if isinstance(ids, torch.Tensor) else ids
        dense = dense.to(self.device) if isinstance(dense, torch.Tensor) else dense
        self.check(ids, dense)
        with torch.no_grad():
            if self.num_dense:
                return self._runner(ids.contiguous(), dense.to(torch.float32).contiguous())
            return self._runner(ids.contiguous())


class ExportedBagModel(ExportedModel):
    """A loaded package of a model with multi-valued (bag) fields:
    ``fn(ids, bag_values, bag_offsets, dense=None) -> probs [B, T]``.

    ids: int64/int32 [B, F_single], the single-valued fields (the first F - F_bag fields, in order).
    bag_values: int64/int32 [N], the ids of the F_bag bag fields (the last fields), field-local, field-major:
        bag (k, b) of bag field k and row b is ``bag_values[bag_offsets[k*B + b] : bag_offsets[k*B + b + 1]]``.
    bag_offsets: int64 (or int32) [F_bag*B + 1], from 0, never decreasing, ending at N. An empty bag
        (two equal offsets) pools to zeros. ``JaggedIds.from_fields([(ids_k, offsets_k), ...])`` builds the
        pair from one ``nn.EmbeddingBag``-style (ids, offsets [B + 1]) per bag field: its ``values`` and
        ``bag_offsets``.
    dense: float [B, K] for a model with dense features.

    Checks every call's input (:meth:`check`) and raises TypeError / ValueError / IndexError naming the
    problem (row, field, position in bag_values). The bag ids are checked with one min/max pass per bag
    field; the package's embedding kernel checks ids and offsets again (what a C++ caller relies on)."""

    def __init__(self, runner, metadata: dict, device: torch.device, path: Path, vocabulary=None):
        super().__init__(runner, metadata, device, path, vocabulary)
        self.num_bag_fields = int(metadata["num_bag_fields"])
        self.num_single = len(self.field_dims) - self.num_bag_fields
        self._limits = self._limits[:self.num_single]

    def __repr__(self) -> str:
        return (f"ExportedBagModel({self.metadata['model_class']}, {self.num_single} single-valued + "
                f"{self.num_bag_fields} bag fields, tasks {list(self.task_names)}, backend "
                f"{self.metadata['backend']} on {self.device}, {self._vocabulary_repr()}, from {self.path})")

    def _check_layout(self, ids: torch.Tensor, bag_values: torch.Tensor, bag_offsets: torch.Tensor,
                      dense: Optional[torch.Tensor]) -> int:
        """Types, dtypes and shapes (B >= 1, F_bag * B + 1 offsets, dense [B, K]); returns B."""
        F_s, F_b = self.num_single, self.num_bag_fields
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"ids must be a torch.Tensor [B, {F_s}], got {type(ids).__name__}")
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"ids must be int64 or int32, got {ids.dtype}")
        if ids.dim() != 2 or ids.shape[1] != F_s:
            raise ValueError(f"ids must be [B, {F_s}] (the {F_s} single-valued fields; the {F_b} bag fields come "
                             f"as bag_values and bag_offsets), got shape {list(ids.shape)}")
        B = ids.shape[0]
        if B < 1:
            raise ValueError("ids must hold at least one row (B >= 1), got B = 0")
        batch = self.metadata.get("batch")
        if batch is not None and B != batch:
            raise ValueError(f"this package was exported for batch {batch} (dynamic_batch=False), got B = {B}")
        for name, t in (("bag_values", bag_values), ("bag_offsets", bag_offsets)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype not in (torch.int64, torch.int32):
                raise TypeError(f"{name} must be int64 or int32, got {t.dtype}")
            if t.dim() != 1:
                raise ValueError(f"{name} must be 1-D, got shape {list(t.shape)}")
        if bag_offsets.numel() != F_b * B + 1:
            raise ValueError(f"bag_offsets must have F_bag * B + 1 = {F_b} * {B} + 1 = {F_b * B + 1} entries (one "
                             f"start per bag, field-major, then the end), got {bag_offsets.numel()}")
        self._check_dense(dense, B)
        return B

    def check(self, ids: torch.Tensor, bag_values: torch.Tensor, bag_offsets: torch.Tensor,
              dense: Optional[torch.Tensor] = None) -> None:
        """Every check, the contents included: ids in range per field, bag_offsets from 0, not decreasing,
        ending at len(bag_values), bag ids in their field's range. Raises TypeError / ValueError / IndexError."""
        B = self._check_layout(ids, bag_values, bag_offsets, dense)
        F_s = self.num_single
        if F_s:
            bad = (ids < 0) | (ids >= self._limits)
            if bool(bad.any()):
                r, f = (int(i) for i in bad.nonzero()[0])
                raise IndexError(f"id {int(ids[r, f])} at row {r} is out of range for {self._field(f)}, which has "
                                 f"{self.field_dims[f]} values (ids must be in [0, {self.field_dims[f]}))")
        n = bag_values.numel()
        bounds = bag_offsets[::B].tolist()  # [F_bag + 1]: where each bag field's values start, then N
        if bounds[0] != 0:
            raise ValueError(f"bag_offsets must start at 0, got {bounds[0]}")
        if bool((bag_offsets[1:] < bag_offsets[:-1]).any()):
            j = int((bag_offsets[1:] < bag_offsets[:-1]).nonzero()[0])
            raise ValueError(f"bag_offsets must not decrease: bag_offsets[{j + 1}] = {int(bag_offsets[j + 1])} < "
                             f"bag_offsets[{j}] = {int(bag_offsets[j])} (the bag of {self._bag(j, B)} would end "
                             f"before it starts)")
        if bounds[-1] != n:
            raise ValueError(f"bag_offsets must end at len(bag_values) = {n}, got {bounds[-1]}")
        for k in range(self.num_bag_fields):  # one pass over the values: min and max per bag field
            start, stop, f = bounds[k], bounds[k + 1], F_s + k
            if stop == start:
                continue
            lo, hi = (int(v) for v in torch.aminmax(bag_values[start:stop]))
            if lo < 0 or hi >= self.field_dims[f]:
                segment = bag_values[start:stop]
                i = start + int(((segment < 0) | (segment >= self.field_dims[f])).nonzero()[0])
                j = int(torch.searchsorted(bag_offsets, bag_offsets.new_tensor([i]), right=True)[0]) - 1
                raise IndexError(f"bag id {int(bag_values[i])} at bag_values[{i}] ({self._bag(j, B)}) is out of range "
                                 f"for {self._field(f)}, which has {self.field_dims[f]} values (ids must be in "
                                 f"[0, {self.field_dims[f]}))")

    def _bag(self, j: int, B: int) -> str:
        return f"row {j % B} of {self._field(self.num_single + j // B)}"

    def _score_rows(self, ids, bags, dense, start: int, stop: int) -> torch.Tensor:
        values, offsets, base = [], [torch.zeros(1, dtype=torch.int64)], 0
        for codes, bounds in bags:  # field-major: this field's bags of rows start..stop
            lo, hi = int(bounds[start]), int(bounds[stop])
            values.append(codes[lo:hi])
            offsets.append(bounds[start + 1:stop + 1] - lo + base)
            base += hi - lo
        return self(ids[start:stop], torch.cat(values), torch.cat(offsets),
                    None if dense is None else dense[start:stop])

    def __call__(self, ids: torch.Tensor, bag_values: torch.Tensor, bag_offsets: torch.Tensor,
                 dense: Optional[torch.Tensor] = None) -> torch.Tensor:
        ids, bag_values, bag_offsets, dense = (t.to(self.device) if isinstance(t, torch.Tensor) else t
                                               for t in (ids, bag_values, bag_offsets, dense))
        self.check(ids, bag_values, bag_offsets, dense)
        args = [ids.to(torch.int64).contiguous(), bag_values.to(torch.int64).contiguous(),
                bag_offsets.to(torch.int64).contiguous()]
        if self.num_dense:
            args.append(dense.to(torch.float32).contiguous())
        with torch.no_grad():
            return self._runner(*args)


def load(path: Union[str, os.PathLike], device: Optional[Union[str, torch.device]] = None) -> ExportedModel:
    """Load a package written by :func:`save`: returns ``fn(ids, dense=None) -> probs [B, T]`` with a
    ``metadata`` dict (an :class:`ExportedModel`); for a model with bag fields, ``fn(ids, bag_values,
    bag_offsets, dense=None)`` (an :class:`ExportedBagModel`). ``device``: where to run it (default: the
    device it was exported for; a CUDA package may be given another GPU, "cuda:1"). Needs pimm_fast
    installed, for the kernels."""
    from . import _extension, ops  # noqa: F401  (ops: the kernels the package calls must be registered)

    path = Path(path)
    meta = read_metadata(path)
    package_device = meta["device"]
    target = torch.device(device) if device is not None else torch.device(package_device)
    if target.type != package_device:
        raise PackageError(f"{path}: the package was compiled for {package_device}, it cannot run on {target}")
    if package_device == "cuda" and not torch.cuda.is_available():
        raise PackageError(f"{path}: the package was compiled for CUDA, but no GPU is available here")
    if meta["backend"] in ("cpp", "cuda") and not _extension.STATE.loaded:
        raise PackageError(f"{path}: the package calls pimm_fast's {meta['backend']} kernels, but the compiled "
                           f"library is not loaded ({_extension.STATE.reason})")
    _check_cpu(meta, path)
    _quiet_cuda_home_warning()
    index = (target.index if target.index is not None else torch.cuda.current_device()) if target.type == "cuda" else -1
    try:
        runner = torch._inductor.aoti_load_package(str(path), device_index=index)
    except Exception as exc:
        raise PackageError(f"{path}: cannot load the package: {exc}") from None
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", index)
    kind = ExportedBagModel if meta.get("num_bag_fields") else ExportedModel
    return kind(runner, meta, target, path, _read_vocabulary(path, meta))


# ----------------------------------------------------------------------------------------------
# self-check: every model class, exported and reloaded in a fresh process (CPU here, CUDA on a GPU box)
# ----------------------------------------------------------------------------------------------
def _selfcheck_models(device: str) -> dict[str, nn.Module]:
    from .models import build_model
    from .modules import FieldEmbedding

    torch.manual_seed(0)
    field_dims, kw = [7, 11, 5, 13], {"num_tasks": 3, "embed_dim": 4, "task_names": ("view", "click", "buy")}
    models = {f"pimm-{bb}": build_model("pimm", field_dims, backbone=bb, **kw) for bb in ("towers", "mmoe", "ple")}
    for name in ("shared_bottom", "esmm", "mmoe", "ple", "aitm", "mncm"):
        models[name] = build_model(name, field_dims, **kw)
    # Bag fields (the last two of five): PIMM mean-pools both (found by save), AITM sum-pools the first
    # and mean-pools the second (num_bag_fields given, SELFCHECK_BAG_FIELDS).
    bag_dims = field_dims[:3] + [13, 9]
    for name, pooling in (("pimm", ["sum"] * 3 + ["mean"] * 2), ("aitm", ["sum"] * 4 + ["mean"])):
        embedding = FieldEmbedding(bag_dims, kw["embed_dim"], pooling=pooling)
        models[f"{name}-bags"] = build_model(name, bag_dims, embedding=embedding, **kw)
    return {name: m.to(device).eval() for name, m in models.items()}


SELFCHECK_BATCHES = (1, 7, 4096)
SELFCHECK_BAG_FIELDS = {"pimm-bags": None, "aitm-bags": 2}  # num_bag_fields passed to save


def selfcheck_inputs(model: nn.Module, batch: int, num_bag_fields: int, generator: torch.Generator):
    """(package inputs, the eager model's input) of a random batch: ids [B, F]; or, with bag fields, ids
    [B, F_single], bag_values, bag_offsets with 0-5 ids per bag (row 0 of the first bag field empty, of
    the second one 3 ids, so that every batch size has an empty and a full bag), and the same batch as
    ``JaggedIds`` over all fields (what training and evaluation feed the model)."""
    from .modules import JaggedIds

    dims = list(model.embedding.field_dims)
    single = len(dims) - num_bag_fields
    ids = torch.stack([torch.randint(0, d, (batch,), generator=generator) for d in dims[:single]], 1)
    if not num_bag_fields:
        return (ids,), ids
    bags = []
    for k, d in enumerate(dims[single:]):
        lengths = torch.randint(0, 6, (batch,), generator=generator)
        lengths[0] = 0 if k == 0 else 3
        offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
        bags.append((torch.randint(0, d, (int(offsets[-1]),), generator=generator), offsets))
    packed = JaggedIds.from_fields(bags)
    return (ids, packed.values, packed.bag_offsets), JaggedIds.from_fields([ids[:, f] for f in range(single)] + bags)


def _export_for_selfcheck(device: str, out_dir: Path, names: Sequence[str], fast: bool) -> None:
    """Export the named self-check models to out_dir/<name>.pt2 with their eager outputs per batch size."""
    import time

    configs = {"aot_inductor.compile_wrapper_opt_level": "O0"} if fast else None
    models = _selfcheck_models(device)
    for name in names:
        model, started = models[name], time.perf_counter()
        package = save(model, out_dir / f"{name}.pt2", inductor_configs=configs,
                       num_bag_fields=SELFCHECK_BAG_FIELDS.get(name, 0))
        num_bags = read_metadata(package)["num_bag_fields"]
        g = torch.Generator().manual_seed(1)
        for batch in SELFCHECK_BATCHES:
            inputs, x = selfcheck_inputs(model, batch, num_bags, g)
            with torch.no_grad():
                expected = model(x.to(device)).cpu()
            torch.save({"ids": inputs[0], "inputs": inputs, "expected": expected}, out_dir / f"{name}-{batch}.pt")
        print(f"exported {name} in {time.perf_counter() - started:.1f} s -> {package}", flush=True)


def selfcheck(device: str, out_dir: Path, fast: bool = False, jobs: int = 1,
              names: Optional[Sequence[str]] = None) -> int:
    """Export every model class (PIMM on each backbone, the six baselines, PIMM and AITM with bag fields)
    on ``device``, then load each package in a fresh process and compare it with the eager model at
    batch 1, 7 and 4096 (max abs difference <= 1e-6). ``jobs`` > 1 compiles in that many processes. Returns 0 when all match."""
    import subprocess
    import sys

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(names) if names is not None else list(_selfcheck_models("cpu"))
    if jobs <= 1:
        _export_for_selfcheck(device, out_dir, names, fast)
    else:
        workers = [subprocess.Popen([sys.executable, "-m", "pimm_fast.export", "--selfcheck", "--device", device,
                                     "--out", str(out_dir), "--export-only", ",".join(names[i::jobs])]
                                    + (["--fast"] if fast else [])) for i in range(min(jobs, len(names)))]
        if any(w.wait() != 0 for w in workers):
            return 1
    # Load and compare in a fresh process: nothing of the exporting process (model classes, caches) helps.
    code = (
        "import sys, torch, pimm_fast.export as px\n"
        "out, device, names, worst = sys.argv[1], sys.argv[2], sys.argv[3].split(','), 0.0\n"
        f"batches = {SELFCHECK_BATCHES!r}\n"
        "for name in names:\n"
        "    fn = px.load(f'{out}/{name}.pt2', device=device)\n"
        "    for batch in batches:\n"
        "        case = torch.load(f'{out}/{name}-{batch}.pt')\n"
        "        err = (fn(*case['inputs']).cpu() - case['expected']).abs().max().item()\n"
        "        worst = max(worst, err)\n"
        "        print(f'{name:>14} batch {batch:>5}: max |package - eager| = {err:.2e}', flush=True)\n"
        "        assert err <= 1e-6, (name, batch, err)\n"
        "print(f'all {len(names) * len(batches)} cases within 1e-6 (worst {worst:.2e})')\n")
    return subprocess.call([sys.executable, "-c", code, str(out_dir), device, ",".join(names)])


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m pimm_fast.export", description="export self-check")
    parser.add_argument("--selfcheck", action="store_true", required=True,
                        help="export every model class, reload in a fresh process, compare with eager (1e-6)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="keep the packages here (default: a temp dir)")
    parser.add_argument("--fast", action="store_true", help="compile the C++ wrapper at -O0 (half the compile time)")
    parser.add_argument("--jobs", type=int, default=1, help="export in this many processes")
    parser.add_argument("--names", default=None, help="comma-separated subset of the models (default: all)")
    parser.add_argument("--export-only", default=None, help=argparse.SUPPRESS)  # a worker of --jobs
    args = parser.parse_args(argv)
    if args.export_only is not None:
        _export_for_selfcheck(args.device, args.out, args.export_only.split(","), args.fast)
        return 0
    names = args.names.split(",") if args.names else None
    unknown = sorted(set(names or ()) - set(_selfcheck_models("cpu")))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(_selfcheck_models('cpu'))}")
    if args.out is not None:
        return selfcheck(args.device, args.out, args.fast, args.jobs, names)
    with tempfile.TemporaryDirectory() as tmp:
        return selfcheck(args.device, Path(tmp), args.fast, args.jobs, names)


if __name__ == "__main__":
    raise SystemExit(main())
