"""The shared MLP block and FM interaction."""

from __future__ import annotations

import pytest
import torch

from recsys.layers import MLP, Dice, Dropout, fm_interaction, relu_dropout


def test_mlp_order_and_output_dim() -> None:
    mlp = MLP(10, [8, 6], batch_norm=True, dropout=0.1, output_dim=1)
    kinds = [type(m).__name__ for m in mlp]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert mlp(torch.randn(4, 10)).shape == (4, 1) and mlp.output_dim == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_keeps_1_minus_p_scaled_and_routes_the_gradient_through_the_kept(dtype: torch.dtype) -> None:
    drop = Dropout(0.2).train()
    x = (torch.rand(1000, 1000) + 1.0).to(dtype).requires_grad_()  # no zeros: a zero output means dropped
    y = drop(x)
    kept = y != 0
    # 1e6 draws: the kept fraction's standard deviation is 4e-4, so 3e-3 only fails a wrong keep rate.
    assert abs(kept.float().mean().item() - 0.8) < 3e-3
    torch.testing.assert_close(y[kept].float(), (x[kept] / 0.8).float(), rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=0)
    assert y.dtype == dtype
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)
    torch.testing.assert_close(x.grad[kept].float(), torch.full((int(kept.sum()),), 1 / 0.8), rtol=1e-2, atol=0)
    assert drop.eval()(x) is x and Dropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5])
def test_dropout_drops_at_rate_p_in_every_lane_of_its_random_words(p: float) -> None:
    # Four entries share each 64-bit draw (16 bits each): every lane must drop at rate p, whatever the shape.
    drop = Dropout(p).train()
    y = drop(torch.ones(999, 1001))  # a size that is no multiple of 4
    lanes = (y.flatten() == 0)[: 999 * 1000].view(-1, 4).float().mean(dim=0)
    # 250k entries per lane: sd of a lane's rate <= 1e-3, so 5e-3 fails only a biased lane or a wrong rate.
    assert (lanes - p).abs().max().item() < 5e-3, lanes
    assert abs(drop.keep_probability - (1 - p)) < 1 / 65536
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - p)))


@pytest.mark.parametrize("fused", [False, True])
def test_dropout_is_its_random_bits_compared_with_the_threshold_then_scaled(fused: bool) -> None:
    # Written out from the bits: keep where the 16 bits are >= threshold, scale by 1 / (1 - p); the fused
    # ReLU + dropout is relu(x) times that. Bit for bit: the one-pass product must round as x * (mask * scale).
    drop = Dropout(0.3).train()
    x = torch.randn(513, 257)
    torch.manual_seed(5)
    bits = drop.random_bits(x)
    expected = (torch.relu(x) if fused else x) * ((bits >= drop.threshold).float() * (1 / (1 - 0.3)))
    torch.manual_seed(5)
    assert torch.equal(relu_dropout(x, drop) if fused else drop(x), expected)


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


def test_mlp_fuses_relu_then_dropout_with_the_same_numbers_as_the_pair() -> None:
    # The fused pair must give bit for bit what ReLU then Dropout give with the same random bits: outputs,
    # input gradients and parameter gradients, in training; in evaluation the plain layers run.
    torch.manual_seed(0)
    fused = MLP(20, [64, 64], batch_norm=True, dropout=0.3, output_dim=1).train()
    pair = MLP(20, [64, 64], batch_norm=True, dropout=0.3, output_dim=1).train()
    pair.load_state_dict(fused.state_dict())
    pair._relu_then_dropout = frozenset()  # the layers one by one
    assert fused._relu_then_dropout == {2, 6}
    x = torch.randn(256, 20)
    outs, grads = [], []
    for mlp in (fused, pair):
        xi = x.clone().requires_grad_()
        torch.manual_seed(1)
        y = mlp(xi)
        y.pow(2).sum().backward()
        outs.append(y)
        grads.append([xi.grad] + [p.grad for p in mlp.parameters()])
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
    fused.eval()
    pair.eval()
    assert torch.equal(fused(x), pair(x))
