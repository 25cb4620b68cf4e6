"""One stable hash, written twice: as Polars column stages (feature pipeline, serving) and as torch ops
(`recsys.kernels.hashing`: in-model hashed ids, and what ONNX exports). Both give the same bucket.

Polars' own `Expr.hash` is not stable across versions, so it is not used. The mixer is murmur3's
32-bit finaliser applied to the low and high halves of an int64. Every product is a 32-bit value times
a 32-bit constant, so it fits in UInt64 in Polars; in torch's int64 it may wrap, which leaves the low
32 bits (all that is kept) the same.

Each mixing step reads its input twice, so nesting the steps as one expression would grow the
expression tree exponentially; the steps are applied as successive `with_columns` on a scratch column.
"""

from __future__ import annotations

from typing import TypeVar

import polars as pl

MASK32 = 0xFFFFFFFF
C1 = 0x85EBCA6B
C2 = 0xC2B2AE35
GOLDEN = 0x9E3779B9
# Strings are folded into int64 in hex chunks of 14 digits (56 bits), so each chunk parses into Int64.
HEX_CHUNK = 14

Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)


def _fmix32(frame: Frame, col: str) -> Frame:
    c = pl.col(col)
    frame = frame.with_columns(c.xor(c // 65536).alias(col))
    frame = frame.with_columns(((c * C1) & MASK32).alias(col))
    frame = frame.with_columns(c.xor(c // 8192).alias(col))
    frame = frame.with_columns(((c * C2) & MASK32).alias(col))
    return frame.with_columns(c.xor(c // 65536).alias(col))


def with_int64_hash(frame: Frame, source: str, out: str, seed: int = 0) -> Frame:
    """Add column `out`: the stable 32-bit hash (UInt64 in [0, 2**32)) of Int64 column `source`.
    Nulls stay null."""
    hi = f"__{out}_hi"
    u = pl.col(source).cast(pl.Int64).reinterpret(signed=False)
    frame = frame.with_columns((u & MASK32).xor(seed & MASK32).alias(out), ((u // 4294967296) & MASK32).alias(hi))
    frame = _fmix32(frame, out)
    frame = frame.with_columns(pl.col(out).xor(pl.col(hi)).xor(GOLDEN).alias(out))
    return _fmix32(frame, out).drop(hi)


def with_string_fold(frame: Frame, source: str, out: str, max_bytes: int) -> Frame:
    """Add column `out`: an Int64 folded stably from the UTF-8 bytes of string column `source`
    (its first `max_bytes` bytes). Nulls stay null."""
    hexed, chunk, high, low = (f"__{out}_{s}" for s in ("hex", "chunk", "high", "low"))
    frame = frame.with_columns(
        pl.col(source).cast(pl.String).str.encode("hex").alias(hexed),
        pl.lit(0, dtype=pl.Int64).alias(out),
    )
    n_chunks = max(1, -(-2 * max_bytes // HEX_CHUNK))
    for i in range(n_chunks):  # a loop over chunk positions, not rows: each stage is vectorised
        piece = pl.col(hexed).str.slice(i * HEX_CHUNK, HEX_CHUNK)
        value = pl.when(piece.str.len_chars() > 0).then(piece.str.to_integer(base=16)).otherwise(-1)
        frame = frame.with_columns(pl.col(out).xor(value.cast(pl.Int64)).alias(chunk))
        frame = with_int64_hash(frame, chunk, high, seed=2 * i + 1)
        frame = with_int64_hash(frame, chunk, low, seed=2 * i + 2)
        frame = frame.with_columns(
            ((pl.col(high) & 0x7FFFFFFF) * 4294967296 + pl.col(low)).cast(pl.Int64).alias(out)
        )
    frame = frame.with_columns(
        pl.when(pl.col(source).is_null()).then(None).otherwise(pl.col(out)).cast(pl.Int64).alias(out)
    )
    return frame.drop(hexed, chunk, high, low)


def bucket_expr(hashed: pl.Expr, num_buckets: int) -> pl.Expr:
    """Map a hash to an id in [2, num_buckets + 2): ids 0 (padding) and 1 (out-of-vocabulary) stay free."""
    return (hashed % num_buckets + 2).cast(pl.Int64)
