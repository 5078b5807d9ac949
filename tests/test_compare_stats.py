"""Welch's t-test of pimm-fast compare, against SciPy (a test dependency only)."""
import math

import pytest

from pimm_fast.train.stats import betainc, t_two_sided_p, welch_t_test

stats = pytest.importorskip("scipy.stats")
special = pytest.importorskip("scipy.special")

SAMPLES = [
    ([0.801, 0.803, 0.799, 0.805, 0.802], [0.795, 0.797, 0.790, 0.799, 0.796]),
    ([0.9, 0.91], [0.7, 0.95, 0.8]),
    ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [1.1, 2.2, 2.9]),
    ([0.5, 0.5000001, 0.4999999], [0.5, 0.5, 0.50000005]),
    ([10.0, 11.0, 9.0], [-10.0, -11.0, -9.0]),
]


@pytest.mark.parametrize("a, b", SAMPLES)
def test_welch_equals_scipy(a, b):
    ours = welch_t_test(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert ours["t"] == pytest.approx(float(ref.statistic), rel=1e-8)  # SciPy loses ~1e-9 in case 4

    assert ours["p"] == pytest.approx(float(ref.pvalue), rel=1e-8, abs=1e-15)


@pytest.mark.parametrize("a, b, x", [(0.5, 0.5, 0.3), (2.5, 0.5, 0.9), (40.0, 0.5, 0.999), (0.7, 3.0, 0.01),
                                     (200.0, 0.5, 0.5)])
def test_incomplete_beta_equals_scipy(a, b, x):
    assert betainc(a, b, x) == pytest.approx(float(special.betainc(a, b, x)), rel=1e-11, abs=1e-300)


def test_t_distribution_tails():
    for t, df in ((0.0, 3.0), (2.0, 4.5), (-12.0, 8.0), (1.5, 1000.0)):
        assert t_two_sided_p(t, df) == pytest.approx(2 * float(stats.t.sf(abs(t), df)), rel=1e-10)
    assert t_two_sided_p(math.inf, 3.0) == 0.0


def test_undefined_cases():
    assert welch_t_test([0.5], [0.4, 0.6]) is None
    assert welch_t_test([0.5, 0.5], [0.5, 0.5]) is None
    with pytest.raises(ValueError):
        betainc(0.0, 1.0, 0.5)
