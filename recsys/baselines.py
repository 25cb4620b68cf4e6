"""Baselines that learn nothing but counts, scored like any run, so a leaderboard shows what a model adds.

- Next-item: most popular (every user gets the items with the most training interactions, their own
  history masked), evaluated by the same full-ranking evaluator as the models.
"""

from __future__ import annotations

from typing import Any

import torch

from recsys.metrics import ranking_metrics, target_ranks


def most_popular_next_item(datamodule: Any, split: str = "test", ks: tuple[int, ...] = (5, 10, 20)) -> dict[str, float]:
    """HR@K, NDCG@K and MRR of ranking items by their training interaction count (the item vocabulary's
    counts, fitted on the training histories), on `split` of a NextItemDataModule."""
    from recsys.features import FeaturePipeline

    history = datamodule.schema.sequence[0]
    counts = FeaturePipeline.load(datamodule.prepared.features_dir).row_counts()[history.vocab_key]
    popularity = torch.as_tensor(counts, dtype=torch.float32)
    rows = datamodule.load(split)
    ranks = [target_ranks(popularity.expand(len(chunk), -1), chunk.target, chunk.seq[:, 0])
             for chunk in (rows.take(slice(i, i + 1024)) for i in range(0, len(rows), 1024))]
    return ranking_metrics(torch.cat(ranks), ks)
