"""A small prepared dataset whose rows say who they are: the dense field `row` holds each row's number in
its split (float32 is exact far beyond these sizes), so a test can tell which rows a batch holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.data import PreparedData
from recsys.features import FeaturePipeline

ROW_FIELDS = [
    {"name": "label", "kind": "label"},
    {"name": "row", "kind": "numeric"},
    {"name": "c", "kind": "categorical"},
    {"name": "d", "kind": "categorical"},
    {"name": "g", "kind": "group"},
]


def write_row_dataset(directory: Path, rows: dict[str, int], seed: int = 0) -> PreparedData:
    """Fit on train, transform every split to Parquet: the layout `prepare_dataset` writes."""
    rng = np.random.default_rng(seed)
    frames = {
        split: pl.DataFrame({
            "label": rng.integers(0, 2, n), "row": np.arange(n, dtype=np.float64),
            "c": rng.integers(0, 40, n), "d": rng.integers(0, 7, n).astype(str), "g": rng.integers(0, 30, n),
        })
        for split, n in rows.items()
    }
    pipeline = FeaturePipeline(ROW_FIELDS).fit(frames["train"])
    pipeline.save(directory / "features")
    for split, frame in frames.items():
        pipeline.transform(frame).sink_parquet(directory / f"{split}.parquet")
    (directory / "DONE").touch()
    return PreparedData("rows", directory)


@pytest.fixture(scope="module")
def row_dataset(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    return write_row_dataset(tmp_path_factory.mktemp("rows"), {"train": 2503, "valid": 611, "test": 397})


@pytest.fixture(scope="module")
def disk_module(row_dataset: PreparedData):  # noqa: ANN201 - a CTRDataModule
    """The row dataset on disk storage: batches of 128, eval batches of 100, blocks of 300 rows, seed 7."""
    from recsys.data import CTRDataModule

    dm = CTRDataModule(row_dataset, batch_size=128, eval_batch_size=100, seed=7, storage="disk", block_rows=300)
    dm.setup()
    return dm
