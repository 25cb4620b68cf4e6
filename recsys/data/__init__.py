"""Datasets: raw files -> fitted features (cached, keyed by a fingerprint) -> tensors -> batches.

- `prepare`: fit the feature pipeline and transform every split, once per fingerprint.
- `batches`: whole-split tensors in the Batch layout, batches by index slices.
- `modules`: the Lightning data modules the tasks train on.
- `synthetic`: the labelled synthetic dataset a first run uses when no real data is there.
"""

from recsys.data.batches import BatchIterator, frame_to_batch
from recsys.data.modules import CTRDataModule, PairedBatches, SearchDataModule
from recsys.data.prepare import SPLITS, PreparedData, check_labels, prepare_dataset

__all__ = ["SPLITS", "BatchIterator", "CTRDataModule", "PairedBatches", "PreparedData", "SearchDataModule",
           "check_labels", "frame_to_batch", "prepare_dataset"]
