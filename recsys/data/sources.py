"""Batch sources: the seam between a data module and where its rows live.

A batch source is what a data module hands Lightning as a loader: `len()` batches per epoch (the same
on every process), iteration yielding `Batch`es, an `epoch` that seeds the order (advanced by each
iteration, or set with `set_epoch`), and a data-parallel share (`rank`, `world_size`), with
`batch_size` the global batch. Two implementations:

- `BatchIterator` (recsys/data/batches.py): whole-split tensors in memory; a batch is one gather.
- `DiskSource` (here): the split's fixed-width arrays on disk (recsys/data/arrays.py), read a block of
  consecutive rows at a time, in a seeded block order with a seeded order inside each block
  (`BlockOrder`); memory is a few blocks, whatever the split's size.

Models never know which one fed them: both yield the same Batch, and for the same order (`BlockOrder`)
the same rows in the same batches (tests/data/test_sources.py).
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator

import numpy as np
import torch

from recsys.batch import Batch

DEFAULT_BLOCK_ROWS = 1 << 18
_SEED_MASK = (1 << 63) - 1


class BatchSource(ABC):
    """Batches of one split for one process. Subclasses provide `_batches(epoch)`.

    Args:
        n_rows: rows in the split.
        batch_size: the global batch: under data parallelism the processes' batches of one step
            together hold `batch_size` rows.
        shuffle: a new seeded order every epoch (training), else file order (evaluation).
        seed: with the epoch, fixes the order.
        drop_last: leave out the last, short global batch.
        rank, world_size: this process's share under data parallelism.
    """

    def __init__(self, n_rows: int, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.n_rows, self.batch_size, self.shuffle, self.seed = n_rows, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.epoch = 0

    def __len__(self) -> int:
        n = self.n_rows
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration draws its order for (a resumed run sets where it stopped)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        self.epoch += 1
        return self._batches(epoch)

    @abstractmethod
    def _batches(self, epoch: int) -> Iterator[Batch]:
        """This process's batches of `epoch`, `len(self)` of them."""


