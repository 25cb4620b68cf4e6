"""MQSA-TED (Zhu et al., WSDM 2024, "Collaboration and Transition: Distilling Item Transitions into
Multi-Query Self-Attention for Sequential Recommendation").

Multi-query self-attention: two towers over the same input layer (item table, positions and the same
dropout sample), each with its own attention, feed-forward and LayerNorm weights:
- the short-query tower is a SASRec block: at position t the query is the input at t;
- the long-query tower's query at t is the mean of the `long_window` most recent inputs up to and
  including t (padding left out); keys and values are the inputs, as in the short tower.
Both towers score against the one item table, and the logits are mixed alpha * short + (1 - alpha) * long.
That mixture is linear in the item table, so it is one user vector, alpha * short + (1 - alpha) * long,
which is what this model returns (and what a retrieval index searches with).

Transition-aware embedding distillation (TED) is a training loss, so it lives in the task
(`recsys.tasks.next_item`, `distill_weight`): the teacher is the item -> next item count matrix of the
training sequences, the student this model's `item_similarity`.

The next-item contract is SASRec's (see models/sasrec.py).
"""

from __future__ import annotations

import torch
from torch import nn

from recsys.batch import Batch
from recsys.features.schema import Schema
from recsys.models.sasrec import init_attention_layers
from recsys.sequence import ItemSequenceEmbedding, NextItemModel, SelfAttentionBlock, causal_attention_bias, recent_mean


class MQSATED(NextItemModel):
    def __init__(self, schema: Schema, embedding_dim: int = 64, max_len: int = 50, num_blocks: int = 1, num_heads: int = 1,
                 dropout: float = 0.5, long_window: int = 3, alpha: float = 0.5):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha weighs the short tower against the long one and must be in [0, 1], got {alpha}")
        if long_window < 1:
            raise ValueError(f"long_window must be at least 1, got {long_window}")
        self.items = ItemSequenceEmbedding(schema, embedding_dim, max_len, dropout)
        self.short_blocks = nn.ModuleList(SelfAttentionBlock(embedding_dim, num_heads, dropout) for _ in range(num_blocks))
        self.long_blocks = nn.ModuleList(SelfAttentionBlock(embedding_dim, num_heads, dropout) for _ in range(num_blocks))
        self.short_norm = nn.LayerNorm(embedding_dim, eps=1e-8)
        self.long_norm = nn.LayerNorm(embedding_dim, eps=1e-8)
        self.long_window, self.alpha = long_window, alpha
        init_attention_layers(self)

    def towers(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The short and long towers' vectors, [B, L, D] each."""
        x, mask = self.items(batch)
        bias = causal_attention_bias(mask)
        short, long = x, x
        for short_block, long_block in zip(self.short_blocks, self.long_blocks):  # a loop over layers
            short = short_block(short, short, mask, bias)
            long = long_block(recent_mean(long, mask, self.long_window), long, mask, bias)
        return self.short_norm(short), self.long_norm(long)

    def sequence_vectors(self, batch: Batch) -> torch.Tensor:
        short, long = self.towers(batch)
        return self.alpha * short + (1.0 - self.alpha) * long
