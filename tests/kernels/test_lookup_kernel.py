"""The index_add lookup against its twin, F.embedding: the same rows forward, the same summed gradient
(repeated ids included) backward, one result on every run, and the twin in traces and exports."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from recsys.kernels.lookup import lookup


@pytest.mark.parametrize(("shape", "rows", "width"), [((4096, 10), 50, 10), ((64, 3, 20), 7, 1), ((5,), 1000, 16)])
def test_lookup_matches_f_embedding_forward_and_backward(shape: tuple[int, ...], rows: int, width: int) -> None:
    # Few rows for many ids (50 rows for 40,960 ids; 7 for 3,840): every row sums hundreds of gradient rows.
    torch.manual_seed(0)
    table = torch.randn(rows, width, requires_grad=True)
    ids = torch.randint(0, rows, shape)
    grad = torch.randn(*shape, width)
    out = lookup(ids, table)
    assert "IndexAdd" in type(out.grad_fn).__name__  # the index_add path ran
    (got,) = torch.autograd.grad(out, table, grad)
    ref_out = F.embedding(ids, table)
    (want,) = torch.autograd.grad(ref_out, table, grad)
    assert torch.equal(out, ref_out)
    # Sums of up to ~800 float32 terms in another order: agreement to rounding, far below one missed row (~1).
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    (again,) = torch.autograd.grad(lookup(ids, table), table, grad)
    assert torch.equal(got, again)  # the same sum on every run


def test_the_twin_runs_without_gradient_and_in_exports() -> None:
    table = torch.randn(9, 4, requires_grad=True)
    ids = torch.tensor([[1, 8], [0, 1]])
    with torch.no_grad():
        assert lookup(ids, table).grad_fn is None
    assert lookup(ids, table.detach()).grad_fn is None

    class Rows(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = torch.nn.Parameter(table.detach().clone())

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return lookup(ids, self.table)

    program = torch.export.export(Rows(), (ids,))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert any("embedding" in t for t in targets), targets
    assert torch.equal(program.module()(ids), F.embedding(ids, table))
