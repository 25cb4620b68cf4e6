"""The shared MLP block and FM interaction."""

from __future__ import annotations

import pytest
import torch

from recsys.layers import MLP, Dice, fm_interaction


def test_mlp_order_and_output_dim() -> None:
    mlp = MLP(10, [8, 6], batch_norm=True, dropout=0.1, output_dim=1)
    kinds = [type(m).__name__ for m in mlp]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert mlp(torch.randn(4, 10)).shape == (4, 1) and mlp.output_dim == 1


def test_fm_interaction_equals_the_pairwise_sum() -> None:
    emb = torch.randn(3, 5, 4)
    pairwise = sum((emb[:, i] * emb[:, j]).sum(-1) for i in range(5) for j in range(i + 1, 5))
    assert torch.allclose(fm_interaction(emb), pairwise, atol=1e-5)


@pytest.mark.parametrize("training", [True, False])
def test_dice_is_the_papers_formula_in_training_and_inference(training: bool) -> None:
    """p(x) * x + (1 - p(x)) * alpha * x with p = sigmoid(BN(x)); also on [B, L, H] inputs, and with
    gradients reaching alpha."""
    torch.manual_seed(0)
    dice = Dice(5)
    with torch.no_grad():
        dice.alpha.copy_(torch.tensor([-0.5, 0.0, 0.25, 1.0, 2.0]))
        dice.norm.running_mean.copy_(torch.randn(5))
        dice.norm.running_var.copy_(torch.rand(5) + 0.5)
    dice.train(training)
    x = torch.randn(3, 4, 5) * 3
    flat = x.reshape(-1, 5)
    if training:
        normed = (flat - flat.mean(0)) / torch.sqrt(flat.var(0, unbiased=False) + dice.norm.eps)
    else:
        normed = (flat - dice.norm.running_mean) / torch.sqrt(dice.norm.running_var + dice.norm.eps)
    p = torch.sigmoid(normed).view_as(x)
    expected = p * x + (1 - p) * dice.alpha * x
    out = dice(x)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    out.sum().backward()
    torch.testing.assert_close(dice.alpha.grad, ((1 - p) * x).sum(dim=(0, 1)), atol=1e-5, rtol=1e-5)
