"""Multi-task models over cascaded targets: PIMM and the baselines it is compared with."""
from .pimm import PIMM

__all__ = ["PIMM"]
