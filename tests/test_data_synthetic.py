"""The synthetic cascade generator: presets, rates, oracle AUC, stage dependence, determinism."""
import math
from dataclasses import replace

import pytest
import torch

from pimm_fast.data import PRESETS, generate, load, preset_config
from pimm_fast.data.synthetic import ALICCP_FIELD_DIMS, SyntheticConfig


def conditional_rates(data):
    r = data.rates()
    return [r[0]] + [r[t] / r[t - 1] for t in range(1, len(r))]


def binomial_tolerance(p, n, sigmas=5.0):
    return sigmas * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("preset,samples", [("demo", 100_000), ("demo3", 100_000), ("aliccp", 400_000),
                                            ("industrial", 200_000)])
def test_rates_hit_their_targets(preset, samples):
    config = PRESETS[preset]
    data = generate(samples, config, seed=2)
    assert data.x.dtype == torch.int32 and data.y.dtype == torch.float32
    assert (data.x.max(0).values < torch.tensor(config.field_dims)).all() and (data.x >= 0).all()
    reach = samples
    for t, (rate, target) in enumerate(zip(conditional_rates(data), config.rates)):
        # the bias is solved on the sample's own probabilities: only the Bernoulli draws are noise
        assert abs(rate - target) < binomial_tolerance(target, reach), (preset, t, rate, target)
        reach = int(data.y[:, t].sum())
    for t in range(1, config.num_tasks):
        assert torch.all(data.y[:, t] <= data.y[:, t - 1]) and torch.all(data.probs[:, t] <= data.probs[:, t - 1])


def test_aliccp_preset_is_ali_ccp_shaped():
    config = PRESETS["aliccp"]
    assert config.field_dims == ALICCP_FIELD_DIMS and len(config.field_dims) == 18
    assert config.rates == (0.04, 0.005) and config.task_names == ("click", "conversion")
    small = preset_config("aliccp", scale=0.01)
    assert small.field_dims[0] == round(238635 * 0.01) and min(small.field_dims) == 2
    assert PRESETS["industrial"].num_tasks == 3 and PRESETS["demo3"].num_tasks == 3


def test_oracle_auc_is_reproducible_and_informative():
    a = generate(60_000, PRESETS["demo"], seed=7)
    b = generate(60_000, PRESETS["demo"], seed=7)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.probs, b.probs)
    assert a.oracle_auc() == b.oracle_auc()
    c = generate(60_000, PRESETS["demo"], seed=8)
    assert not torch.equal(a.x, c.x)
    for u, v in zip(a.oracle_auc(), c.oracle_auc()):
        # another seed draws another world (latent vectors, stage directions): close, not equal
        assert 0.8 < u < 1.0 and 0.8 < v < 1.0 and abs(u - v) < 0.06
    shuffled = a.probs[torch.randperm(len(a))]
    assert abs(torch.tensor(a.oracle_auc()).mean() - 0.5) > abs(
        torch.tensor([__import__("pimm_fast").metrics.auc(shuffled[:, t], a.y[:, t]) for t in range(2)]).mean()
        - 0.5)


def test_stages_depend_on_each_other_through_the_latent_directions():
    def stage_correlation(rho):
        data = generate(100_000, replace(PRESETS["demo"], stage_correlation=rho, interaction=0.0), seed=3)
        q0 = data.probs[:, 0].double()
        q1 = (data.probs[:, 1].double() / q0).clamp(1e-12, 1 - 1e-12)
        l0, l1 = torch.logit(q0.clamp(1e-12, 1 - 1e-12)), torch.logit(q1)
        return float(torch.corrcoef(torch.stack([l0, l1]))[0, 1])

    assert stage_correlation(0.9) > 0.7
    assert abs(stage_correlation(0.0)) < stage_correlation(0.9) - 0.4


def test_zipf_popularity():
    data = generate(50_000, SyntheticConfig(field_dims=(1000, 10)), seed=0)
    counts = torch.bincount(data.x[:, 0].long(), minlength=1000).sort(descending=True).values.double()
    assert counts[0] > 20 * counts[99]  # a heavy head
    assert (counts > 0).sum() > 500  # and a long tail


def test_bad_configs_and_presets():
    with pytest.raises(ValueError, match="rates must lie in"):
        SyntheticConfig(rates=(0.1, 1.5))
    with pytest.raises(ValueError, match="same number"):
        SyntheticConfig(rates=(0.1,), task_names=("click",))
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        preset_config("nope")
    with pytest.raises(ValueError, match="scale must be > 0"):
        preset_config("aliccp", scale=0)
    with pytest.raises(ValueError, match="num_samples"):
        generate(0)


def test_load_synthetic_spec_splits():
    s = load("synthetic:demo3?samples=10000&seed=4")
    assert (len(s.train), len(s.valid), len(s.test)) == (7000, 1000, 2000)
    assert s.task_names == ("click", "conversion", "core_conversion") and s.train.probs is not None
    assert s.stats["oracle_auc"] == generate(10000, PRESETS["demo3"], seed=4).oracle_auc()
    scaled = load("synthetic:aliccp", samples=5000, scale=0.001, valid_fraction=0.0)
    assert scaled.valid is None and scaled.field_dims == preset_config("aliccp", scale=0.001).field_dims
