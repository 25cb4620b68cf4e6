"""Ranking and calibration metrics on whole evaluation sets, tensorised (sorts and scatters, no loops).

AUC is the Mann-Whitney statistic with tied scores given their average rank, so it matches
scikit-learn's roc_auc_score. gAUC is the impression-weighted mean of per-group AUCs over groups that
have both classes (as in DIN and FuxiCTR).
"""

from __future__ import annotations

import torch


def _average_ranks(keys: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """1-based ranks of sorted positions with ties (equal `keys` along `order`) averaged."""
    n = order.numel()
    sorted_keys = keys[order]
    _, inverse, counts = torch.unique_consecutive(sorted_keys, return_inverse=True, return_counts=True, dim=0)
    ends = torch.cumsum(counts, 0).to(torch.float64)
    mean_rank = ends - (counts.to(torch.float64) - 1) / 2
    ranks = torch.empty(n, dtype=torch.float64, device=keys.device)
    ranks[order] = mean_rank[inverse]
    return ranks


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    scores, labels = scores.detach().flatten().double(), labels.detach().flatten().double()
    n_pos = labels.sum()
    n_neg = labels.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores, torch.argsort(scores, stable=True))
    return float(((ranks * labels).sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def group_auc(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> float:
    scores, labels = scores.detach().flatten().double(), labels.detach().flatten().double()
    groups = groups.detach().flatten().long()
    _, gid = torch.unique(groups, return_inverse=True)
    n_groups = int(gid.max()) + 1 if gid.numel() else 0
    # Order by (group, score): sort by score, then stably by group.
    by_score = torch.argsort(scores, stable=True)
    order = by_score[torch.argsort(gid[by_score], stable=True)]
    keys = torch.stack([gid.double(), scores], dim=1)
    global_ranks = _average_ranks(keys, order)
    sizes = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, gid, torch.ones_like(scores))
    starts = torch.cumsum(sizes, 0) - sizes  # ranks are global: subtract each group's start
    ranks = global_ranks - starts[gid]
    n_pos = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, gid, labels)
    n_neg = sizes - n_pos
    pos_rank_sum = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, gid, ranks * labels)
    valid = (n_pos > 0) & (n_neg > 0)
    if not bool(valid.any()):
        return float("nan")
    per_group = (pos_rank_sum[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2) / (n_pos[valid] * n_neg[valid])
    weights = sizes[valid]
    return float((per_group * weights).sum() / weights.sum())


def logloss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Binary cross-entropy from logits (numerically stable), mean over rows."""
    return float(torch.nn.functional.binary_cross_entropy_with_logits(logits.detach().double().flatten(), labels.detach().double().flatten()))


def ctr_metrics(logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None = None) -> dict[str, float]:
    # Ranks of logits equal ranks of probabilities, without sigmoid's saturation ties.
    out = {"auc": auc(logits, labels), "logloss": logloss(logits, labels)}
    if groups is not None:
        out["gauc"] = group_auc(logits, labels, groups)
    return out


# ---------------------------------------------------------------------------------------- next item
FIRST_ITEM_ID = 2  # ids 0 (padding) and 1 (out-of-vocabulary) are never recommended


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row's target among all rankable items, float64 [B]; inf where the target can
    never be recommended (out-of-vocabulary, or one of the excluded items: a miss at every cutoff).

    scores [B, N] over the whole item table; targets [B] item ids; exclude [B, M] item ids to leave out of
    the ranking (the user's history; 0 entries are padding). Padding and out-of-vocabulary are never
    ranked. Ties count against the target: an item scored equal to it ranks above it, so a model that
    scores every item alike gets the worst rank, not the best."""
    scores = scores.detach().float().clone()
    scores[:, :FIRST_ITEM_ID] = float("-inf")
    scores.scatter_(1, exclude, float("-inf"))
    own = scores.gather(1, targets.unsqueeze(1))  # [B, 1]
    above = (scores >= own).sum(dim=1) - 1  # every item scored at least as high, the target itself not counted
    ranks = (above + 1).to(torch.float64)
    unreachable = (targets < FIRST_ITEM_ID) | torch.isneginf(own.squeeze(1))
    return torch.where(unreachable, torch.full_like(ranks, float("inf")), ranks)


def ranking_metrics(ranks: torch.Tensor, ks: tuple[int, ...] = (5, 10, 20)) -> dict[str, float]:
    """HR@K, NDCG@K (one relevant item: 1 / log2(rank + 1) within the cutoff) and MRR over the full
    ranking, averaged over all rows; an unreachable target (rank inf) counts as a miss everywhere."""
    ranks = ranks.to(torch.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks <= k
        out[f"hr@{k}"] = float(hit.double().mean())
        out[f"ndcg@{k}"] = float(torch.where(hit, 1.0 / torch.log2(ranks.clamp(max=1e18) + 1.0), 0.0).mean())
    out["mrr"] = float((1.0 / ranks).mean())
    return out
