"""Data for cascade models: loaders for Ali-CCP (raw Tianchi files, AITM CSV, torch-rechub CSV), generic
CSV / Parquet tables and a synthetic generator with known ground truth; an atomic cache; a fast batcher.

    splits = pimm_fast.data.load("aitm-csv:/data/ali-ccp")        # or synthetic:demo, aliccp-raw:DIR, ...
    for x, y in pimm_fast.data.Batcher(splits.train, 4096, seed=0): ...
    table = pimm_fast.data.read_for_scoring("new.csv", splits.vocabulary)  # a new file, the training codes

See docs/data.md for the formats, the spec strings and measured rates.
"""
from ._bytes import DataFormatError
from .batching import Batcher
from .cascade import POLICIES
from .core import BagTable, CascadeData, Splits
from .scoring import ScoringTable, read_for_scoring
from .spec import KINDS, load, parse_spec
from .synthetic import PRESETS, SyntheticConfig, generate, load_synthetic, preset_config, train_test_split
from .vocab import FieldVocab, Vocabulary, canonical_token, fnv_digest

__all__ = ["KINDS", "POLICIES", "PRESETS", "BagTable", "Batcher", "CascadeData", "DataFormatError", "FieldVocab",
           "ScoringTable", "Splits", "SyntheticConfig", "Vocabulary", "canonical_token", "fnv_digest", "generate",
           "load", "load_synthetic", "parse_spec", "preset_config", "read_for_scoring", "train_test_split"]
