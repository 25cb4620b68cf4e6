"""DCN-V2 (Wang et al., 2021): explicit cross layers x_{l+1} = x0 * (W x_l + b) + x_l beside or under
an MLP; optionally the low-rank mixture of experts (CrossNetMix)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recsys.batch import Batch
from recsys.embedding import FeatureEmbedding
from recsys.features.schema import Schema
from recsys.layers import MLP, init_linear_layers

STRUCTURES = ("crossnet_only", "stacked", "parallel", "stacked_parallel")


class CrossNetV2(nn.Module):
    def __init__(self, input_dim: int, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(input_dim, input_dim) for _ in range(num_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:  # a loop over layers, not features or rows
            x = x + x0 * layer(x)
        return x


class CrossNetMix(nn.Module):
    """Low-rank cross layers as a gated mixture of experts: E_e = x0 * (U_e tanh(C_e tanh(V_e^T x)) + b)."""

    def __init__(self, input_dim: int, num_layers: int, low_rank: int = 32, num_experts: int = 4):
        super().__init__()

        def xavier(*shape: int) -> nn.Parameter:
            return nn.Parameter(nn.init.xavier_normal_(torch.empty(*shape)))

        self.u = nn.ParameterList(xavier(num_experts, input_dim, low_rank) for _ in range(num_layers))
        self.v = nn.ParameterList(xavier(num_experts, input_dim, low_rank) for _ in range(num_layers))
        self.c = nn.ParameterList(xavier(num_experts, low_rank, low_rank) for _ in range(num_layers))
        self.bias = nn.ParameterList(nn.Parameter(torch.zeros(input_dim)) for _ in range(num_layers))
        self.gate = nn.Linear(input_dim, num_experts, bias=False)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for u, v, c, b in zip(self.u, self.v, self.c, self.bias):
            low = torch.tanh(torch.einsum("bd,edr->ber", x, v))
            # C_e applied to the column vector (C_e z, as the paper and FuxiCTR write it), not z^T C_e: the same
            # family of models, but weights copied from FuxiCTR then compute what they computed there.
            low = torch.tanh(torch.einsum("ber,esr->bes", low, c))
            experts = x0.unsqueeze(1) * (torch.einsum("bes,eds->bed", low, u) + b)  # [B, E, D]
            weights = torch.softmax(self.gate(x), dim=1).unsqueeze(-1)
            x = (experts * weights).sum(dim=1) + x
        return x


class DCNv2(nn.Module):
    def __init__(
        self,
        schema: Schema,
        embedding_dim: int = 10,
        model_structure: str = "parallel",
        num_cross_layers: int = 4,
        use_low_rank_mixture: bool = False,
        low_rank: int = 32,
        num_experts: int = 4,
        stacked_dnn_hidden_units: Sequence[int] = (500, 500, 500),
        parallel_dnn_hidden_units: Sequence[int] = (400, 400, 400),
        activation: str = "relu",
        dropout: float = 0.4,
        batch_norm: bool = True,
    ):
        super().__init__()
        if model_structure not in STRUCTURES:
            raise ValueError(f"model_structure must be one of {STRUCTURES}, got {model_structure!r}")
        self.structure = model_structure
        self.embedding = FeatureEmbedding(schema, embedding_dim)
        width = self.embedding.output_dim()
        self.cross = (
            CrossNetMix(width, num_cross_layers, low_rank, num_experts) if use_low_rank_mixture
            else CrossNetV2(width, num_cross_layers)
        )
        mlp = dict(activation_name=activation, dropout=dropout, batch_norm=batch_norm)
        final = width
        if model_structure in ("stacked", "stacked_parallel"):
            self.stacked_dnn = MLP(width, stacked_dnn_hidden_units, **mlp)
            final = self.stacked_dnn.output_dim
        if model_structure in ("parallel", "stacked_parallel"):
            self.parallel_dnn = MLP(width, parallel_dnn_hidden_units, **mlp)
            final += self.parallel_dnn.output_dim
        self.fc = nn.Linear(final, 1)
        init_linear_layers(self)

    def forward(self, batch: Batch) -> torch.Tensor:
        x0 = self.embedding.flat(batch)
        out = self.cross(x0)
        if self.structure in ("stacked", "stacked_parallel"):
            out = self.stacked_dnn(out)
        if self.structure in ("parallel", "stacked_parallel"):
            out = torch.cat([out, self.parallel_dnn(x0)], dim=1)
        return self.fc(out).squeeze(-1)
