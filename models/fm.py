"""Factorization machine (Rendle, 2010): first-order weights plus pairwise dot products of embeddings."""

from __future__ import annotations

import torch
from torch import nn

from recsys.batch import Batch
from recsys.embedding import FeatureEmbedding
from recsys.features.schema import Schema
from recsys.layers import fm_interaction


class FM(nn.Module):
    def __init__(self, schema: Schema, embedding_dim: int = 10):
        super().__init__()
        # One layer, two named table sets: the factors and the first-order ("linear") weights.
        self.embedding = FeatureEmbedding(schema, tables={"default": embedding_dim, "linear": 1})
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, batch: Batch) -> torch.Tensor:
        first_order = self.embedding(batch, "linear").sum(dim=(1, 2)) + self.bias
        return first_order + fm_interaction(self.embedding(batch))
