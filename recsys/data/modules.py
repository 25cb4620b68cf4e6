"""Lightning data modules: the one place a task's batches come from. Every module keeps the Batch
contract, whatever storage feeds it."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl
import pytorch_lightning as L
import torch

from recsys.batch import Batch
from recsys.data.arrays import SplitArrays, write_split_arrays
from recsys.data.batches import BatchIterator, frame_to_batch
from recsys.data.prepare import SPLITS, PreparedData
from recsys.data.sources import DEFAULT_BLOCK_ROWS, BatchSource, DiskSource
from recsys.features import FeatureError, FeaturePipeline, Schema

log = logging.getLogger(__name__)
STORAGES = ("auto", "memory", "disk")
ORDERS = ("auto", "global", "blocks")
GIB = 1 << 30


def tensor_bytes_per_row(schema: Schema) -> int:
    """What one row takes as whole-split Batch tensors (int64 ids, float32 dense and label)."""
    seq = sum(f.max_len or 0 for f in schema.sequence)
    return (8 * len(schema.sparse) + 4 * len(schema.dense) + 8 * seq + (4 if schema.label is not None else 0)
            + (8 if schema.group is not None else 0))


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

    def source(self, split: str, batch_size: int, *, shuffle: bool) -> BatchSource:
        """The batch source of one split for this process. A training source starts at the trainer's epoch,
        so a run resumed from a checkpoint draws the orders it would have."""
        source = self._split_source(split, batch_size, shuffle=shuffle)
        epoch = self._trainer_epoch()
        if shuffle and epoch is not None:
            source.set_epoch(epoch)
        return source

    def _split_source(self, split: str, batch_size: int, *, shuffle: bool) -> BatchSource:
        """The split's batches from this module's storage (whole-split Batches here)."""
        return BatchIterator(self.load(split), batch_size, shuffle=shuffle, seed=self.seed, **self._shard())

    def _trainer_epoch(self) -> int | None:
        """The attached trainer's current epoch; None outside a trainer."""
        trainer = getattr(self, "trainer", None)
        return None if trainer is None else int(trainer.current_epoch)

    def train_dataloader(self) -> BatchSource:
        return self.source("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> BatchSource:
        return self.source("valid", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> BatchSource:
        return self.source("test", self.eval_batch_size, shuffle=False)


class CTRDataModule(SplitsDataModule):
    """One row per impression, from one of two storages (a `BatchSource` each, recsys/data/sources.py):

    - memory: the split's columns as whole-split tensors, batches by index slices (`BatchIterator`);
    - disk: the split's fixed-width arrays beside its Parquet (written on first use, recsys/data/arrays.py),
      read block by block in a seeded block order (`DiskSource`): memory stays flat whatever the size.

    Args:
        prepared: the fitted and transformed dataset (`recsys.data.prepare_dataset`).
        batch_size: training batch (the global batch under data parallelism).
        eval_batch_size: validation and test batch.
        seed: the training order's seed (each epoch reseeds from (seed, epoch)).
        storage: "memory", "disk", or "auto": memory when every split as tensors takes at most
            `memory_limit_gb`, else disk. The choice is logged when the data is set up.
        order: the training order: "global" (a permutation of all rows; memory only), "blocks" (blocks of
            `block_rows` rows in a seeded order, a seeded order inside each; what disk reads), or "auto"
            (global in memory, blocks on disk).
        block_rows: rows per block of the block order.
        memory_limit_gb: the size up to which "auto" keeps the splits in memory.
    """

    def __init__(self, prepared: PreparedData, batch_size: int = 4096, eval_batch_size: int = 16384, seed: int = 0,
                 storage: str = "auto", order: str = "auto", block_rows: int = DEFAULT_BLOCK_ROWS,
                 memory_limit_gb: float = 4.0):
        super().__init__()
        if storage not in STORAGES:
            raise ValueError(f"data.storage must be one of {STORAGES}, got {storage!r}")
        if order not in ORDERS:
            raise ValueError(f"data.order must be one of {ORDERS}, got {order!r}")
        self.prepared = prepared
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.storage, self.order, self.block_rows, self.memory_limit_gb = storage, order, block_rows, memory_limit_gb
        self.schema = prepared.schema()
        self.splits: dict[str, Batch] = {}
        self.arrays: dict[str, SplitArrays] = {}
        self.resolved_storage: str | None = None

    # ------------------------------------------------------------------ storage
    # The splits this module reads (a search never reads test).
    splits_read: tuple[str, ...] = SPLITS

    def split_rows(self) -> dict[str, int]:
        return {s: pl.scan_parquet(self.prepared.split_path(s)).select(pl.len()).collect().item() for s in self.splits_read}

    def resolve_storage(self) -> str:
        """Where this run's splits live ("memory" or "disk"), decided once and logged."""
        if self.resolved_storage is None:
            rows = sum(self.split_rows().values())
            size_gb = rows * tensor_bytes_per_row(self.schema) / GIB
            if self.storage == "auto":
                choice = "memory" if size_gb <= self.memory_limit_gb else "disk"
                why = f"auto: the splits take {size_gb:.2f} GiB as tensors, limit data.memory_limit_gb={self.memory_limit_gb:g}"
            else:
                choice, why = self.storage, f"data.storage={self.storage}; the splits take {size_gb:.2f} GiB as tensors"
            order = self.order if self.order != "auto" else ("global" if choice == "memory" else "blocks")
            if choice == "disk" and order == "global":
                raise ValueError("data.order=global needs data.storage=memory: from disk the order is by blocks "
                                 "(data.order=blocks, data.block_rows sets their size)")
            self.resolved_storage, self.resolved_order = choice, order
            block = f" of {self.block_rows:,} rows" if order == "blocks" else ""
            log.info("data storage: %s (%s); training order: %s%s; %s rows", choice, why, order, block, f"{rows:,}")
        return self.resolved_storage

    def arrays_dir(self, split: str) -> Path:
        return self.prepared.directory / "arrays" / split

    def load_arrays(self, split: str) -> SplitArrays:
        """The split's fixed-width arrays, written from its Parquet on first use."""
        if split not in self.arrays:
            path = self.arrays_dir(split)
            write_split_arrays(self.prepared.split_path(split), self.schema, path, split)
            self.arrays[split] = SplitArrays(path, self.schema)
        return self.arrays[split]

    def load(self, split: str) -> Batch:
        """The whole split as tensors (the memory storage)."""
        if split not in self.splits:
            self.splits[split] = frame_to_batch(pl.read_parquet(self.prepared.split_path(split)), self.schema)
        return self.splits[split]

    def setup(self, stage: str | None = None) -> None:
        storage = self.resolve_storage()
        for split in self.splits_read:
            self.load(split) if storage == "memory" else self.load_arrays(split)

    def row_counts(self) -> dict[str, np.ndarray]:
        """Training occurrence counts per vocabulary table, from the fitted feature artifacts."""
        return FeaturePipeline.load(self.prepared.features_dir).row_counts()

    def training_pass(self) -> BatchSource:
        """Every training row once, in split order, whatever this process's shard: for statistics every
        process must agree on (OptInter's cross vocabulary under a minimum count)."""
        return self._split_source("train", self.eval_batch_size, shuffle=False, whole=True)

    def _split_source(self, split: str, batch_size: int, *, shuffle: bool, whole: bool = False) -> BatchSource:
        """The split's batches from this run's storage: whole-split Batches in memory, or read from disk;
        this process's shard of them unless `whole`."""
        shard = {} if whole else self._shard()
        if self.resolve_storage() == "memory":
            block_rows = self.block_rows if self.resolved_order == "blocks" else None
            return BatchIterator(self.load(split), batch_size, shuffle=shuffle, seed=self.seed, block_rows=block_rows,
                                 **shard)
        return DiskSource(self.load_arrays(split), batch_size, shuffle=shuffle, seed=self.seed,
                          block_rows=self.block_rows, **shard)


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
            batches.set_epoch(epoch * 1000 + repeat)
            yield from batches

    def __iter__(self) -> Iterator[tuple[Batch, Batch]]:
        epoch = self.epoch_source() if self.epoch_source is not None else self._epochs_started
        self._epochs_started += 1
        train = BatchIterator(self.train, self.batch_size, shuffle=True, seed=self.seed, **self.shard)
        train.set_epoch(epoch)
        yield from zip(train, self._valid_batches(epoch))


class SearchDataModule(CTRDataModule):
    """The data of a search (recsys/tasks/search.py): training batches paired with validation batches
    (`PairedBatches`), the validation split for the per-epoch selection, and never the test split: it is
    not loaded, and asking for it is an error."""

    splits_read = ("train", "valid")

    def load(self, split: str) -> Batch:
        if split == "test":
            raise RuntimeError("a search never reads the test split: only the retrained model is evaluated on it")
        return super().load(split)

    def train_dataloader(self) -> PairedBatches:
        return PairedBatches(self.load("train"), self.load("valid"), self.batch_size, self.seed,
                             epoch=self._trainer_epoch if self._trainer_epoch() is not None else None, **self._shard())

    def test_dataloader(self) -> BatchIterator:
        return self.load("test")  # raises
