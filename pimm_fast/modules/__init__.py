"""Building blocks shared by PIMM and the baselines."""
from .curriculum import Curriculum
from .embedding import FUSED_OPTIMIZERS, FieldEmbedding, FusedEmbedding
from .jagged import JaggedIds
from .pim import PIM
from .tower import MLP

__all__ = ["Curriculum", "FUSED_OPTIMIZERS", "FieldEmbedding", "FusedEmbedding", "JaggedIds", "MLP", "PIM"]
