"""FinalMLP (Mao et al., 2023): two MLP streams over gated copies of the embeddings, fused by
multi-head bilinear interaction aggregation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recsys.batch import Batch
from recsys.embedding import FeatureEmbedding
from recsys.features.schema import Schema
from recsys.layers import MLP, init_linear_layers


class FeatureGate(nn.Module):
    """Stream-specific feature selection: 2 * sigmoid(MLP(context)) scales each embedding entry.
    The context is the embeddings of a few fields (own tables), or a learned vector when none is given."""

    def __init__(self, schema: Schema, embedding_dim: int, context: Sequence[str], hidden_units: Sequence[int], output_dim: int):
        super().__init__()
        if context:
            self.context = FeatureEmbedding(schema, embedding_dim, fields=list(context))
            input_dim = self.context.output_dim()
        else:
            self.context = None
            self.context_bias = nn.Parameter(torch.zeros(1, embedding_dim))
            input_dim = embedding_dim
        self.gate = nn.Sequential(MLP(input_dim, hidden_units, output_dim=output_dim), nn.Sigmoid())

    def forward(self, batch: Batch, flat_emb: torch.Tensor) -> torch.Tensor:
        if self.context is not None:
            ctx = self.context.flat(batch)
        else:
            ctx = self.context_bias.expand(flat_emb.shape[0], -1)
        return flat_emb * (2.0 * self.gate(ctx))


class InteractionAggregation(nn.Module):
    """w_x^T x + w_y^T y + sum_h x_h^T W_h y_h over `num_heads` chunks of the two stream outputs."""

    def __init__(self, x_dim: int, y_dim: int, num_heads: int):
        super().__init__()
        if x_dim % num_heads or y_dim % num_heads:
            raise ValueError(f"num_heads {num_heads} must divide both stream widths {x_dim} and {y_dim}")
        self.num_heads = num_heads
        self.x_head, self.y_head = x_dim // num_heads, y_dim // num_heads
        self.w_x = nn.Linear(x_dim, 1)
        self.w_y = nn.Linear(y_dim, 1)
        self.w_xy = nn.Parameter(torch.empty(num_heads * self.x_head * self.y_head, 1))
        nn.init.xavier_normal_(self.w_xy)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        # One [B, dx] x [dx, dy] product per head (a bmm over heads), not B*H tiny products.
        xh = x.view(b, self.num_heads, self.x_head).transpose(0, 1)
        yh = y.view(b, self.num_heads, self.y_head).transpose(0, 1)
        w = self.w_xy.view(self.num_heads, self.x_head, self.y_head)
        bilinear = (torch.bmm(xh, w) * yh).sum(dim=(0, 2))
        return (self.w_x(x) + self.w_y(y)).squeeze(-1) + bilinear


class FinalMLP(nn.Module):
    def __init__(
        self,
        schema: Schema,
        embedding_dim: int = 10,
        mlp1_hidden_units: Sequence[int] = (400,),
        mlp1_activation: str = "relu",
        mlp1_dropout: float = 0.4,
        mlp1_batch_norm: bool = True,
        mlp2_hidden_units: Sequence[int] = (100,),
        mlp2_activation: str = "relu",
        mlp2_dropout: float = 0.4,
        mlp2_batch_norm: bool = True,
        use_fs: bool = True,
        fs_hidden_units: Sequence[int] = (400,),
        fs1_context: Sequence[str] = ("user",),
        fs2_context: Sequence[str] = ("item",),
        num_heads: int = 5,
    ):
        super().__init__()
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        width = self.embedding.output_dim()
        self.use_fs = use_fs
        if use_fs:
            self.gate1 = FeatureGate(schema, embedding_dim, list(fs1_context), fs_hidden_units, width)
            self.gate2 = FeatureGate(schema, embedding_dim, list(fs2_context), fs_hidden_units, width)
        self.mlp1 = MLP(width, mlp1_hidden_units, activation_name=mlp1_activation, dropout=mlp1_dropout, batch_norm=mlp1_batch_norm)
        self.mlp2 = MLP(width, mlp2_hidden_units, activation_name=mlp2_activation, dropout=mlp2_dropout, batch_norm=mlp2_batch_norm)
        self.fusion = InteractionAggregation(self.mlp1.output_dim, self.mlp2.output_dim, num_heads)
        init_linear_layers(self)

    def forward(self, batch: Batch) -> torch.Tensor:
        flat = self.embedding.flat(batch)
        x1, x2 = (self.gate1(batch, flat), self.gate2(batch, flat)) if self.use_fs else (flat, flat)
        return self.fusion(self.mlp1(x1), self.mlp2(x2))
