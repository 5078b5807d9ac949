import itertools
import math

import pytest
import torch

from pimm_fast.metrics import auc


def brute_force_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("n, levels", [(2, None), (50, None), (200, 5), (333, 2)])
def test_auc_equals_pairwise_definition(n, levels):
    scores = torch.rand(n)
    if levels:
        scores = (scores * levels).floor()  # many ties
    labels = (torch.rand(n) < 0.3).float()
    labels[0], labels[1] = 1.0, 0.0
    assert auc(scores, labels) == pytest.approx(brute_force_auc(scores.tolist(), labels.tolist()), abs=1e-12)


def test_auc_edge_cases():
    assert auc(torch.tensor([0.1, 0.9]), torch.tensor([0, 1])) == 1.0
    assert auc(torch.tensor([0.9, 0.1]), torch.tensor([0, 1])) == 0.0
    assert auc(torch.tensor([0.5, 0.5]), torch.tensor([0, 1])) == 0.5
    assert math.isnan(auc(torch.tensor([0.2, 0.3]), torch.tensor([1, 1])))
    with pytest.raises(ValueError, match="differ in size"):
        auc(torch.rand(3), torch.rand(4))
    with pytest.raises(ValueError, match="NaN"):
        auc(torch.tensor([float("nan"), 0.2]), torch.tensor([0, 1]))


# --- against scikit-learn (a test dependency only) and by hand ----------------------------------------------
sklearn_metrics = pytest.importorskip("sklearn.metrics")

from pimm_fast.metrics import (cascade_metrics, conditional_auc, expected_calibration_error,  # noqa: E402
                               funnel_violations, log_loss)


@pytest.mark.parametrize("n, levels, rate", [(1000, None, 0.3), (5000, 7, 0.05), (20000, 100, 0.002),
                                             (300, 2, 0.5), (4000, 1000, 0.01)])
def test_auc_equals_scikit_learn(n, levels, rate):
    gen = torch.Generator().manual_seed(n)
    scores = torch.rand(n, generator=gen)
    if levels:
        scores = (scores * levels).floor() / levels  # ties, many of them across classes
    labels = (torch.rand(n, generator=gen) < rate).float()
    labels[:2] = torch.tensor([1.0, 0.0])
    expected = sklearn_metrics.roc_auc_score(labels.numpy(), scores.numpy())
    assert abs(auc(scores, labels) - expected) <= 1e-12
    assert abs(auc(scores.float(), labels) - expected) <= 1e-12


def test_log_loss_and_conditional_auc_equal_scikit_learn():
    gen = torch.Generator().manual_seed(3)
    p = torch.rand(3000, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    y = (torch.rand(3000, generator=gen) < p).double()
    assert abs(log_loss(p, y) - sklearn_metrics.log_loss(y.numpy(), p.numpy())) <= 1e-12
    passed = torch.rand(3000, generator=gen) < 0.4
    y_t = y * passed
    keep = passed.numpy()
    expected = sklearn_metrics.roc_auc_score(y_t.numpy()[keep], p.numpy()[keep])
    assert abs(conditional_auc(p, y_t, passed.double()) - expected) <= 1e-12


def test_expected_calibration_error_by_hand():
    p = torch.tensor([0.05, 0.05, 0.15, 0.95, 0.96, 0.5])
    y = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    # 10 bins: [0.0, 0.1): mean p 0.05, rate 0.5, 2 samples; [0.1, 0.2): 0.15 vs 0, 1; [0.9, 1]: 0.955 vs 1, 2;
    # [0.5, 0.6): 0.5 vs 1, 1
    expected = (2 * 0.45 + 1 * 0.15 + 2 * 0.045 + 1 * 0.5) / 6
    assert expected_calibration_error(p, y, bins=10) == pytest.approx(expected, abs=1e-7)
    assert expected_calibration_error(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])) == 0.0


def test_funnel_violations_and_the_whole_set():
    probs = torch.tensor([[0.5, 0.6, 0.1], [0.5, 0.4, 0.5], [0.9, 0.1, 0.05], [0.2, 0.2, 0.3]])
    assert funnel_violations(probs) == [0.25, 0.5]
    labels = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    result = cascade_metrics(probs, labels, ["a", "b", "c"], oracle=probs)
    assert result["funnel_violation"] == [None, 0.25, 0.5] and result["conditional_auc"][0] is None
    assert result["positives"] == [3, 2, 1] and result["samples"] == 4
    assert result["auc"] == result["oracle_auc"]
    assert result["conditional_auc"][1] == auc(probs[[0, 1, 3], 1], labels[[0, 1, 3], 1])
    assert result["conditional_auc"][2] == auc(probs[[0, 3], 2], labels[[0, 3], 2])


def test_a_single_class_task_is_null_with_a_warning():
    import json

    probs = torch.rand(50, 2)
    labels = torch.zeros(50, 2)
    labels[:10, 0] = 1.0  # task 1 has no positive
    with pytest.warns(RuntimeWarning, match="'buy' has a single class"):
        result = cascade_metrics(probs, labels, ["click", "buy"])
    assert result["auc"][1] is None and result["conditional_auc"][1] is None and result["auc"][0] is not None
    json.dumps(result, allow_nan=False)  # valid JSON: null, never NaN
