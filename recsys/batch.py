"""The Batch: the same fixed tensor groups for every model, so export and serving need no per-model code.

Which column of a group means which field lives in the schema (`Schema.sparse`, `.dense`, `.sequence`),
never in the tensors. Padding id 0 and out-of-vocabulary id 1 everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

INPUT_NAMES = ("sparse", "dense", "seq")


@dataclass
class Batch:
    sparse: torch.Tensor  # int64 [B, F_sparse]
    dense: torch.Tensor  # float32 [B, F_dense]
    seq: torch.Tensor  # int64 [B, F_seq, L]; empty [B, 0, 0] when the schema has no sequence
    label: torch.Tensor | None = None  # float32 [B]; CTR training and evaluation only
    group: torch.Tensor | None = None  # int64 [B]; grouped metrics (gAUC) only
    # Next-item tasks only: the item id to predict, int64 [B] (evaluation) or [B, L] for every position of
    # the input sequence (training; 0 where there is nothing to predict).
    target: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.sparse.shape[0]

    def _map(self, fn) -> Batch:  # noqa: ANN001 - tensor -> tensor
        return Batch(*(None if t is None else fn(t) for t in (getattr(self, f.name) for f in fields(self))))

    def take(self, index: torch.Tensor | slice) -> Batch:
        """Rows `index` (integer positions or a slice) of every tensor: one gather per group, never a loop
        over rows. Positions go through `index_select`: `t[index]` runs torch's general advanced-indexing
        kernel, whose threads wait on each other; on a 2-core machine under load it took 24 ms for 1024
        rows of 26 ids where index_select took 0.02 ms (bench streaming)."""
        if isinstance(index, torch.Tensor) and index.dtype != torch.bool:
            return self._map(lambda t: t.index_select(0, index))
        return self._map(lambda t: t[index])

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The model inputs, positionally, as ONNX export takes them."""
        return self.sparse, self.dense, self.seq

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Page-locked copies, so a later `to(cuda, non_blocking=True)` overlaps the copy with compute."""
        return self._map(lambda t: t.pin_memory())
