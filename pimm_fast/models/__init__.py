"""Multi-task models over cascaded targets: PIMM and the baselines it is compared with."""
from .aitm import AITM
from .base import CascadeModel
from .mncm import MNCM
from .pimm import PIMM
from .registry import MODELS, build_model
from .tower_models import ESMM, MMoE, PLE, SharedBottom

__all__ = ["PIMM", "SharedBottom", "ESMM", "MMoE", "PLE", "AITM", "MNCM", "CascadeModel", "MODELS",
           "build_model"]
