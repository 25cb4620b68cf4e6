"""The torch twin of `recsys.features.hashing`: the same stable hash and buckets, on int64 tensors.

torch has no uint64 arithmetic, so products wrap in int64; only the low 32 bits are kept, and those are
the same as in the unsigned computation. `>>` on int64 is arithmetic, so values are masked first.
"""

from __future__ import annotations

import torch

from recsys.features.hashing import C1, C2, GOLDEN, MASK32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = (h * C1) & MASK32
    h = h ^ (h >> 13)
    h = (h * C2) & MASK32
    return h ^ (h >> 16)


def stable_hash(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Stable 32-bit hash of int64 values, as int64 in [0, 2**32)."""
    x = x.to(torch.int64)
    lo = x & MASK32
    hi = (x >> 32) & MASK32
    h = _fmix32(lo ^ (seed & MASK32))
    return _fmix32(h ^ hi ^ GOLDEN)


def hash_bucket(x: torch.Tensor, num_buckets: int, seed: int = 0) -> torch.Tensor:
    """Ids in [2, num_buckets + 2), as `recsys.features.hashing.bucket_expr` gives."""
    return stable_hash(x, seed) % num_buckets + 2
