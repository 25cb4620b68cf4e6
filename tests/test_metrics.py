"""AUC, gAUC and logloss against scikit-learn on random data with ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from recsys.metrics import auc, ctr_metrics, group_auc, logloss


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 5000)
    scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # rounding makes many ties
    assert auc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_group_auc_is_the_impression_weighted_mean_over_mixed_groups() -> None:
    rng = np.random.default_rng(7)
    groups = rng.integers(0, 40, 3000)
    labels = rng.integers(0, 2, 3000)
    scores = np.round(rng.normal(labels * 0.5 + groups * 0.01, 1.0), 2)
    num = den = 0.0
    for g in np.unique(groups):
        m = groups == g
        if labels[m].min() != labels[m].max():
            num += m.sum() * roc_auc_score(labels[m], scores[m])
            den += m.sum()
    assert group_auc(torch.tensor(scores), torch.tensor(labels), torch.tensor(groups)) == pytest.approx(num / den, abs=1e-12)


def test_logloss_from_logits_and_degenerate_auc() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0])
    assert logloss(logits, labels) == pytest.approx(log_loss(labels.numpy(), torch.sigmoid(logits.double()).numpy()), abs=1e-9)
    assert math.isnan(auc(torch.tensor([0.1, 0.2]), torch.tensor([1.0, 1.0])))
    out = ctr_metrics(logits, labels, torch.tensor([0, 0, 1, 1]))
    assert set(out) == {"auc", "logloss", "gauc"} and out["gauc"] == pytest.approx(0.5)


def test_next_item_ranks_and_metrics_on_a_hand_computed_example() -> None:
    """Items 0 (padding) and 1 (out-of-vocabulary) are never ranked; history items are masked; ties count
    against the target; an unreachable target is a miss everywhere."""
    from recsys.metrics import ranking_metrics, target_ranks

    scores = torch.tensor([
        # ids:  0    1    2    3    4    5    6
        [9.0, 9.0, 0.1, 0.9, 0.5, 0.7, 0.2],  # target 4; 3 is in the history, so only 5 ranks above 4
        [0.0, 0.0, 0.3, 0.3, 0.3, 0.1, 0.9],  # target 3 tied with 2 and 4: pessimistic rank 1 (6) + 2 ties + 1 = 4
        [0.0, 0.0, 0.5, 0.4, 0.3, 0.2, 0.1],  # target 2 is in the history (a repeat): unreachable
        [0.0, 0.0, 0.5, 0.4, 0.3, 0.2, 0.1],  # target 1 is out-of-vocabulary: unreachable
    ])
    targets = torch.tensor([4, 3, 2, 1])
    history = torch.tensor([[0, 3], [0, 0], [2, 5], [0, 6]])
    ranks = target_ranks(scores, targets, history)
    assert ranks.tolist() == [2.0, 4.0, math.inf, math.inf]
    metrics = ranking_metrics(ranks, ks=(1, 3, 5))
    assert metrics["hr@1"] == 0.0 and metrics["hr@3"] == 0.25 and metrics["hr@5"] == 0.5
    assert metrics["ndcg@3"] == pytest.approx((1 / math.log2(3)) / 4)
    assert metrics["ndcg@5"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / 4)
    assert metrics["mrr"] == pytest.approx((1 / 2 + 1 / 4) / 4)
    # Masking at test time: with the validation item (5) added to row 0's history, the target moves up.
    assert target_ranks(scores[:1], targets[:1], torch.tensor([[3, 5]])).tolist() == [1.0]


def test_a_masked_item_is_never_ranked_whatever_it_scores() -> None:
    from recsys.metrics import target_ranks

    torch.manual_seed(0)
    scores = torch.randn(64, 50)
    history = torch.randint(2, 50, (64, 8))
    targets = torch.randint(2, 50, (64,))
    low, high = scores.clone().scatter_(1, history, -100.0), scores.clone().scatter_(1, history, 100.0)
    # The history's own scores cannot move any target: they are out of the ranking.
    assert torch.equal(target_ranks(low, targets, history), target_ranks(high, targets, history))
    assert torch.isinf(target_ranks(scores, targets, history)).sum() == (history == targets.unsqueeze(1)).any(1).sum()
