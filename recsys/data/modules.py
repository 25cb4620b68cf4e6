"""Lightning data modules: the one place a task's batches come from. Every module keeps the Batch
contract, whatever storage feeds it."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

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


class PairedBatches:
    """A search epoch: each training batch (the split shuffled by (seed, epoch)) paired with a validation
    batch of the same size, drawn from the validation split shuffled by (seed, epoch, pass) and started
    again when it runs out, so the architecture steps see all of it before any repeat. `epoch` (the
    trainer's epoch when given) seeds both orders, so a search resumed from a checkpoint sees the batches
    an uninterrupted one would."""

    def __init__(self, train: Batch, valid: Batch, batch_size: int, seed: int, epoch: Callable[[], int] | None = None,
                 rank: int = 0, world_size: int = 1):
        if len(valid) == 0:
            raise ValueError("a search needs validation rows: the validation split is empty")
        self.train, self.valid, self.batch_size, self.seed = train, valid, batch_size, seed
        self.epoch_source, self.shard = epoch, {"rank": rank, "world_size": world_size}
        self._epochs_started = 0

    def __len__(self) -> int:
        return len(BatchIterator(self.train, self.batch_size, shuffle=False))

    def _valid_batches(self, epoch: int) -> Iterator[Batch]:
        for repeat in itertools.count():
            batches = BatchIterator(self.valid, self.batch_size, shuffle=True, seed=self.seed + 1, **self.shard)
            batches.epoch = epoch * 1000 + repeat
            yield from batches

    def __iter__(self) -> Iterator[tuple[Batch, Batch]]:
        epoch = self.epoch_source() if self.epoch_source is not None else self._epochs_started
        self._epochs_started += 1
        train = BatchIterator(self.train, self.batch_size, shuffle=True, seed=self.seed, **self.shard)
        train.epoch = epoch
        yield from zip(train, self._valid_batches(epoch))


class SearchDataModule(CTRDataModule):
    """The data of a search (recsys/tasks/search.py): training batches paired with validation batches
    (`PairedBatches`), the validation split for the per-epoch selection, and never the test split: it is
    not loaded, and asking for it is an error."""

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "valid"):
            self.load(split)

    def load(self, split: str) -> Batch:
        if split == "test":
            raise RuntimeError("a search never reads the test split: only the retrained model is evaluated on it")
        return super().load(split)

    def _epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.current_epoch) if trainer is not None else 0

    def train_dataloader(self) -> PairedBatches:
        return PairedBatches(self.load("train"), self.load("valid"), self.batch_size, self.seed,
                             epoch=self._epoch if getattr(self, "trainer", None) is not None else None, **self._shard())

    def test_dataloader(self) -> BatchIterator:
        return self.load("test")  # raises
