"""SASRec (Kang and McAuley, ICDM 2018): causal self-attention over the user's recent items; the vector at
each position, dotted with the (tied) item table, scores the next item.

The block is the original code's (`recsys.sequence.SelfAttentionBlock`: queries from the layer-normed
stream, keys and values from the raw one, no output projection, a final LayerNorm after the blocks),
trained as MQSA-TED's short tower is: full-softmax cross-entropy at every position (the task's), not the
paper's one sampled negative.

The next-item contract (what `recsys.tasks.next_item.NextItemTask` and the export use):
    sequence_vectors(batch) -> [B, L, D]   the query vector at every position of the history window
    forward(batch)          -> [B, D]      the vector at the newest position: the user vector
    item_vectors()          -> [items, D]  the item matrix scored against (row = item id)
    item_similarity(items, temperature, first) -> [H, items - first]
                                           item-item dot products / temperature (the distillation student)
"""

from __future__ import annotations

import torch
from torch import nn

from recsys.batch import Batch
from recsys.features.schema import Schema
from recsys.sequence import ItemSequenceEmbedding, NextItemModel, SelfAttentionBlock, causal_attention_bias


def init_attention_layers(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases for every Linear (the TensorFlow dense default the original
    SASRec and MQSA-TED use); LayerNorms start as the identity."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


class SASRec(NextItemModel):
    def __init__(self, schema: Schema, embedding_dim: int = 64, max_len: int = 50, num_blocks: int = 1, num_heads: int = 1,
                 dropout: float = 0.5):
        super().__init__()
        self.items = ItemSequenceEmbedding(schema, embedding_dim, max_len, dropout)
        self.blocks = nn.ModuleList(SelfAttentionBlock(embedding_dim, num_heads, dropout) for _ in range(num_blocks))
        self.final_norm = nn.LayerNorm(embedding_dim, eps=1e-8)
        init_attention_layers(self)

    def sequence_vectors(self, batch: Batch) -> torch.Tensor:
        x, mask = self.items(batch)
        bias = causal_attention_bias(mask)
        for block in self.blocks:  # a loop over layers, not features or rows
            x = block(x, x, mask, bias)
        return self.final_norm(x)
