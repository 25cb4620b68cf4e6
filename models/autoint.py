"""AutoInt (Song et al., 2019): stacked multi-head self-attention over field embeddings; AutoInt+ adds
an MLP over the same embeddings, and `use_wide` a first-order term."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recsys.batch import Batch
from recsys.embedding import FeatureEmbedding
from recsys.features.schema import Schema
from recsys.layers import MLP, init_linear_layers


class MultiHeadSelfAttention(nn.Module):
    def __init__(self, input_dim: int, attention_dim: int, num_heads: int, *, dropout: float = 0.0,
                 use_residual: bool = True, use_scale: bool = False, layer_norm: bool = False):
        super().__init__()
        if attention_dim % num_heads:
            raise ValueError(f"attention_dim {attention_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = attention_dim // num_heads
        self.qkv = nn.Linear(input_dim, 3 * attention_dim, bias=False)
        self.residual = (
            (nn.Linear(input_dim, attention_dim, bias=False) if input_dim != attention_dim else nn.Identity())
            if use_residual else None
        )
        self.scale = self.head_dim ** -0.5 if use_scale else 1.0
        self.dropout = dropout
        self.norm = nn.LayerNorm(attention_dim) if layer_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, f, _ = x.shape
        q, k, v = self.qkv(x).view(b, f, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, scale=self.scale
        )
        out = out.transpose(1, 2).reshape(b, f, -1)
        if self.residual is not None:
            out = out + self.residual(x)
        return torch.relu(self.norm(out))


class AutoInt(nn.Module):
    def __init__(
        self,
        schema: Schema,
        embedding_dim: int = 10,
        attention_layers: int = 3,
        num_heads: int = 2,
        attention_dim: int = 40,
        use_residual: bool = True,
        use_scale: bool = False,
        layer_norm: bool = False,
        use_wide: bool = False,
        dnn_hidden_units: Sequence[int] = (),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ):
        super().__init__()
        tables = {"default": embedding_dim, "linear": 1} if use_wide else {"default": embedding_dim}
        self.embedding = FeatureEmbedding(schema, tables=tables)
        self.use_wide = use_wide
        self.attention = nn.Sequential(*(
            MultiHeadSelfAttention(
                embedding_dim if i == 0 else attention_dim, attention_dim, num_heads, dropout=dropout,
                use_residual=use_residual, use_scale=use_scale, layer_norm=layer_norm,
            )
            for i in range(attention_layers)
        ))
        num_fields = self.embedding.num_fields
        self.fc = nn.Linear(num_fields * attention_dim, 1)
        self.dnn = (
            MLP(num_fields * embedding_dim, dnn_hidden_units, activation_name=activation, dropout=dropout,
                batch_norm=batch_norm, output_dim=1)
            if dnn_hidden_units else None
        )
        init_linear_layers(self)
        for layer in self.attention:  # Q, K and V are fused for speed but initialised as three Linears
            for chunk in layer.qkv.weight.data.chunk(3, dim=0):
                nn.init.xavier_normal_(chunk)

    def forward(self, batch: Batch) -> torch.Tensor:
        emb = self.embedding(batch)
        logit = self.fc(self.attention(emb).flatten(1)).squeeze(-1)
        if self.dnn is not None:
            logit = logit + self.dnn(emb.flatten(1)).squeeze(-1)
        if self.use_wide:
            logit = logit + self.embedding(batch, "linear").sum(dim=(1, 2))
        return logit
