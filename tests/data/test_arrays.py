"""The fixed-width arrays beside a split's Parquet: compact on disk, the Batch contract when read, whole or
absent after a crash, and a damaged file refused by name."""

from __future__ import annotations

import shutil

import numpy as np
import polars as pl
import pytest
import torch

import recsys.data.arrays as arrays_module
from recsys.batch import Batch
from recsys.data.arrays import SplitArrays, to_batch, write_split_arrays
from recsys.data.batches import frame_to_batch
from recsys.features import FeatureError


def test_arrays_are_compact_on_disk_and_read_back_as_the_batch_contract(row_dataset, tmp_path) -> None:  # noqa: ANN001
    schema = row_dataset.schema()
    target = write_split_arrays(row_dataset.split_path("train"), schema, tmp_path / "train", "train", chunk_rows=700)
    assert np.load(target / "sparse.npy", mmap_mode="r").dtype == np.int32
    assert np.load(target / "label.npy", mmap_mode="r").dtype == np.uint8
    assert np.load(target / "group.npy", mmap_mode="r").dtype == np.int32
    expected = frame_to_batch(pl.read_parquet(row_dataset.split_path("train")), schema)
    arrays = SplitArrays(target, schema)
    assert len(arrays) == len(expected) == 2503
    for start, stop in ((0, 2503), (699, 1401), (2500, 2503)):
        got = to_batch(arrays.read(start, stop))
        want = expected.take(slice(start, stop))
        for name in ("sparse", "dense", "seq", "label", "group"):
            a, b = getattr(got, name), getattr(want, name)
            assert a.dtype == b.dtype and torch.equal(a, b), (name, start, stop)
    with pytest.raises(IndexError, match="outside a split of 2503 rows"):
        arrays.read(2000, 2504)


def test_a_crash_while_writing_leaves_nothing_behind(row_dataset, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    calls = []

    def failing(frame: pl.DataFrame, schema) -> Batch:  # noqa: ANN001
        calls.append(frame.height)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return frame_to_batch(frame, schema)

    monkeypatch.setattr(arrays_module, "frame_to_batch", failing)
    with pytest.raises(KeyboardInterrupt):
        write_split_arrays(row_dataset.split_path("train"), row_dataset.schema(), tmp_path / "train", "train", chunk_rows=500)
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


def test_a_damaged_or_foreign_array_folder_is_refused_by_name(row_dataset, tmp_path) -> None:  # noqa: ANN001
    schema = row_dataset.schema()
    target = write_split_arrays(row_dataset.split_path("valid"), schema, tmp_path / "valid", "valid")
    damaged = tmp_path / "damaged"
    shutil.copytree(target, damaged)
    with (damaged / "sparse.npy").open("r+b") as handle:
        handle.truncate((damaged / "sparse.npy").stat().st_size - 4)
    with pytest.raises(FeatureError, match=r"sparse\.npy.*truncated"):
        SplitArrays(damaged, schema)
    schema.fields[1].stats["mean"] = 123.0  # another fit
    with pytest.raises(FeatureError, match="written for another schema"):
        SplitArrays(target, schema)
    with pytest.raises(FeatureError, match="no arrays at"):
        SplitArrays(tmp_path / "nothing", schema)


def test_a_label_the_arrays_cannot_hold_is_refused_with_its_row(row_dataset, tmp_path) -> None:  # noqa: ANN001
    frame = pl.read_parquet(row_dataset.split_path("test"))
    frame = frame.with_columns(pl.when(pl.int_range(pl.len()) == 321).then(0.5).otherwise(pl.col("label")).alias("label"))
    frame.write_parquet(tmp_path / "test.parquet")
    with pytest.raises(FeatureError, match="split 'test': row 321 has label 0.5"):
        write_split_arrays(tmp_path / "test.parquet", row_dataset.schema(), tmp_path / "test", "test", chunk_rows=100)
    assert not (tmp_path / "test").exists()
