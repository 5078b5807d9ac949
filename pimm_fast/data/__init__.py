"""Data for cascade models: a synthetic generator with known ground truth (more loaders follow)."""
from .synthetic import PRESETS, CascadeData, SyntheticConfig, generate, load_synthetic, train_test_split

__all__ = ["PRESETS", "CascadeData", "SyntheticConfig", "generate", "load_synthetic", "train_test_split"]
