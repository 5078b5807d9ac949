"""Building blocks shared by PIMM and the baselines."""
from .curriculum import Curriculum
from .embedding import FieldEmbedding
from .pim import PIM
from .tower import MLP

__all__ = ["Curriculum", "FieldEmbedding", "MLP", "PIM"]
