"""DIN (Zhou et al., KDD 2018): target attention over the user's behaviours, then an MLP.

The same class is the DIN-long baseline of SDIM's comparison (`conf/model/din_long.yaml`): attention
over the whole long history. `max_history=k` attends over the k most recent behaviours only (and embeds
nothing older), the short-term setting.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recsys.batch import Batch
from recsys.features.schema import Schema
from recsys.layers import MLP, init_linear_layers
from recsys.sequence import BehaviourEmbedding, TargetAttention


class DIN(nn.Module):
    def __init__(
        self,
        schema: Schema,
        embedding_dim: int = 16,
        attention_hidden_units: Sequence[int] = (80, 40),
        attention_activation: str = "dice",
        attention_softmax: bool = False,
        hidden_units: Sequence[int] = (200, 80),
        activation: str = "dice",
        dropout: float = 0.0,
        batch_norm: bool = False,
        max_history: int | None = None,
    ):
        super().__init__()
        self.behaviours = BehaviourEmbedding(schema, embedding_dim)
        self.max_history = max_history
        key_dim = self.behaviours.num_pairs * embedding_dim
        self.attention = TargetAttention(key_dim, attention_hidden_units, attention_activation, attention_softmax)
        input_dim = self.behaviours.num_context * embedding_dim + key_dim + self.behaviours.value_dim
        self.dnn = MLP(input_dim, hidden_units, activation_name=activation, dropout=dropout,
                       batch_norm=batch_norm, output_dim=1)
        init_linear_layers(self)

    def forward(self, batch: Batch) -> torch.Tensor:
        view = self.behaviours(batch, last=self.max_history)
        interest = self.attention(view.target, view.keys, view.values, view.mask)
        return self.dnn(torch.cat([view.context, view.target, interest], dim=1)).squeeze(-1)