class BlockOrder:
    """The order of rows 0..n_rows-1 in one epoch: the split cut into blocks of `block_rows` consecutive
    rows, the blocks in a random order drawn from (seed, epoch), the rows of each block in a random order
    drawn from (seed, epoch, block). Every row appears exactly once; any part of the order can be made
    without the rest, so a process reads only the blocks of its own share. `shuffle=False` is file order.
    """

    def __init__(self, n_rows: int, block_rows: int, seed: int, epoch: int, shuffle: bool = True):
        if block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        self.n_rows, self.block_rows, self.shuffle = n_rows, block_rows, shuffle
        self._seed = (seed & _SEED_MASK, epoch)
        n_blocks = -(-n_rows // block_rows)
        if shuffle:
            self.blocks = np.random.default_rng(list(self._seed)).permutation(n_blocks)
        else:
            self.blocks = np.arange(n_blocks)
        sizes = np.minimum(block_rows, n_rows - self.blocks * block_rows)
        # offsets[p]: where the p-th block of the order starts in the epoch's order.
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])

    def __len__(self) -> int:
        return len(self.blocks)

    def block_range(self, position: int) -> tuple[int, int]:
        """The rows [start, stop) of the file that the position-th block of the order holds."""
        start = int(self.blocks[position]) * self.block_rows
        return start, min(start + self.block_rows, self.n_rows)

    def within(self, position: int) -> np.ndarray:
        """The order of the position-th block's rows, as offsets 0..size-1 from its first row."""
        start, stop = self.block_range(position)
        if not self.shuffle:
            return np.arange(stop - start)
        block = int(self.blocks[position])
        return np.random.default_rng([*self._seed, block]).permutation(stop - start)

    def positions(self, start: int, stop: int) -> range:
        """The positions of the blocks that hold the order's rows [start, stop)."""
        if start >= stop:
            return range(0)
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        last = int(np.searchsorted(self.offsets, stop, side="left"))
        return range(first, last)

    def rows(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of the epoch's order, as row numbers of the file."""
        stop = self.n_rows if stop is None else stop
        parts = []
        for p in self.positions(start, stop):
            first, _ = self.block_range(p)
            rows = first + self.within(p)
            lo, hi = max(start - self.offsets[p], 0), min(stop - self.offsets[p], len(rows))
            parts.append(rows[lo:hi])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def share_sizes(n_rows: int, batch_size: int, world_size: int, drop_last: bool) -> np.ndarray:
    """[world_size, steps]: how many rows each process takes at each step. Every step's global batch
    (`batch_size` rows, the last one shorter unless dropped) is divided as evenly as it goes, so every
    process runs the same number of steps, which data parallelism needs."""
    steps = n_rows // batch_size if drop_last else -(-n_rows // batch_size)
    totals = np.full(steps, batch_size, dtype=np.int64)
    if steps and not drop_last:
        totals[-1] = n_rows - (steps - 1) * batch_size
    ranks = np.arange(world_size)[:, None]
    return totals[None, :] // world_size + (ranks < totals[None, :] % world_size)


class DiskSource(BatchSource):
    """Batches read from a split's fixed-width arrays (`SplitArrays`) in `BlockOrder`.

    Under data parallelism each process takes one contiguous stretch of the epoch's order (sized by
    `share_sizes`), so it reads only the blocks of that stretch: the processes read disjoint shares
    that together cover the split, and each step's global batch is still `batch_size` rows. A
    background thread reads and orders the next blocks while the current one is trained on.

    Args (beyond BatchSource's): arrays: the split's `SplitArrays`; block_rows: rows per block (the
    order's unit of randomness and of reading); prefetch: blocks read ahead (0: none).
    """

    def __init__(self, arrays, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False,  # noqa: ANN001
                 rank: int = 0, world_size: int = 1, block_rows: int = DEFAULT_BLOCK_ROWS, prefetch: int = 2):
        super().__init__(len(arrays), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, rank=rank,
                         world_size=world_size)
        self.arrays, self.block_rows, self.prefetch = arrays, block_rows, prefetch
        sizes = share_sizes(self.n_rows, batch_size, world_size, drop_last)
        self.sizes = sizes[rank]
        # This process's stretch of every epoch's order: after the ranks before it.
        self.start = int(sizes[:rank].sum())
        self.stop = self.start + int(self.sizes.sum())

    def order(self, epoch: int) -> BlockOrder:
        return BlockOrder(self.n_rows, self.block_rows, self.seed, epoch, shuffle=self.shuffle)

    def _pieces(self, order: BlockOrder, pool: _BufferPool) -> Iterator[tuple[dict[str, torch.Tensor], dict]]:
        """This process's stretch of the order as consecutive pieces (one per block, rows ordered), each in
        a buffer set of `pool` that the consumer gives back when done with it."""
        # Where a block is read before its rows are put in order (this thread only, block after block).
        staging = self.arrays.empty(self.block_rows) if order.shuffle else None
        for p in order.positions(self.start, self.stop):
            first, last = order.block_range(p)
            lo = max(self.start - int(order.offsets[p]), 0)
            hi = min(self.stop - int(order.offsets[p]), last - first)
            buffers = pool.take()
            if buffers is None:  # the consumer stopped
                return
            if order.shuffle:
                rows = self.arrays.read(first, last, out=staging)
                index = torch.from_numpy(order.within(p))[lo:hi]
                piece = {k: torch.index_select(t, 0, index, out=buffers[k][: hi - lo]) for k, t in rows.items()}
            else:
                piece = self.arrays.read(first + lo, first + hi, out=buffers)
            yield piece, buffers

    def _batches(self, epoch: int) -> Iterator[Batch]:
        from recsys.data.arrays import to_batch

        # Blocks in flight: read ahead (waiting in the queue, and one more the reader holds), and every block
        # the batch being put together spans, which are given back only once it is copied out. A batch
        # larger than a block spans ceil(batch / block) + 1 of them: a fixed pool smaller than that waits
        # forever (an evaluation batch of 16,384 rows over 512-row blocks did).
        spanned = -(-self.batch_size // self.block_rows) + 1
        stop = threading.Event()
        pool = _BufferPool(lambda: self.arrays.empty(self.block_rows), self.prefetch + 1 + spanned, stop)
        pieces: Iterator = self._pieces(self.order(epoch), pool)
        if self.prefetch > 0:
            pieces = ReadAhead(pieces, self.prefetch, stop)
        current: dict[str, torch.Tensor] = {}
        done: list[dict] = []  # buffer sets read to the end, given back once the batch is copied out
        cursor = length = 0  # within the current piece
        try:
            for size in self.sizes.tolist():
                parts = []
                while size > 0:
                    if cursor == length:
                        current, buffers = next(pieces)
                        done.append(buffers)
                        cursor, length = 0, len(next(iter(current.values())))
                    take = min(size, length - cursor)
                    parts.append({k: t[cursor:cursor + take] for k, t in current.items()})
                    cursor += take
                    size -= take
                if not parts:  # a global batch smaller than world_size leaves this process nothing
                    parts.append({k: t[:0] for k, t in self.arrays.empty(0).items()})
                rows = parts[0] if len(parts) == 1 else {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
                batch = to_batch(rows)  # a copy: the buffers can be refilled
                for buffers in done[:-1] if cursor < length else done:
                    pool.give(buffers)
                done = done[-1:] if cursor < length else []
                yield batch
        finally:
            stop.set()
            close = getattr(pieces, "close", None)
            if close is not None:
                close()


class _BufferPool:
    """A fixed number of block-sized buffer sets, reused block after block: a fresh 40 MB array per block
    costs its page faults again (more CPU than reading the block), and the allocator hands such sizes
    back to the system at once."""

    def __init__(self, make, size: int, stop: threading.Event):  # noqa: ANN001 - () -> dict of tensors
        self._make, self._made, self._size, self._stop = make, 0, size, stop
        self._free: queue.Queue = queue.Queue()

    def take(self) -> dict | None:
        """A free buffer set (made on first need, up to `size` of them), or None once `stop` is set."""
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        if self._made < self._size:
            self._made += 1
            return self._make()
        while not self._stop.is_set():
            try:
                return self._free.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def give(self, buffers: dict) -> None:
        self._free.put(buffers)


class ReadAhead:
    """Iterate `source` in a background thread, `depth` items ahead. Closing (or dropping) the consumer, or
    setting `stop`, stops the thread; an error in the thread is raised in the consumer."""

    _DONE = object()

    def __init__(self, source: Iterator, depth: int, stop: threading.Event | None = None):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = stop or threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source,), daemon=True, name="recsys-prefetch")
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source: Iterator) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
            self._put(self._DONE)
        except BaseException as err:  # handed to the consumer
            self._put(err)

    def __iter__(self) -> ReadAhead:
        return self

    def __next__(self):  # noqa: ANN204
        item = self._queue.get()
        if item is self._DONE:
            self._stop.set()
            raise StopIteration
        if isinstance(item, BaseException):
            self._stop.set()
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __del__(self) -> None:
        self._stop.set()
