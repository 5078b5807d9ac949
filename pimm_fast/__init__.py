"""pimm_fast: multi-task learning over cascaded targets (impression -> click -> conversion -> ...).

PIMM (Weng et al., SIGIR 2023) with fused kernels behind torch custom ops; see README.md.
"""
from __future__ import annotations

from importlib import metadata as _metadata

from . import ops, reference, runtime  # ops first: it defines the op schemas and loads the compiled kernels
from ._info import build_info
from .modules import PIM, Curriculum, FieldEmbedding, FusedEmbedding, JaggedIds, MLP
from .models import AITM, ESMM, MMoE, MNCM, PIMM, PLE, SharedBottom

try:
    __version__ = _metadata.version("pimm-fast")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["PIMM", "SharedBottom", "ESMM", "MMoE", "PLE", "AITM", "MNCM", "PIM", "Curriculum", "FieldEmbedding",
           "FusedEmbedding", "JaggedIds", "MLP", "ops", "reference", "runtime", "build_info", "__version__"]
