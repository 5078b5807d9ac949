"""pimm_fast's operator schemas, read from ``schemas.def`` (the one place they are written).

Every fused op is defined once per kernel backend, as an overload named after the backend:
``torch.ops.pimm_fast.pim_attention.cpp``, ``...pim_attention.cuda``, ``...pim_attention.triton``.
The overloads share one schema, so the C++/CUDA/Triton kernels, the fake kernels and the autograd
formulas are registered against identical contracts, and a caller (or a test) names the backend it
wants explicitly. The backward of each forward op is an op of its own, so torch.compile traces it as
one node. The "reference" backend is not an op: it is the plain PyTorch code of ``pimm_fast.reference``.

Who defines the schemas: the compiled library does (``TORCH_LIBRARY`` in csrc/register.cpp includes
``schemas.def``), so that a C++ program that loads it - an AOTInductor package served without
Python - finds them. Only when the library is not loaded does this module define the same schemas
from Python, parsing the same file, so that the package still imports and runs on the reference path.
Python always adds the fake kernels, the autograd formulas and the Triton kernels (registration.py,
triton_impl.py) through a ``FRAGMENT`` library.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from .. import _extension

NAMESPACE = "pimm_fast"
KERNEL_BACKENDS = ("cpp", "cuda", "triton")
SCHEMA_FILE = Path(__file__).with_name("schemas.def")

# Fused ops whose ``.triton`` overload has a kernel (registered by triton_impl.py; a test holds the two
# lists together). Every fused op has one.
TRITON_KERNELS = frozenset({"embedding_concat", "embedding_concat_backward", "pim_attention",
                            "pim_attention_backward", "embedding_bags_concat", "embedding_bags_concat_backward",
                            "embedding_update_sgd", "embedding_update_rowwise_adagrad", "embedding_update_adam"})

_ENTRY = re.compile(r'PIMM_FAST_(FUSED|PLAIN)_OP\(\s*(\w+)\s*,\s*((?:"[^"\n]*"\s*)+)\)')


def parse_schema_file(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """(fused, plain): op name -> schema (the part after the name) of each entry of a schemas.def text."""
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
    fused: dict[str, str] = {}
    plain: dict[str, str] = {}
    for kind, name, literals in _ENTRY.findall(code):
        schema = "".join(re.findall(r'"([^"\n]*)"', literals))
        target = fused if kind == "FUSED" else plain
        if name in fused or name in plain:
            raise ValueError(f"{SCHEMA_FILE.name}: op {name!r} is defined twice")
        target[name] = schema
    leftover = _ENTRY.sub("", code).strip()
    if leftover:
        raise ValueError(f"{SCHEMA_FILE.name}: cannot parse {leftover[:80]!r} (one PIMM_FAST_*_OP(name, \"schema\") "
                         f"per entry)")
    return fused, plain


try:
    _FUSED, PLAIN_OPS = parse_schema_file(SCHEMA_FILE.read_text())
except OSError as exc:  # a broken install: name the file that is missing
    raise ImportError(f"pimm_fast: cannot read the op schema list {SCHEMA_FILE} ({exc}); reinstall pimm_fast") from None

# name -> (schema, backends that have a kernel for it). Every backend's overload is defined.
FUSED_OPS = {name: (schema, tuple(b for b in KERNEL_BACKENDS if b != "triton" or name in TRITON_KERNELS))
             for name, schema in _FUSED.items()}

# Schemas come from the compiled library when it is loaded; otherwise from here.
SCHEMAS_FROM_LIBRARY = _extension.STATE.loaded
lib = torch.library.Library(NAMESPACE, "FRAGMENT")
if not SCHEMAS_FROM_LIBRARY:
    for _name, _schema in _FUSED.items():
        for _backend in KERNEL_BACKENDS:
            lib.define(f"{_name}.{_backend}{_schema}")
    for _name, _schema in PLAIN_OPS.items():
        lib.define(f"{_name}{_schema}")


def has_op(name: str, backend: str) -> bool:
    """True when fused op ``name`` has a kernel for ``backend``."""
    return backend in FUSED_OPS[name][1]


def op(name: str, backend: str) -> torch._ops.OpOverload:
    """The overload of fused op ``name`` for kernel ``backend``."""
    return getattr(getattr(torch.ops.pimm_fast, name), backend)


def qualname(name: str, backend: str | None = None) -> str:
    return f"{NAMESPACE}::{name}" + (f".{backend}" if backend else "")
