"""The oneDNN linear against its twin, F.linear: the same values and gradients, and the twin wherever the
oneDNN path must not run (autocast, export tracing, other dtypes)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from recsys.kernels import linear as linear_kernel
from recsys.layers import Linear

pytestmark = pytest.mark.skipif(linear_kernel._LINEAR is None, reason="this PyTorch build has no oneDNN linear")


@pytest.mark.parametrize(("rows", "n_in", "n_out", "bias"), [(257, 100, 400, True), (64, 400, 1, True), (33, 7, 5, False)])
def test_onednn_linear_matches_f_linear_forward_and_backward(rows: int, n_in: int, n_out: int, bias: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(rows, n_in, requires_grad=True)
    w = torch.randn(n_out, n_in, requires_grad=True)
    b = torch.randn(n_out, requires_grad=True) if bias else None
    g = torch.randn(rows, n_out)
    assert linear_kernel.onednn_applies(x, w)
    y = linear_kernel.linear(x, w, b)
    assert y.grad_fn is not None and "OneDNN" in type(y.grad_fn).__name__  # the oneDNN path ran
    grads = torch.autograd.grad(y, [x, w] + ([b] if bias else []), g)
    y_ref = F.linear(x, w, b)
    grads_ref = torch.autograd.grad(y_ref, [x, w] + ([b] if bias else []), g)
    # float32 products of up to 400 terms: agreement to accumulation error, far below any wrong operand order.
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-4)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_the_twin_runs_under_autocast_for_other_dtypes_and_non_2d_inputs() -> None:
    layer = Linear(8, 4)
    x = torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16  # autocast's cast happened: F.linear ran, not the float32 kernel
    assert not linear_kernel.onednn_applies(x.double(), layer.weight.double())
    assert not linear_kernel.onednn_applies(torch.randn(2, 3, 8), layer.weight)
    torch.testing.assert_close(layer(torch.randn(2, 3, 8)).shape, torch.Size([2, 3, 4]))


def test_a_traced_or_exported_linear_is_the_plain_linear() -> None:
    layer = Linear(8, 4).eval()
    x = torch.randn(3, 8)
    program = torch.export.export(layer, (x,))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert any("linear" in t or "addmm" in t for t in targets) and not any("mkldnn" in t for t in targets), targets
    torch.testing.assert_close(program.module()(x), F.linear(x, layer.weight, layer.bias))
