"""A transformed split on disk as fixed-width arrays: one `.npy` file per Batch group (`sparse`, `dense`,
`seq`, `label`, `group`) in `<prepared>/arrays/<split>/`, beside the split's Parquet, plus a manifest.

Why another copy of the split: Parquet is compressed and columnar, so reading rows k..k+n means decoding
pages; a fixed-width row-major array gives rows k..k+n as one byte range, read straight into a buffer.
The files are ordinary `.npy` (`np.load(path, mmap_mode="r")` maps them), in compact dtypes: ids as int32
when every table fits (cast to int64 per batch, as the Batch contract says), labels as uint8.

Written from the Parquet in chunks (never the whole split in memory) into a temporary folder renamed into
place: a reader sees all of it or none of it. Read with positional reads (`os.preadv`) into fresh
buffers rather than through a memory map, so the pages read stay in the kernel's page cache, which
the kernel can drop, and not in the process's resident memory, which a full pass over a map would fill.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from recsys.batch import Batch
from recsys.data.batches import frame_to_batch
from recsys.features import FeatureError, Schema

ARRAYS_VERSION = 1
MANIFEST = "manifest.json"
GROUPS = ("sparse", "dense", "seq", "label", "group")
# The dtype each group has in a Batch (what a read is cast to).
BATCH_DTYPES = {"sparse": torch.int64, "dense": torch.float32, "seq": torch.int64, "label": torch.float32,
                "group": torch.int64}
INT32_MAX = np.iinfo(np.int32).max


def disk_dtypes(schema: Schema) -> dict[str, np.dtype]:
    """The on-disk dtype of each group present in the schema: ids as int32 when every id fits."""
    sizes = [f.vocab_size or 0 for f in schema.sparse + schema.sequence]
    ids = np.dtype(np.int32) if max(sizes, default=0) <= INT32_MAX else np.dtype(np.int64)
    dtypes = {"sparse": ids, "dense": np.dtype(np.float32), "seq": ids}
    if schema.label is not None:
        dtypes["label"] = np.dtype(np.uint8)
    if schema.group is not None:
        dtypes["group"] = np.dtype(np.int32) if (schema.group.vocab_size or 0) <= INT32_MAX else np.dtype(np.int64)
    return dtypes


def _to_disk(name: str, tensor: torch.Tensor, dtype: np.dtype, split: str, first_row: int) -> np.ndarray:
    """A chunk of one group in its on-disk dtype; a label other than 0/1 (which uint8 cannot hold) is refused."""
    values = tensor.numpy()
    if name == "label":
        bad = np.flatnonzero((values != 0) & (values != 1))
        if bad.size:
            raise FeatureError(f"split {split!r}: row {first_row + int(bad[0])} has label {values[bad[0]]}; "
                               "the on-disk arrays hold labels 0 and 1 only")
    return np.ascontiguousarray(values.astype(dtype, copy=False))


def write_split_arrays(parquet: str | Path, schema: Schema, target: str | Path, split: str,
                       chunk_rows: int = 1 << 18, progress: bool = True) -> Path:
    """Write `target` (a folder) from a transformed split's Parquet, `chunk_rows` rows at a time. If another
    process finished the same folder first, its copy is kept and ours discarded."""
    from tqdm.auto import tqdm

    target = Path(target)
    if (target / MANIFEST).exists():
        return target
    scan = pl.scan_parquet(parquet)
    n_rows = scan.select(pl.len()).collect().item()
    dtypes = disk_dtypes(schema)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        shapes: dict[str, tuple[int, ...]] = {}
        written = 0
        with ExitStack() as files, tqdm(total=n_rows, desc=f"arrays {split}", unit="row", unit_scale=True,
                                        disable=not progress) as bar:
            handles = {}
            # One query per chunk (the reader skips the row groups before it): `collect_batches` reads ahead
            # of a slow consumer without bound, so its memory grew with the rows.
            for offset in range(0, n_rows, chunk_rows):
                batch = frame_to_batch(scan.slice(offset, chunk_rows).collect(engine="streaming"), schema)
                for name in dtypes:
                    tensor = getattr(batch, name)
                    if tensor is None:
                        raise FeatureError(f"split {split!r}: the Parquet has no column for the {name} field")
                    if name not in handles:
                        shapes[name] = (n_rows, *tensor.shape[1:])
                        handles[name] = files.enter_context((tmp / f"{name}.npy").open("wb"))
                        np.lib.format.write_array_header_1_0(handles[name], {
                            "descr": np.lib.format.dtype_to_descr(dtypes[name]), "fortran_order": False,
                            "shape": shapes[name]})
                    handles[name].write(_to_disk(name, tensor, dtypes[name], split, written).tobytes())
                written += len(batch)
                bar.update(len(batch))
        if written != n_rows:
            raise FeatureError(f"split {split!r}: read {written} rows from {parquet}, its metadata says {n_rows}")
        manifest = {"version": ARRAYS_VERSION, "rows": n_rows, "schema": schema.fingerprint(), "source": str(parquet),
                    "groups": {n: {"dtype": dtypes[n].str, "shape": list(shapes.get(n, (0,)))} for n in dtypes}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / MANIFEST).exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process wrote the same arrays first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


@dataclass(frozen=True)
class _Column:
    path: Path
    offset: int  # where the rows start (after the .npy header)
    dtype: np.dtype
    row_shape: tuple[int, ...]

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize


class SplitArrays:
    """A split's arrays, read by row ranges. Holds no open files and no data between reads."""

    def __init__(self, directory: str | Path, schema: Schema | None = None):
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST
        if not manifest_path.exists():
            raise FeatureError(f"no arrays at {self.directory} (no {MANIFEST}): write them with write_split_arrays")
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("version") != ARRAYS_VERSION:
            raise FeatureError(f"{self.directory}: arrays version {self.manifest.get('version')}, expected {ARRAYS_VERSION}")
        if schema is not None and self.manifest["schema"] != schema.fingerprint():
            raise FeatureError(f"{self.directory}: written for another schema ({self.manifest['schema']})")
        self.n_rows = int(self.manifest["rows"])
        self.columns: dict[str, _Column] = {}
        for name in self.manifest["groups"]:
            path = self.directory / f"{name}.npy"
            with path.open("rb") as handle:
                version = np.lib.format.read_magic(handle)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(handle)
                offset = handle.tell()
            if fortran or shape[0] != self.n_rows:
                raise FeatureError(f"{path}: shape {shape} does not hold {self.n_rows} rows in C order")
            expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if path.stat().st_size != expected:
                raise FeatureError(f"{path}: {path.stat().st_size} bytes, expected {expected} (a truncated file?)")
            self.columns[name] = _Column(path, offset, dtype, tuple(shape[1:]))

    def __len__(self) -> int:
        return self.n_rows

    @property
    def row_bytes(self) -> int:
        return sum(c.row_bytes for c in self.columns.values())

    def empty(self, rows: int) -> dict[str, torch.Tensor]:
        """Uninitialised buffers for `rows` rows of every group, in their on-disk dtypes."""
        return {name: torch.from_numpy(np.empty((rows, *c.row_shape), dtype=c.dtype)) for name, c in self.columns.items()}

    def read(self, start: int, stop: int, out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Rows [start, stop) of every group, in their on-disk dtypes: into the first rows of `out` (buffers
        from `empty`, reused so that a read costs no new pages) or into new buffers."""
        if not 0 <= start <= stop <= self.n_rows:
            raise IndexError(f"rows [{start}, {stop}) outside a split of {self.n_rows} rows ({self.directory})")
        out = self.empty(stop - start) if out is None else out
        rows = {}
        for name, col in self.columns.items():
            if out[name].shape[0] < stop - start:
                raise ValueError(f"a buffer of {out[name].shape[0]} rows cannot hold rows [{start}, {stop})")
            buffer = out[name][: stop - start]
            rows[name] = buffer
            if col.row_bytes == 0:  # a group the schema leaves empty (no dense or no sequence fields)
                continue
            view = memoryview(buffer.numpy()).cast("B")
            fd = os.open(col.path, os.O_RDONLY)
            try:
                done, offset = 0, col.offset + start * col.row_bytes
                while done < len(view):  # preadv may return less than asked (signals, very large reads)
                    got = os.preadv(fd, [view[done:]], offset + done)
                    if got == 0:
                        raise FeatureError(f"{col.path}: unexpected end of file at byte {offset + done}")
                    done += got
            finally:
                os.close(fd)
        return rows


def to_batch(rows: dict[str, torch.Tensor]) -> Batch:
    """On-disk dtypes -> the Batch contract's (int64 ids, float32 dense and labels), in new tensors."""
    # Always a copy, even where the dtypes agree: the rows may sit in a buffer that is about to be refilled.
    cast = {name: t.to(BATCH_DTYPES[name], copy=True) for name, t in rows.items()}
    return Batch(cast["sparse"], cast["dense"], cast["seq"], cast.get("label"), cast.get("group"))
