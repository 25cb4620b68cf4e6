"""Lightning data modules: the one place a task's batches come from. Every module keeps the Batch
contract, whatever storage feeds it."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytorch_lightning as L

from recsys.batch import Batch
from recsys.data.batches import BatchIterator, frame_to_batch
from recsys.data.prepare import SPLITS, PreparedData
from recsys.features import FeaturePipeline


class CTRDataModule(L.LightningDataModule):
    """One row per impression: the split's columns as whole-split tensors, batches by index slices.

    Args:
        prepared: the fitted and transformed dataset (`recsys.data.prepare_dataset`).
        batch_size: training batch (the global batch under data parallelism).
        eval_batch_size: validation and test batch.
        seed: the training order's seed (each epoch reseeds from (seed, epoch)).
    """

    def __init__(self, prepared: PreparedData, batch_size: int = 4096, eval_batch_size: int = 16384, seed: int = 0):
        super().__init__()
        self.prepared = prepared
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.schema = prepared.schema()
        self.splits: dict[str, Batch] = {}

    def load(self, split: str) -> Batch:
        if split not in self.splits:
            self.splits[split] = frame_to_batch(pl.read_parquet(self.prepared.split_path(split)), self.schema)
        return self.splits[split]

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            self.load(split)

    def row_counts(self) -> dict[str, np.ndarray]:
        """Training occurrence counts per vocabulary table, from the fitted feature artifacts."""
        return FeaturePipeline.load(self.prepared.features_dir).row_counts()

    def _shard(self) -> dict[str, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.world_size <= 1:
            return {}
        return {"rank": trainer.global_rank, "world_size": trainer.world_size}

    def train_dataloader(self) -> BatchIterator:
        return BatchIterator(self.load("train"), self.batch_size, shuffle=True, seed=self.seed, **self._shard())

    def val_dataloader(self) -> BatchIterator:
        return BatchIterator(self.load("valid"), self.eval_batch_size, shuffle=False, **self._shard())

    def test_dataloader(self) -> BatchIterator:
        return BatchIterator(self.load("test"), self.eval_batch_size, shuffle=False, **self._shard())
