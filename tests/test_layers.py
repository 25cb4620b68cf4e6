"""The shared MLP block and its CPU dropout."""

from __future__ import annotations

import pytest
import torch

from recsys.layers import MLP, Dropout, fm_interaction


def test_dropout_keeps_the_rate_and_expectation_and_changes_mask_each_call() -> None:
    drop = Dropout(0.3)
    x = torch.ones(512, 256)
    a, b = drop(x), drop(x)
    kept = (a != 0).float().mean().item()
    assert kept == pytest.approx(0.7, abs=0.01)
    assert a.mean().item() == pytest.approx(1.0, abs=0.02)  # inverted scaling keeps the expectation
    assert not torch.equal(a == 0, b == 0)
    drop.eval()
    assert torch.equal(drop(x), x)
    with pytest.raises(ValueError):
        Dropout(1.0)


def test_dropout_gradient_flows_through_kept_units_only() -> None:
    drop = Dropout(0.5)
    x = torch.ones(64, 32, requires_grad=True)
    y = drop(x)
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() * 2.0)


def test_mlp_order_and_output_dim() -> None:
    mlp = MLP(10, [8, 6], batch_norm=True, dropout=0.1, output_dim=1)
    kinds = [type(m).__name__ for m in mlp]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert mlp(torch.randn(4, 10)).shape == (4, 1) and mlp.output_dim == 1


def test_fm_interaction_equals_the_pairwise_sum() -> None:
    emb = torch.randn(3, 5, 4)
    pairwise = sum((emb[:, i] * emb[:, j]).sum(-1) for i in range(5) for j in range(i + 1, 5))
    assert torch.allclose(fm_interaction(emb), pairwise, atol=1e-5)
