"""The shared MLP block and FM interaction."""

from __future__ import annotations

import pytest
import torch

from recsys.layers import MLP, fm_interaction


def test_mlp_order_and_output_dim() -> None:
    mlp = MLP(10, [8, 6], batch_norm=True, dropout=0.1, output_dim=1)
    kinds = [type(m).__name__ for m in mlp]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert mlp(torch.randn(4, 10)).shape == (4, 1) and mlp.output_dim == 1


def test_fm_interaction_equals_the_pairwise_sum() -> None:
    emb = torch.randn(3, 5, 4)
    pairwise = sum((emb[:, i] * emb[:, j]).sum(-1) for i in range(5) for j in range(i + 1, 5))
    assert torch.allclose(fm_interaction(emb), pairwise, atol=1e-5)
