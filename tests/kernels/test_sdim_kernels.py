"""The SDIM Triton kernels against their PyTorch twin: on CPU under TRITON_INTERPRET=1 here and in CI,
and on CUDA (the `gpu` marker) when a device is present."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Must be set before Triton decorates the kernels: they then run in Triton's interpreter on CPU.
    os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton")

from recsys.kernels.sdim import bucket_sums, signatures  # noqa: E402
from recsys.kernels.sdim_triton import triton_bucket_sums, triton_signatures  # noqa: E402

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter run is the no-GPU check")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]),
]


def _inputs(device: str, batch: int = 6, length: int = 37, dim: int = 24, hashes: int = 8, bits: int = 3):
    g = torch.Generator().manual_seed(7)
    values = torch.randn(batch, length, dim, generator=g)
    mask = (torch.rand(batch, length, generator=g) > 0.25).float()
    values = values * mask.unsqueeze(-1)  # padding rows are zero vectors, as the embedding layer gives
    target = torch.randn(batch, dim, generator=g)
    projections = torch.randn(dim, hashes * bits, generator=g)
    return [t.to(device) for t in (values, mask, target, projections)], bits


def _clear_of_zero(x: torch.Tensor, projections: torch.Tensor, bits: int) -> torch.Tensor:
    """Vectors whose every projection is clearly non-zero: their signature cannot depend on summation order."""
    rotated = (x @ projections).abs().unflatten(-1, (projections.shape[1] // bits, bits)).amin(dim=-1)
    return (rotated > 1e-4) | (x.abs().sum(-1, keepdim=True) == 0)


@pytest.mark.parametrize("device", DEVICES)
def test_signature_kernel_equals_twin(device: str) -> None:
    (values, mask, target, projections), bits = _inputs(device)
    twin = signatures(values, projections, bits, use_triton=False)
    kernel = triton_signatures(values, projections, bits)
    assert kernel.shape == twin.shape == values.shape[:2] + (projections.shape[1] // bits,)
    assert kernel.dtype == twin.dtype == torch.float32 and int(twin.max()) < 2**bits
    assert torch.equal(twin, twin.round()) and twin.min() >= 0
    clear = _clear_of_zero(values, projections, bits)
    assert clear.float().mean() > 0.99
    assert torch.equal(kernel[clear], twin[clear])
    # Padding (zero vectors) hashes to code 0 in both.
    assert torch.all(kernel[mask == 0] == 0)


@pytest.mark.parametrize("device", DEVICES)
def test_bucket_sum_kernel_equals_twin_forward_and_backward(device: str) -> None:
    (values, mask, target, projections), bits = _inputs(device)
    key_codes = signatures(values, projections, bits, use_triton=False)
    query_codes = signatures(target, projections, bits, use_triton=False)
    a = values.clone().requires_grad_(True)
    b = values.clone().requires_grad_(True)
    twin = bucket_sums(a, key_codes, query_codes, mask, use_triton=False)
    kernel = triton_bucket_sums(b, key_codes, query_codes, mask)
    assert kernel.shape == (values.shape[0], key_codes.shape[-1], values.shape[-1])
    torch.testing.assert_close(kernel, twin, atol=1e-5, rtol=1e-5)
    # Some buckets match and some do not, so the comparison is not vacuous.
    assert (twin.abs().sum(-1) > 0).float().mean().item() > 0.2 and (twin.abs().sum(-1) == 0).any()
    weights = torch.randn_like(twin)
    (twin * weights).sum().backward()
    (kernel * weights).sum().backward()
    torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-5)


def test_twin_matches_a_direct_per_hash_definition() -> None:
    """The twin against the definition written out with loops over hash functions and positions."""
    (values, mask, target, projections), bits = _inputs("cpu", batch=2, length=9, dim=4, hashes=3, bits=2)
    codes = signatures(values, projections, bits)
    query = signatures(target, projections, bits)
    sums = bucket_sums(values, codes, query, mask)
    for b in range(values.shape[0]):
        for i in range(3):
            bit_values = [(values[b] @ projections[:, i * bits + t] > 0).long() << t for t in range(bits)]
            code = sum(bit_values)
            target_code = sum(((target[b] @ projections[:, i * bits + t] > 0).long() << t) for t in range(bits))
            assert torch.equal(codes[b, :, i], code) and int(query[b, i]) == int(target_code)
            chosen = (code == target_code) & (mask[b] > 0)
            torch.testing.assert_close(sums[b, i], values[b][chosen].sum(0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sdim_model_on_cuda_runs_the_kernels_and_matches_the_cpu_twin(small_synthetic) -> None:
    from recsys.config import compose_train_config
    from recsys.config import build_model

    _, dm = small_synthetic
    model = build_model(compose_train_config(["model=sdim"]).model, dm.schema).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    batch = dm.load("valid").take(slice(0, 512))
    with torch.no_grad():
        cpu = model(batch)
        gpu = model.cuda()(batch.to("cuda")).cpu()
    # A projection within rounding of zero may take the other sign on the GPU and move one row's
    # bucket; every other row must agree.
    close = (gpu - cpu).abs() <= 1e-4 + 1e-4 * cpu.abs()
    assert close.float().mean() >= 0.99, f"{int((~close).sum())} of {len(close)} rows differ"
