"""Triton kernels for SDIM (see `sdim.py` for the twin that defines their meaning).

- `triton_signatures`: one program per block of vectors; the projection, the sign and the packing of
  bits into codes happen in registers, so the [N, m * hash_bits] projections never reach memory.
- `triton_bucket_sums`: one program per sequence; it walks the sequence in blocks, builds the [L, m]
  match of behaviour codes against the target's in registers and accumulates match^T @ values, so the
  match matrix is never materialised.

The backward of the bucket sums is a plain batched matmul with the match rebuilt by the twin.
Dots run in IEEE fp32 (no TF32) so signs and sums agree with the twin.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from recsys.kernels.sdim import bucket_match


def _block(n: int) -> int:
    """tl.dot needs every dimension >= 16 and a power of two."""
    return max(16, triton.next_power_of_2(n))


@triton.jit
def _signature_kernel(x_ptr, proj_ptr, out_ptr, n_rows, dim, n_hashes,
                      HASH_BITS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    hashes = tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    x = tl.load(x_ptr + rows[:, None] * dim + cols[None, :], mask=row_ok[:, None] & (cols[None, :] < dim), other=0.0)
    proj_mask = (cols[:, None] < dim) & (hashes[None, :] < n_hashes)
    code = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for bit in tl.static_range(HASH_BITS):
        proj = tl.load(proj_ptr + cols[:, None] * (n_hashes * HASH_BITS) + hashes[None, :] * HASH_BITS + bit,
                       mask=proj_mask, other=0.0)
        rotated = tl.dot(x, proj, input_precision="ieee")
        code += (rotated > 0).to(tl.float32) * (1 << bit)
    tl.store(out_ptr + rows[:, None] * n_hashes + hashes[None, :], code, mask=row_ok[:, None] & (hashes[None, :] < n_hashes))


@triton.jit
def _bucket_sum_kernel(values_ptr, key_codes_ptr, query_codes_ptr, mask_ptr, out_ptr, length, dim, n_hashes,
                       BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    seq = tl.program_id(0)
    hashes = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    query = tl.load(query_codes_ptr + seq * n_hashes + hashes, mask=hashes < n_hashes, other=-1.0)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start in range(0, length, BLOCK_L):
        pos = start + tl.arange(0, BLOCK_L)
        pos_ok = pos < length
        codes = tl.load(key_codes_ptr + seq * length * n_hashes + pos[:, None] * n_hashes + hashes[None, :],
                        mask=pos_ok[:, None] & (hashes[None, :] < n_hashes), other=-2.0)
        valid = tl.load(mask_ptr + seq * length + pos, mask=pos_ok, other=0.0)
        match = (codes == query[None, :]).to(tl.float32) * valid[:, None]
        vals = tl.load(values_ptr + seq * length * dim + pos[:, None] * dim + cols[None, :],
                       mask=pos_ok[:, None] & (cols[None, :] < dim), other=0.0)
        acc += tl.dot(tl.trans(match), vals, input_precision="ieee")
    tl.store(out_ptr + seq * n_hashes * dim + hashes[:, None] * dim + cols[None, :], acc,
             mask=(hashes[:, None] < n_hashes) & (cols[None, :] < dim))


def triton_signatures(x: torch.Tensor, projections: torch.Tensor, hash_bits: int) -> torch.Tensor:
    lead, dim = x.shape[:-1], x.shape[-1]
    flat = x.reshape(-1, dim).float().contiguous()
    n_hashes = projections.shape[1] // hash_bits
    out = torch.empty(flat.shape[0], n_hashes, dtype=torch.float32, device=x.device)
    block_n = 64
    grid = (triton.cdiv(flat.shape[0], block_n),)
    _signature_kernel[grid](flat, projections.float().contiguous(), out, flat.shape[0], dim, n_hashes,
                            HASH_BITS=hash_bits, BLOCK_N=block_n, BLOCK_D=_block(dim), BLOCK_M=_block(n_hashes))
    return out.view(*lead, n_hashes)


class _BucketSums(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, key_codes, query_codes, mask):  # noqa: ANN001, ANN205
        batch, length, dim = values.shape
        n_hashes = key_codes.shape[-1]
        out = torch.empty(batch, n_hashes, dim, dtype=torch.float32, device=values.device)
        _bucket_sum_kernel[(batch,)](
            values.float().contiguous(), key_codes.float().contiguous(), query_codes.float().contiguous(),
            mask.float().contiguous(),
            out, length, dim, n_hashes, BLOCK_L=32, BLOCK_D=_block(dim), BLOCK_M=_block(n_hashes),
        )
        ctx.save_for_backward(key_codes, query_codes, mask)
        ctx.values_dtype = values.dtype
        return out.to(values.dtype)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        key_codes, query_codes, mask = ctx.saved_tensors
        match = bucket_match(key_codes, query_codes, mask, grad_out.dtype)
        return (match @ grad_out).to(ctx.values_dtype), None, None, None


def triton_bucket_sums(values: torch.Tensor, key_codes: torch.Tensor, query_codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return _BucketSums.apply(values, key_codes, query_codes, mask)
