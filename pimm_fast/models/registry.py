"""Models by name, for the command line and experiment configs."""
from __future__ import annotations

from typing import Sequence

from .aitm import AITM
from .base import CascadeModel
from .mncm import MNCM
from .pimm import PIMM
from .tower_models import ESMM, MMoE, PLE, SharedBottom

MODELS: dict[str, type[CascadeModel]] = {
    "pimm": PIMM, "shared_bottom": SharedBottom, "esmm": ESMM, "mmoe": MMoE, "ple": PLE, "aitm": AITM,
    "mncm": MNCM,
}


def build_model(name: str, field_dims: Sequence[int], num_tasks: int = 2, **kwargs) -> CascadeModel:
    """``MODELS[name](field_dims, num_tasks=num_tasks, **kwargs)``; the name is case-insensitive and
    "-" reads as "_" ("Shared-Bottom" is "shared_bottom")."""
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[key](field_dims, num_tasks=num_tasks, **kwargs)
