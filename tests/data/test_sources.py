"""Batch sources: every row once per epoch, a seed fixes the order, shares under data parallelism are
disjoint and cover the split, and memory and disk give the same batches for the same order."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
import torch

from recsys.data import CTRDataModule
from recsys.data.arrays import SplitArrays
from recsys.data.sources import BlockOrder, DiskSource, share_sizes

ROW = 0  # `row` is the only dense field


def rows_of(batches) -> np.ndarray:  # noqa: ANN001
    return np.concatenate([b.dense[:, ROW].numpy() for b in batches]).astype(np.int64)


def test_block_order_holds_every_row_once_with_blocks_kept_together() -> None:
    n, block = 1003, 100
    order = BlockOrder(n, block, seed=5, epoch=2)
    rows = order.rows()
    assert np.array_equal(np.sort(rows), np.arange(n))
    blocks = rows // block
    runs = blocks[np.r_[True, blocks[1:] != blocks[:-1]]]
    assert sorted(runs.tolist()) == list(range(11))  # each block appears in one stretch of the order
    assert runs.tolist() != list(range(11))  # the blocks are shuffled ...
    assert not np.array_equal(rows[blocks == runs[0]], np.sort(rows[blocks == runs[0]]))  # ... and so is each block
    for start, stop in ((0, 1), (99, 101), (250, 731), (1000, 1003), (0, 1003), (500, 500)):
        assert np.array_equal(order.rows(start, stop), rows[start:stop]), (start, stop)
    assert np.array_equal(BlockOrder(n, block, seed=5, epoch=2, shuffle=False).rows(), np.arange(n))


def test_every_row_exactly_once_per_epoch_and_the_seed_fixes_the_order(disk_module) -> None:  # noqa: ANN001
    source = disk_module.train_dataloader()
    epochs = [list(source) for _ in range(2)]
    n = disk_module.load_arrays("train").n_rows
    for batches in epochs:
        assert len(batches) == len(source) == -(-n // 128)
        assert [len(b) for b in batches] == [128] * (len(batches) - 1) + [n - 128 * (len(batches) - 1)]
        assert np.array_equal(np.sort(rows_of(batches)), np.arange(n))
    assert not np.array_equal(rows_of(epochs[0]), rows_of(epochs[1]))  # a new order each epoch
    again = disk_module.train_dataloader()
    assert all(np.array_equal(rows_of(list(again)), rows_of(e)) for e in epochs)  # same seed, same orders
    other = DiskSource(disk_module.load_arrays("train"), 128, shuffle=True, seed=8, block_rows=300)
    assert not np.array_equal(rows_of(list(other)), rows_of(epochs[0]))
    other.set_epoch(1)
    assert not np.array_equal(rows_of(list(other)), rows_of(epochs[1]))
    resumed = disk_module.train_dataloader()
    resumed.set_epoch(1)
    assert np.array_equal(rows_of(list(resumed)), rows_of(epochs[1]))


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_a_resumed_run_starts_at_its_epoch_order(row_dataset, storage) -> None:  # noqa: ANN001
    dm = CTRDataModule(row_dataset, batch_size=128, seed=7, storage=storage, block_rows=300)
    dm.setup()
    fresh = dm.train_dataloader()
    orders = [rows_of(list(fresh)) for _ in range(3)]

    class Trainer:  # what a trainer restored at the end of epoch 2 reports
        current_epoch = 2
        world_size = 1

    dm.trainer = Trainer()
    assert np.array_equal(rows_of(list(dm.train_dataloader())), orders[2])


def test_memory_and_disk_give_the_same_batches_for_the_same_order(row_dataset, disk_module) -> None:  # noqa: ANN001
    memory = CTRDataModule(row_dataset, batch_size=128, eval_batch_size=100, seed=7, storage="memory", order="blocks",
                           block_rows=300)
    memory.setup()
    pairs = [(memory.train_dataloader(), disk_module.train_dataloader()),
             (memory.val_dataloader(), disk_module.val_dataloader()),
             (memory.test_dataloader(), disk_module.test_dataloader())]
    for mem, disk in pairs:
        for _ in range(2):  # two epochs
            mem_batches, disk_batches = list(mem), list(disk)
            assert len(mem_batches) == len(disk_batches) == len(mem) == len(disk)
            for a, b in zip(mem_batches, disk_batches):
                for name in ("sparse", "dense", "seq", "label", "group"):
                    x, y = getattr(a, name), getattr(b, name)
                    assert x.dtype == y.dtype and torch.equal(x, y), name


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_take_disjoint_shares_that_cover_the_split_and_read_only_their_blocks(disk_module, world_size) -> None:  # noqa: ANN001
    arrays = disk_module.load_arrays("train")
    reads: dict[int, list[tuple[int, int]]] = {}

    class Recording(SplitArrays):
        def __init__(self, rank: int):
            self.__dict__.update(arrays.__dict__)
            self.rank = rank

        def read(self, start: int, stop: int, out=None):  # noqa: ANN001, ANN201
            reads.setdefault(self.rank, []).append((start, stop))
            return super().read(start, stop, out)

    sources = [DiskSource(Recording(r), 128, shuffle=True, seed=3, rank=r, world_size=world_size, block_rows=300, prefetch=0)
               for r in range(world_size)]
    per_rank = [list(s) for s in sources]
    assert len({len(s) for s in sources}) == 1 and all(len(b) == len(sources[0]) for b in per_rank)  # same steps
    for step in range(len(sources[0])):  # each step's batches make one global batch
        assert sum(len(b[step]) for b in per_rank) == min(128, arrays.n_rows - 128 * step)
    rows = [rows_of(b) for b in per_rank]
    together = np.concatenate(rows)
    assert len(together) == arrays.n_rows and np.array_equal(np.sort(together), np.arange(arrays.n_rows))
    # Only the blocks at the seams between two shares are read by two processes.
    read = sum(stop - start for r in reads.values() for start, stop in r)
    assert read <= arrays.n_rows + (world_size - 1) * 300
    single = list(DiskSource(arrays, 128, shuffle=True, seed=3, block_rows=300))
    assert np.array_equal(together, rows_of(single))  # the shares, rank after rank, are the one-process order


def test_share_sizes_split_every_global_batch_evenly() -> None:
    sizes = share_sizes(1001, 100, 3, drop_last=False)
    assert sizes.shape == (3, 11) and sizes.sum() == 1001
    assert sizes[:, 0].tolist() == [34, 33, 33] and sizes[:, -1].tolist() == [1, 0, 0]
    dropped = share_sizes(1001, 100, 3, drop_last=True)
    assert dropped.shape == (3, 10) and dropped.sum() == 1000


def test_evaluation_reads_in_file_order(disk_module) -> None:  # noqa: ANN001
    batches = list(disk_module.val_dataloader())
    assert np.array_equal(rows_of(batches), np.arange(disk_module.load_arrays("valid").n_rows))


@pytest.mark.parametrize(("shuffle", "prefetch"), [(False, 0), (False, 2), (True, 2)])
def test_a_batch_that_spans_many_blocks_is_read_to_the_end(disk_module, shuffle: bool, prefetch: int) -> None:  # noqa: ANN001
    # One batch of the whole split over 50-row blocks: every block it spans is held until it is copied out.
    arrays = disk_module.load_arrays("train")
    source = DiskSource(arrays, arrays.n_rows, shuffle=shuffle, seed=2, block_rows=50, prefetch=prefetch)
    result: list = []
    reader = threading.Thread(target=lambda: result.extend(source), daemon=True)
    reader.start()
    reader.join(timeout=30)
    assert not reader.is_alive(), "the source waited for a buffer it never got back"
    assert len(result) == 1 and np.array_equal(np.sort(rows_of(result)), np.arange(arrays.n_rows))


def test_the_read_ahead_thread_stops_with_its_consumer_and_passes_errors_on(disk_module) -> None:  # noqa: ANN001
    def prefetchers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "recsys-prefetch" and t.is_alive()]

    before = len(prefetchers())
    iterator = iter(DiskSource(disk_module.load_arrays("train"), 16, shuffle=True, seed=1, block_rows=50, prefetch=1))
    next(iterator)
    assert len(prefetchers()) == before + 1
    iterator.close()  # what a loop that breaks early does
    deadline = time.monotonic() + 5
    while len(prefetchers()) > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(prefetchers()) == before

    class Failing(SplitArrays):
        def __init__(self):
            self.__dict__.update(disk_module.load_arrays("train").__dict__)

        def read(self, start: int, stop: int, out=None):  # noqa: ANN001, ANN201
            if start > 0:
                raise OSError("disk gone")
            return super().read(start, stop, out)

    with pytest.raises(OSError, match="disk gone"):
        list(DiskSource(Failing(), 64, shuffle=False, block_rows=100))


def test_storage_auto_chooses_by_size_and_says_so(row_dataset, caplog) -> None:  # noqa: ANN001
    with caplog.at_level(logging.INFO, logger="recsys.data.modules"):
        assert CTRDataModule(row_dataset).resolve_storage() == "memory"
        assert CTRDataModule(row_dataset, memory_limit_gb=1e-6).resolve_storage() == "disk"
    said = [r.getMessage() for r in caplog.records if "data storage" in r.getMessage()]
    assert said[0].startswith("data storage: memory (auto") and "training order: global" in said[0]
    assert said[1].startswith("data storage: disk (auto") and "training order: blocks" in said[1]
    with pytest.raises(ValueError, match="data.order=global needs data.storage=memory"):
        CTRDataModule(row_dataset, storage="disk", order="global").resolve_storage()
    with pytest.raises(ValueError, match="data.storage must be one of"):
        CTRDataModule(row_dataset, storage="ssd")
