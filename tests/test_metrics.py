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
