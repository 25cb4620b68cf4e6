"""Embedding lookups whose CPU backward adds the gradient rows with `index_add_`, with
`torch.nn.functional.embedding` as the twin.

PyTorch's CPU backward of an embedding (`embedding_dense_backward`) pays a fixed cost per looked-up id that
does not shrink with the width: on the 2-core benchmark machine, 40,960 ids (a 4096-row batch of Frappe's
10 fields) took 1.8 ms into a 10-wide table and 1.6 ms into DeepFM's 1-wide first-order table. `index_add_`
of the same rows into a zero gradient takes 0.7 and 0.1 ms: 5% of a DeepFM training step. The forward is the
same gather; the gradient is the same sum per row, in another order of addition (so equal to float32
rounding, not bit for bit).

The twin runs wherever this does not apply: other devices (CUDA's own backward is already a sorted
segment sum), a table that takes no gradient, and every trace, export and compile. Autocast changes
nothing here (an embedding runs in its table's dtype), so bf16-mixed training takes this path too.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from recsys.kernels.linear import eager_on_cpu


class _IndexAddLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.table_shape = table.shape
        return F.embedding(ids, table)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ids,) = ctx.saved_tensors
        rows, width = ctx.table_shape
        grad_table = grad.new_zeros(rows, width).index_add_(0, ids.reshape(-1), grad.reshape(-1, width))
        return None, grad_table


def lookup(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rows `ids` of a 2-D `table` ([*ids.shape, width]), as `torch.nn.functional.embedding(ids, table)`."""
    if table.requires_grad and torch.is_grad_enabled() and eager_on_cpu(table):
        return _IndexAddLookup.apply(ids, table)
    return F.embedding(ids, table)
