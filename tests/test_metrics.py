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
