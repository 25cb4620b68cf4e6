"""Whole-split tensors in the Batch layout, and batches of them by index slices.

A split's columns are loaded once into a `Batch` of whole-split tensors; a training batch is one gather
of a slice of a permutation, never a per-row `__getitem__` and collate.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import polars as pl
import torch

from recsys.batch import Batch
from recsys.data.sources import BatchSource, BlockOrder
from recsys.features import FeatureError, Schema


def frame_to_batch(frame: pl.DataFrame, schema: Schema) -> Batch:
    """Whole-frame tensors in the Batch layout (column order from the schema)."""
    n = frame.height

    def matrix(names: list[str], dtype: Any) -> np.ndarray:
        if not names:
            return np.zeros((n, 0), dtype=dtype)
        return np.array(frame.select(names).to_numpy(), dtype=dtype, order="C")  # owned and writable

    sparse = torch.from_numpy(matrix([f.name for f in schema.sparse], np.int64))
    dense = torch.from_numpy(matrix([f.name for f in schema.dense], np.float32))
    seq_fields = schema.sequence
    if seq_fields:
        lengths = {f.max_len for f in seq_fields}
        if len(lengths) != 1:
            raise FeatureError(f"sequence fields must share one max_len in a Batch, got {sorted(lengths)}")
        seq = torch.from_numpy(np.stack([frame[f.name].to_numpy() for f in seq_fields], axis=1).astype(np.int64))
    else:
        seq = torch.zeros((n, 0, 0), dtype=torch.int64)
    label = group = target = None
    if schema.label is not None and schema.label.name in frame.columns:
        label = torch.from_numpy(np.array(frame[schema.label.name].to_numpy(), dtype=np.float32))
    if schema.group is not None and schema.group.name in frame.columns:
        group = torch.from_numpy(np.array(frame[schema.group.name].to_numpy(), dtype=np.int64))
    if schema.target is not None and schema.target.name in frame.columns:
        target = torch.from_numpy(np.array(frame[schema.target.name].to_numpy(), dtype=np.int64))
    return Batch(sparse, dense, seq, label, group, target)


class BatchIterator(BatchSource):
    """Batches of a whole-split Batch by index slices: the in-memory `BatchSource`. Shuffled with its own
    generator, reseeded per epoch from (seed, epoch) so a resumed run sees the same order: a permutation
    of all rows, or with `block_rows` the `BlockOrder` a `DiskSource` reads in (the same batches as from
    disk).

    Under data parallelism (world_size > 1) every process draws the same global batches and keeps its
    share of each (rows rank, rank + world_size, ...), so the global batch, and the averaged gradient,
    match a single-process run with the same batch_size."""

    def __init__(self, data: Batch, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1, block_rows: int | None = None):
        super().__init__(len(data), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, rank=rank,
                         world_size=world_size)
        self.data, self.block_rows = data, block_rows

    def order(self, epoch: int) -> torch.Tensor:
        if self.block_rows:
            return torch.from_numpy(BlockOrder(len(self.data), self.block_rows, self.seed, epoch).rows())
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(len(self.data), generator=generator)

    def _batches(self, epoch: int) -> Iterator[Batch]:
        n = len(self.data)
        if self.shuffle:
            order = self.order(epoch)
        for i in range(len(self)):
            start = i * self.batch_size
            stop = min(start + self.batch_size, n)
            if self.world_size > 1:
                rows = (order[start:stop] if self.shuffle else torch.arange(start, stop))[self.rank :: self.world_size]
                yield self.data.take(rows)
            else:
                yield self.data.take(order[start:stop]) if self.shuffle else self.data.take(slice(start, stop))
