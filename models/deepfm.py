"""DeepFM (Guo et al., 2017): an FM and an MLP over the same embeddings, logits summed."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recsys.batch import Batch
from recsys.embedding import FeatureEmbedding
from recsys.features.schema import Schema
from recsys.layers import MLP, fm_interaction, init_linear_layers


class DeepFM(nn.Module):
    def __init__(
        self,
        schema: Schema,
        embedding_dim: int = 10,
        hidden_units: Sequence[int] = (400, 400, 400),
        activation: str = "relu",
        dropout: float = 0.2,
        batch_norm: bool = True,
    ):
        super().__init__()
        self.embedding = FeatureEmbedding(schema, tables={"default": embedding_dim, "linear": 1})
        self.bias = nn.Parameter(torch.zeros(1))
        self.dnn = MLP(
            self.embedding.num_fields * embedding_dim, hidden_units, activation_name=activation,
            dropout=dropout, batch_norm=batch_norm, output_dim=1,
        )
        init_linear_layers(self)

    def forward(self, batch: Batch) -> torch.Tensor:
        emb = self.embedding(batch)
        fm = self.embedding(batch, "linear").sum(dim=(1, 2)) + self.bias + fm_interaction(emb)
        return fm + self.dnn(emb.flatten(1)).squeeze(-1)
