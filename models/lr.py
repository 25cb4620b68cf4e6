"""Logistic regression: one weight per feature value plus a bias."""

from __future__ import annotations

import torch
from torch import nn

from recsys.batch import Batch
from recsys.embedding import FeatureEmbedding
from recsys.features.schema import Schema


class LR(nn.Module):
    def __init__(self, schema: Schema):
        super().__init__()
        # Sequences contribute the sum of their items' weights, as a bag of features would.
        self.embedding = FeatureEmbedding(schema, 1, seq_pooling="sum")
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.embedding(batch).sum(dim=(1, 2)) + self.bias
