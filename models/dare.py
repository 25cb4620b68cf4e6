"""DARE (Feng et al., 2024, "Long-Sequence Recommendation Models Need Decoupled Embeddings").

Attention and representation pull one embedding in different directions, so DARE gives each behaviour
field two tables, both named table sets of the one shared embedding layer: "attention" (which can be
narrower) scores behaviours against the target, "representation" (the default set) is what gets
aggregated. The search is soft: scaled dot-product scores over the whole long history, the top-k
behaviours kept, softmax over their scores, then the weighted sum of their representation embeddings.
The target-aware representation feeds the MLP together with its element-wise product with the target
(as in the official code's `use_cross_feature`).

Recency (`recency_dim` > 0, the official code's `use_time` in "concat" mode): each history position has
an attention and a representation embedding of its log2 distance from the newest behaviour. The search
score adds the recency attention embedding's dot product with a learned query (the target's time
embedding in the official code, constant here) to the semantic score, each scaled by its own sqrt(dim),
and the aggregated representation carries the chosen behaviours' recency embeddings. Without it the
search ranks a behaviour from years ago the same as yesterday's.

`coupled=True` scores with the representation embeddings themselves (one table): the TWIN/DIN-style
baseline of the ablation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recsys.batch import Batch
from recsys.features.schema import Schema
from recsys.layers import MLP, init_linear_layers
from recsys.sequence import BehaviourEmbedding, RecencyEmbedding


class DARE(nn.Module):
    def __init__(
        self,
        schema: Schema,
        embedding_dim: int = 16,
        attention_dim: int | None = None,
        coupled: bool = False,
        top_k: int = 20,
        recency_dim: int = 16,
        hidden_units: Sequence[int] = (200, 80),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ):
        super().__init__()
        self.coupled = coupled
        self.attention_dim = embedding_dim if coupled or attention_dim is None else attention_dim
        self.behaviours = BehaviourEmbedding(schema, embedding_dim, None if coupled else {"attention": self.attention_dim})
        self.top_k = top_k
        self.scale = (self.behaviours.num_pairs * self.attention_dim) ** -0.5
        key_dim = self.behaviours.num_pairs * embedding_dim
        self.recency_dim = recency_dim
        if recency_dim:
            max_len = max(f.max_len for f in schema.sequence)
            self.recency = RecencyEmbedding(max_len, recency_dim)
            # Coupled: one recency table serves both, like the behaviour tables.
            self.recency_attention = self.recency if coupled else RecencyEmbedding(max_len, recency_dim)
            self.recency_query = nn.Parameter(torch.randn(recency_dim) * 1e-4)
        input_dim = (self.behaviours.num_context * embedding_dim + key_dim + self.behaviours.value_dim + recency_dim
                     + key_dim)
        self.dnn = MLP(input_dim, hidden_units, activation_name=activation, dropout=dropout,
                       batch_norm=batch_norm, output_dim=1)
        init_linear_layers(self)

    def search(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The search stage: top-k behaviours by attention score. Returns their softmax weights [B, k]
        (0 on padding) and their positions [B, k]."""
        table = "default" if self.coupled else "attention"
        view = self.behaviours(batch, table)
        scores = torch.bmm(view.keys, view.target.unsqueeze(-1)).squeeze(-1) * self.scale  # [B, L]
        if self.recency_dim:
            scores = scores + self.recency_attention() @ self.recency_query * self.recency_dim ** -0.5  # + [L]
        # A large negative instead of -inf: a short history's top-k includes padding, whose weight is
        # then zeroed below, and a row with no behaviour at all stays finite.
        scores = scores.masked_fill(view.mask == 0, -1e9)
        k = min(self.top_k, scores.shape[1])
        top_scores, positions = scores.topk(k, dim=1)
        weights = torch.softmax(top_scores, dim=1) * view.mask.gather(1, positions)
        return weights, positions

    def forward(self, batch: Batch) -> torch.Tensor:
        weights, positions = self.search(batch)
        # Only the k chosen behaviours are looked up in the representation tables.
        chosen = batch.seq.gather(2, positions.unsqueeze(1).expand(-1, batch.seq.shape[1], -1))
        view = self.behaviours(Batch(batch.sparse, batch.dense, chosen))
        values = view.values
        if self.recency_dim:
            values = torch.cat([values, self.recency(positions)], dim=-1)  # [B, k, (P + S) * D + R]
        interest = torch.bmm(weights.unsqueeze(1), values).squeeze(1)  # [B, (P + S) * D + R]
        cross = view.target * interest[:, : view.target.shape[1]]
        return self.dnn(torch.cat([view.context, view.target, interest, cross], dim=1)).squeeze(-1)
