"""The Batch: the same fixed tensor groups for every model, so export and serving need no per-model code.

Which column of a group means which field lives in the schema (`Schema.sparse`, `.dense`, `.sequence`),
never in the tensors. Padding id 0 and out-of-vocabulary id 1 everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INPUT_NAMES = ("sparse", "dense", "seq")


@dataclass
class Batch:
    sparse: torch.Tensor  # int64 [B, F_sparse]
    dense: torch.Tensor  # float32 [B, F_dense]
    seq: torch.Tensor  # int64 [B, F_seq, L]; empty [B, 0, 0] when the schema has no sequence
    label: torch.Tensor | None = None  # float32 [B]; training and evaluation only
    group: torch.Tensor | None = None  # int64 [B]; grouped metrics (gAUC) only

    def __len__(self) -> int:
        return self.sparse.shape[0]

    def take(self, index: torch.Tensor | slice) -> Batch:
        """Rows `index` of every tensor: one gather per group, never a loop over rows."""
        return Batch(
            self.sparse[index],
            self.dense[index],
            self.seq[index],
            None if self.label is None else self.label[index],
            None if self.group is None else self.group[index],
        )

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The model inputs, positionally, as ONNX export takes them."""
        return self.sparse, self.dense, self.seq

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(None if t is None else t.to(device) for t in (self.sparse, self.dense, self.seq, self.label, self.group)))
