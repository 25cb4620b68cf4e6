"""Lightning data modules: the one place a task's batches come from. Every module keeps the Batch
contract, whatever storage feeds it."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytorch_lightning as L
import torch

from typing import NamedTuple

from recsys.batch import Batch
from recsys.data.batches import BatchIterator, frame_to_batch
from recsys.data.prepare import SPLITS, PreparedData
from recsys.features import FeatureError, FeaturePipeline


class CSRMatrix(NamedTuple):
    """A sparse [size, size] matrix by rows: row r's columns are col[crow[r]:crow[r + 1]], its values the
    same slice of values. Plain tensors, so it moves to a device and is sliced like any other."""

    crow: torch.Tensor  # int64 [size + 1]
    col: torch.Tensor  # int64 [nnz]
    values: torch.Tensor  # float32 [nnz]
    size: int

    def to(self, device: torch.device | str) -> CSRMatrix:
        return CSRMatrix(self.crow.to(device), self.col.to(device), self.values.to(device), self.size)


class SplitsDataModule(L.LightningDataModule):
    """What every data module here shares: each split held as one whole-split Batch (`load`), training
    batches in a seeded order reshuffled per epoch, evaluation in split order, and under data parallelism
    each process's share of every global batch."""

    batch_size: int
    eval_batch_size: int
    seed: int

    def load(self, split: str) -> Batch:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            self.load(split)

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


class CTRDataModule(SplitsDataModule):
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

    def row_counts(self) -> dict[str, np.ndarray]:
        """Training occurrence counts per vocabulary table, from the fitted feature artifacts."""
        return FeaturePipeline.load(self.prepared.features_dir).row_counts()


class NextItemDataModule(SplitsDataModule):
    """One row per user: a history (the schema's sequence field, most recent last) and, in validation and
    test, the next item (the schema's target field).

    Training takes the last `window` items of each training history and predicts every item from the ones
    before it: the input is that window shifted right by one (left-padded), the target at each position
    the item that followed, 0 where nothing is predicted. One sequence per user, each user once per epoch
    in a seeded order (MQSA-TED's and SASRec's training). Evaluation batches carry the whole history, so
    the evaluator can mask every item a user already has.

    Args:
        prepared: the fitted and transformed dataset.
        batch_size: users per training batch.
        eval_batch_size: users ranked against the whole catalogue at a time (bounds evaluation memory to
            eval_batch_size x items scores).
        seed: the training order's seed.
        window: training items per user (the most recent ones).
    """

    def __init__(self, prepared: PreparedData, batch_size: int = 256, eval_batch_size: int = 256, seed: int = 0,
                 window: int = 50):
        super().__init__()
        self.prepared = prepared
        self.batch_size, self.eval_batch_size, self.seed, self.window = batch_size, eval_batch_size, seed, window
        self.schema = prepared.schema()
        if self.schema.target is None or len(self.schema.sequence) != 1:
            raise FeatureError(
                f"dataset {prepared.name!r}: a next-item data module needs one sequence field (the history) and a "
                f"target field that shares its vocabulary; the schema has sequences {[f.name for f in self.schema.sequence]} "
                f"and target {getattr(self.schema.target, 'name', None)}"
            )
        if window < 2:
            raise FeatureError(f"window must be at least 2 (an item and the one after it), got {window}")
        self.splits: dict[str, Batch] = {}

    @property
    def num_items(self) -> int:
        """Rows of the item table: padding (0), out-of-vocabulary (1) and every item seen in training."""
        return int(self.schema.sequence[0].vocab_size)

    def load(self, split: str) -> Batch:
        if split not in self.splits:
            rows = frame_to_batch(pl.read_parquet(self.prepared.split_path(split)), self.schema)
            self.splits[split] = self._training_sequences(rows) if split == "train" else rows
        return self.splits[split]

    def _training_sequences(self, rows: Batch) -> Batch:
        recent = rows.seq[:, 0, -self.window:]
        inputs = torch.cat([torch.zeros_like(recent[:, :1]), recent[:, :-1]], dim=1)
        target = recent * (inputs != 0)
        return Batch(rows.sparse, rows.dense, inputs.unsqueeze(1), target=target)

    def transitions(self) -> CSRMatrix:
        """Item -> next item counts over the training sequences, [items, items] by rows: the teacher of
        MQSA-TED's transition distillation."""
        train = self.load("train")
        heads, tails = train.seq[:, 0].flatten(), train.target.flatten()
        keep = tails != 0
        n = self.num_items
        pairs, counts = torch.unique(heads[keep] * n + tails[keep], return_counts=True)  # sorted by (head, tail)
        rows, cols = pairs // n, pairs % n
        crow = torch.zeros(n + 1, dtype=torch.int64)
        crow[1:] = torch.bincount(rows, minlength=n).cumsum(0)
        return CSRMatrix(crow, cols, counts.to(torch.float32), n)
