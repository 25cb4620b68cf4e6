"""Building blocks shared by the models: one MLP block, one FM interaction, one weight initialiser."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "prelu": nn.PReLU, "leaky_relu": nn.LeakyReLU}


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None


class Dropout(nn.Module):
    """Inverted dropout whose CPU masks are windows, at a fresh random offset each call, into a pool of
    Bernoulli(p) draws made once (8x the input size).

    Why: torch's CPU RNG is single-threaded; drawing a fresh mask for a 4096x400 activation costs about
    17 ms on a 2-core machine, a third of a DeepFM training step. Every element of a window is still an
    independent Bernoulli(p) draw and the window moves every call; only masks of different calls
    overlap. On CUDA the native kernel is fast and is used as is. Identity in eval mode (and in ONNX)."""

    POOL_FACTOR = 8

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {p}")
        self.p = p
        self.register_buffer("drop_pool", torch.empty(0, dtype=torch.bool), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return nn.functional.dropout(x, self.p, training=True)
        n = x.numel()
        if self.drop_pool.numel() < 2 * n:
            self.drop_pool = torch.rand(self.POOL_FACTOR * n) < self.p
        offset = int(torch.randint(0, self.drop_pool.numel() - n + 1, (1,)))
        drop = self.drop_pool[offset : offset + n].view_as(x)
        return x.masked_fill(drop, 0.0) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MLP(nn.Sequential):
    """Linear -> BatchNorm -> activation -> Dropout per hidden layer, then an optional plain Linear
    to `output_dim` (the order FuxiCTR and BARS use)."""

    def __init__(
        self,
        input_dim: int,
        hidden_units: Sequence[int],
        *,
        activation_name: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        output_dim: int | None = None,
    ):
        layers: list[nn.Module] = []
        width = input_dim
        for units in hidden_units:
            layers.append(nn.Linear(width, units))
            if batch_norm:
                layers.append(nn.BatchNorm1d(units))
            layers.append(activation(activation_name))
            if dropout > 0:
                layers.append(Dropout(dropout))
            width = units
        if output_dim is not None:
            layers.append(nn.Linear(width, output_dim))
            width = output_dim
        super().__init__(*layers)
        self.output_dim = width


def fm_interaction(emb: torch.Tensor) -> torch.Tensor:
    """Second-order FM term of field embeddings [B, F, D] -> [B]: 1/2 sum_k ((sum_f e)^2 - sum_f e^2)."""
    square_of_sum = emb.sum(dim=1).pow(2)
    sum_of_square = emb.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)


def init_linear_layers(module: nn.Module) -> None:
    """Xavier-normal weights and zero biases for every Linear (BARS's initialisation); embedding tables
    initialise themselves."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
