"""SDIM's hot path: SimHash signatures of behaviours and the sum of the behaviours whose signature equals
the target's, per hash function.

These PyTorch functions are the twin that defines the meaning: they run on CPU and are what ONNX exports.
On CUDA, with Triton installed, the same calls run the fused Triton kernels in `sdim_triton.py`, which
the tests hold equal to this twin (on CPU under TRITON_INTERPRET=1, and on a GPU when one is lent).
"""

from __future__ import annotations

import torch


def signatures(x: torch.Tensor, projections: torch.Tensor, hash_bits: int, *, use_triton: bool | None = None) -> torch.Tensor:
    """SimHash codes of vectors x [..., D] under projections [D, m * hash_bits] (column i * hash_bits + t
    is bit t of hash i): [..., m], each code an integer in [0, 2**hash_bits) held exactly in x's float
    dtype (comparing floats saves a conversion pass over the codes). A bit is 1 where the signed
    projection is > 0, so a zero (padding) vector hashes to code 0. Not differentiable (a hash)."""
    if _use_triton(x, use_triton):
        from recsys.kernels.sdim_triton import triton_signatures

        return triton_signatures(x, projections, hash_bits).to(x.dtype)
    # In place: the projections become their 0/1 bits without another [..., m * tau] tensor, which on
    # CPU is most of the cost (the projection output is 3x wider than the embeddings for tau = 3).
    bits = (x.detach() @ projections).gt_(0).unflatten(-1, (projections.shape[1] // hash_bits, hash_bits))
    return bits @ (2.0 ** torch.arange(hash_bits, device=x.device, dtype=bits.dtype))


def bucket_sums(values: torch.Tensor, key_codes: torch.Tensor, query_codes: torch.Tensor, mask: torch.Tensor,
                *, use_triton: bool | None = None) -> torch.Tensor:
    """Per hash function, the sum of the behaviours whose code equals the query's.

    values [B, L, Dv], key_codes [B, L, m], query_codes [B, m], mask [B, L] (1 behaviour, 0 padding)
    -> [B, m, Dv]. Differentiable in `values`."""
    if _use_triton(values, use_triton):
        from recsys.kernels.sdim_triton import triton_bucket_sums

        return triton_bucket_sums(values, key_codes, query_codes, mask)
    return bucket_match(key_codes, query_codes, mask, values.dtype).transpose(1, 2) @ values


def bucket_match(key_codes: torch.Tensor, query_codes: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, L, m]: 1 where behaviour l falls in the query's bucket of hash i, 0 elsewhere and on padding."""
    return (key_codes == query_codes.unsqueeze(1)).to(dtype) * mask.to(dtype).unsqueeze(-1)


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _use_triton(t: torch.Tensor, requested: bool | None) -> bool:
    if requested is not None:
        return requested
    exporting = torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()
    return t.is_cuda and not exporting and triton_available()
