"""The MLP's matrix products on CPU through oneDNN, with `torch.nn.functional.linear` as the twin.

PyTorch runs a float32 `addmm`/`mm` on CPU through MKL's sgemm, and MKL takes a generic code path on AMD
processors: on the 2-core AMD EPYC (AVX-512) these benchmarks run on, a [4096, 400] x [400, 400] product
runs at ~170 GFLOP/s through MKL and ~205 GFLOP/s through oneDNN, which ships inside PyTorch
(`torch.ops.mkldnn._linear_pointwise`, the op Inductor lowers CPU linears to). oneDNN also adds the bias
inside the product, where `addmm` first copies the bias into every output row. So a training step's forward
product and its input-gradient product go through oneDNN; the weight-gradient product (g^T x, whose operands
are transposed views) stays on `mm`, where oneDNN measured slower.

Same float32 arithmetic, not the same rounding: results agree with the twin to float32 accumulation error.
The twin runs wherever the oneDNN op is missing or does not apply: other devices and dtypes, autocast (a custom
autograd function would bypass its casts), TorchScript/ONNX tracing and torch.compile.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _onednn_linear_op():
    try:
        op = torch.ops.mkldnn._linear_pointwise
        probe = torch.arange(6, dtype=torch.float32).view(2, 3)
        if not torch.equal(op(probe, probe[:1], None, "none", [], ""), probe @ probe[:1].t()):
            return None
    except (AttributeError, RuntimeError):
        return None
    return op


_LINEAR = _onednn_linear_op()


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _LINEAR(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        # dL/dx = g W: a linear with weight W^T, which oneDNN takes as a strided view (no copy).
        grad_x = product(grad, weight.t()) if ctx.needs_input_grad[0] else None
        grad_weight = grad.t().mm(x) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x W^T through oneDNN where this build has it (as the training step's forward and input-gradient
    products run), else through `mm`: for the benchmark's plain-GEMM ceiling of the same shapes."""
    return _LINEAR(x, weight, None, "none", [], "") if _LINEAR is not None else x.mm(weight.t())


def eager_on_cpu(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is on CPU and this call runs eagerly: not under TorchScript/ONNX tracing or
    torch.compile, which must see (and export) the plain twins."""
    return (
        tensor.device.type == "cpu"
        and not torch.jit.is_tracing() and not torch.jit.is_scripting() and not torch.onnx.is_in_onnx_export()
        and not torch.compiler.is_compiling()
    )


def onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `linear` takes the oneDNN path for these operands."""
    return (
        _LINEAR is not None and x.dtype == torch.float32 and weight.dtype == torch.float32
        and x.dim() == 2 and x.is_contiguous() and eager_on_cpu(x)
        # Under autocast the product must go through F.linear, whose casts a custom function would bypass.
        and not torch.is_autocast_enabled("cpu")
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x W^T + b, as `torch.nn.functional.linear` (the twin, and the path everywhere oneDNN does not apply)."""
    if onednn_applies(x, weight):
        return _OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)
