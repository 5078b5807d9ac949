"""Synthetic cascade data with known ground truth (so the oracle AUC of every task is known).

Generative model, deterministic given the seed:

* ids: field f has ``field_dims[f]`` ids drawn with Zipf-like popularity P(id = r) ~ 1 / (r + 1)^zipf;
* every id carries a latent vector theta_f[id] in R^k (k = ``latent_dim``), N(0, 1 / F);
* user-side summary u = sum_f theta_f[x_f]; a pairwise interaction between the first two fields
  adds a non-linear term g = <theta_0[x_0], theta_1[x_1]> * sqrt(F);
* stage t has a direction a_t in R^k with a_t = rho a_{t-1} + sqrt(1 - rho^2) eps_t: consecutive
  stages share what drives them (the dependence PIMM is built to exploit);
* conditional probability of stage t given stage t-1: q_t = sigmoid(b_t + s * <u, a_t> + c_t g),
  with b_t solved so that the rate of stage t among stage t-1 positives hits ``rates[t]``;
* labels follow the cascade: y_0 ~ Bern(q_0), y_t = y_{t-1} * Bern(q_t). The true marginal
  P(y_t = 1 | x) = prod_{s <= t} q_s is kept as ``probs``: ranking by it gives the oracle AUC.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch

from .core import CascadeData


@dataclass(frozen=True)
class SyntheticConfig:
    field_dims: tuple[int, ...] = (2000, 1000, 500, 200, 100, 50, 20, 10)
    rates: tuple[float, ...] = (0.12, 0.25)  # stage 0 rate, then rate of stage t among stage t-1 positives
    task_names: tuple[str, ...] = ("click", "conversion")
    latent_dim: int = 8
    stage_correlation: float = 0.7  # rho between consecutive stage directions
    signal: float = 2.0  # s: scale of the latent logit
    interaction: float = 0.5  # c_t: weight of the pairwise interaction term
    zipf: float = 1.05

    def __post_init__(self):
        if len(self.rates) != len(self.task_names) or len(self.rates) < 2:
            raise ValueError("rates and task_names must name the same number (>= 2) of funnel stages")
        if not all(0.0 < r < 1.0 for r in self.rates):
            raise ValueError(f"rates must lie in (0, 1), got {self.rates}")
        if not self.field_dims or any(n < 1 for n in self.field_dims):
            raise ValueError(f"field_dims must be positive, got {self.field_dims}")
        if not -1.0 <= self.stage_correlation <= 1.0:
            raise ValueError(f"stage_correlation must lie in [-1, 1], got {self.stage_correlation}")

    @property
    def num_tasks(self) -> int:
        return len(self.rates)


    def scaled(self, scale: float) -> "SyntheticConfig":
        """The same model with every field's cardinality multiplied by ``scale`` (at least 2 ids per field)."""
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        return replace(self, field_dims=tuple(max(2, int(round(n * scale))) for n in self.field_dims))


# the 18 AITM fields (101, 121, 122, 124, 125, 126, 127, 128, 129, 205, 206, 207, 216, 508, 509, 702, 853, 301)
# at the vocabulary sizes of the official AITM protocol on the real Ali-CCP
ALICCP_FIELD_DIMS = (238635, 98, 14, 3, 8, 4, 4, 3, 5, 467298, 6929, 263942, 106399, 5888, 104830, 51878, 37148, 4)

PRESETS: dict[str, SyntheticConfig] = {
    # dense enough to learn in seconds on a laptop CPU: the default of `pimm-fast train`
    "demo": SyntheticConfig(),
    "demo3": SyntheticConfig(rates=(0.15, 0.3, 0.4), task_names=("click", "conversion", "core_conversion")),
    # Ali-CCP-like: the 18 AITM fields at their real vocabulary sizes (scalable), CTR 4 %, CVR | click 0.5 %
    # (exposure-level CTCVR 0.02 %, as in the real data); a weaker signal than the demo, as real logs are noisy
    "aliccp": SyntheticConfig(field_dims=ALICCP_FIELD_DIMS, rates=(0.04, 0.005), signal=0.8, interaction=0.2,
                              zipf=1.1),
    # a 3-stage funnel shaped like the paper's FinTech data (click -> conversion -> core conversion); the rates
    # and cardinalities are assumptions (the paper publishes neither)
    "industrial": SyntheticConfig(field_dims=(1_000_000, 200_000, 50_000, 10_000, 2_000, 500, 100, 50, 20, 10, 5, 3),
                                  rates=(0.05, 0.1, 0.3), task_names=("click", "conversion", "core_conversion"),
                                  latent_dim=12, signal=1.5, interaction=0.4, zipf=1.1),
    # a 4-stage funnel whose last stage is rare (about 0.25 % of impressions): its marginal is the product of
    # four conditionals that share most of their drivers (rho = 0.85), so a model that carries what it learnt
    # on the frequent early stages to the rare late ones has something to gain; the benchmark of
    # `pimm-fast compare` (docs/experiments.md)
    "funnel": SyntheticConfig(field_dims=(5000, 2000, 1000, 500, 200, 100, 50, 20, 10, 5),
                              rates=(0.10, 0.25, 0.35, 0.30), task_names=("click", "apply", "approve", "activate"),
                              latent_dim=8, stage_correlation=0.5, signal=2.0, interaction=0.5, zipf=1.05),
}


