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


def gate_context(schema: Schema, given: Sequence[str] | None, setting: str, role: str) -> list[str]:
    """The context fields of one feature gate: `given` if set (an empty list means a learned vector), else
    the field the schema marks with `role`, else a field named after the role. A ValueError names the
    model setting when the fields do not exist or neither default applies."""
    known = [f.name for f in schema.feature_fields]
    if given is None:
        marked = schema.with_role(role)
        if marked is not None:
            return [marked.name]
        if role in known:
            return [role]
        raise ValueError(
            f"FinalMLP's model.{setting} defaults to the field with role: {role} in the data config, and the schema "
            f"marks none (nor has a field named {role!r}); mark one (`role: {role}` on a categorical field), or set "
            f"model.{setting}=[FIELD, ...] from {known}, or model.{setting}=[] for a learned context")
    unknown = [name for name in given if name not in known]
    if unknown:
        raise ValueError(f"FinalMLP's model.{setting} names unknown field(s) {unknown}; the schema's feature fields are {known}")
    return list(given)


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
        fs1_context: Sequence[str] | None = None,
        fs2_context: Sequence[str] | None = None,
        num_heads: int = 5,
    ):
        super().__init__()
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        width = self.embedding.output_dim()
        self.use_fs = use_fs
        if use_fs:
            context1 = gate_context(schema, fs1_context, "fs1_context", "user")
            context2 = gate_context(schema, fs2_context, "fs2_context", "item")
            self.gate1 = FeatureGate(schema, embedding_dim, context1, fs_hidden_units, width)
            self.gate2 = FeatureGate(schema, embedding_dim, context2, fs_hidden_units, width)
        self.mlp1 = MLP(width, mlp1_hidden_units, activation_name=mlp1_activation, dropout=mlp1_dropout, batch_norm=mlp1_batch_norm)
        self.mlp2 = MLP(width, mlp2_hidden_units, activation_name=mlp2_activation, dropout=mlp2_dropout, batch_norm=mlp2_batch_norm)
        self.fusion = InteractionAggregation(self.mlp1.output_dim, self.mlp2.output_dim, num_heads)
        init_linear_layers(self)

    def forward(self, batch: Batch) -> torch.Tensor:
        flat = self.embedding.flat(batch)
        x1, x2 = (self.gate1(batch, flat), self.gate2(batch, flat)) if self.use_fs else (flat, flat)
        return self.fusion(self.mlp1(x1), self.mlp2(x2))
