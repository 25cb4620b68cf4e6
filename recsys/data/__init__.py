"""Datasets: raw files -> fitted features (cached, keyed by a fingerprint) -> tensors -> batches.

- `prepare`: fit the feature pipeline and transform every split, once per fingerprint.
- `batches`: whole-split tensors in the Batch layout, batches by index slices.
- `sources`: the batch-source seam (in memory, or from disk in a seeded block order).
- `arrays`: a split's fixed-width arrays on disk, beside its Parquet.
- `modules`: the Lightning data modules the tasks train on.
- `synthetic`, `criteo_synthetic`: labelled synthetic datasets (a first run; benchmarks at scale).

The names below are imported on first use (PEP 562), so that a process that only generates or fits data
(`recsys bench streaming` runs each step in a fresh one) does not pay for importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BatchIterator": "recsys.data.batches", "frame_to_batch": "recsys.data.batches",
    "CTRDataModule": "recsys.data.modules", "NextItemDataModule": "recsys.data.modules",
    "PairedBatches": "recsys.data.modules", "SearchDataModule": "recsys.data.modules",
    "SPLITS": "recsys.data.prepare", "PreparedData": "recsys.data.prepare", "check_split": "recsys.data.prepare",
    "prepare_dataset": "recsys.data.prepare",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'recsys.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