def _zipf_ids(n: int, vocab: int, exponent: float, gen: torch.Generator) -> torch.Tensor:
    weights = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64) ** exponent
    ranks = torch.multinomial(weights, n, replacement=True, generator=gen)
    permutation = torch.randperm(vocab, generator=gen)  # popularity unrelated to the id's value
    return permutation[ranks]


def _solve_bias(logit: torch.Tensor, weight: torch.Tensor, target: float) -> float:
    """b with sum(weight * sigmoid(b + logit)) / sum(weight) = target (bisection; the map is monotone)."""
    lo, hi = -30.0, 30.0
    total = weight.sum()
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        rate = (weight * torch.sigmoid(mid + logit)).sum() / total
        lo, hi = (mid, hi) if rate < target else (lo, mid)
    return 0.5 * (lo + hi)


def generate(num_samples: int, config: SyntheticConfig = PRESETS["demo"], seed: int = 0) -> CascadeData:
    """Draw ``num_samples`` impressions from the generative model above."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    gen = torch.Generator().manual_seed(seed)
    F_, k, T = len(config.field_dims), config.latent_dim, config.num_tasks
    x = torch.stack([_zipf_ids(num_samples, n, config.zipf, gen) for n in config.field_dims], dim=1)
    thetas = [torch.randn(n, k, generator=gen, dtype=torch.float64) / math.sqrt(F_) for n in config.field_dims]
    u = sum(theta[x[:, f]] for f, theta in enumerate(thetas))
    pair = (thetas[0][x[:, 0]] * thetas[min(1, F_ - 1)][x[:, min(1, F_ - 1)]]).sum(1) * math.sqrt(F_)
    rho = config.stage_correlation
    direction = torch.randn(k, generator=gen, dtype=torch.float64)
    reach = torch.ones(num_samples, dtype=torch.float64)  # P(y_{t-1} = 1 | x): weights the rate of stage t
    marginal = torch.ones(num_samples, dtype=torch.float64)
    probs, labels = [], []
    y_prev = torch.ones(num_samples, dtype=torch.float64)
    for t in range(T):
        if t > 0:
            direction = rho * direction + math.sqrt(1 - rho * rho) * torch.randn(k, generator=gen,
                                                                                 dtype=torch.float64)
        unit = direction / direction.norm()
        sign = 1.0 if t % 2 == 0 else -1.0
        logit = config.signal * (u @ unit) + sign * config.interaction * pair
        q = torch.sigmoid(_solve_bias(logit, reach, config.rates[t]) + logit)
        marginal = marginal * q
        y = y_prev * (torch.rand(num_samples, generator=gen, dtype=torch.float64) < q).double()
        probs.append(marginal)
        labels.append(y)
        reach, y_prev = marginal, y
    return CascadeData(x=x.to(torch.int32), y=torch.stack(labels, 1).float(), probs=torch.stack(probs, 1).float(),
                       field_dims=tuple(config.field_dims), task_names=tuple(config.task_names),
                       meta={"source": "synthetic", "seed": seed, "config": config})


def train_test_split(data: CascadeData, test_fraction: float, seed: int = 0) -> tuple[CascadeData, CascadeData]:
    """Random split by a seeded permutation."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(round(len(data) * test_fraction)))
    return data.subset(perm[n_test:]), data.subset(perm[:n_test])


def preset_config(preset: str = "demo", scale: Optional[float] = None,
                  field_dims: Optional[Sequence[int]] = None) -> SyntheticConfig:
    """A preset's configuration, optionally with scaled or replaced cardinalities."""
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = PRESETS[preset]
    if field_dims is not None:
        config = replace(config, field_dims=tuple(int(n) for n in field_dims))
    if scale is not None:
        config = config.scaled(scale)
    return config


def load_synthetic(preset: str = "demo", num_samples: int = 300_000, seed: int = 0,
                   test_fraction: float = 0.2, config: Optional[SyntheticConfig] = None,
                   field_dims: Optional[Sequence[int]] = None, scale: Optional[float] = None
                   ) -> tuple[CascadeData, CascadeData]:
    """A preset's data split into (train, test)."""
    if config is None:
        config = preset_config(preset, scale, field_dims)
    else:
        if field_dims is not None:
            config = replace(config, field_dims=tuple(field_dims))
        if scale is not None:
            config = config.scaled(scale)
    return train_test_split(generate(num_samples, config, seed), test_fraction, seed)
