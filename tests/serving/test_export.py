"""Export and parity for every registered model, and the export's refusals."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from recsys.models import REGISTRY
from recsys.serving.export import AUC_ATOL, PARITY_ROWS, SCORE_ATOL, ExportError, export_run


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_model_exports_with_parity(name: str, exported) -> None:
    out = exported(name)
    assert sorted(p.name for p in out.iterdir()) == ["features", "metadata.json", "model.onnx"]
    assert (out / "features" / "schema.json").exists()
    # No pickle anywhere: JSON, Parquet and ONNX (protobuf) only.
    suffixes = {p.suffix for p in out.rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".parquet", ".onnx"}, suffixes

    meta = json.loads((out / "metadata.json").read_text())
    assert meta["model"] == name and meta["data_fingerprint"] and meta["code_version"]["git_commit"]
    assert meta["metrics"]["val"]["auc"] > 0
    parity = meta["parity"]
    assert parity["rows"] == PARITY_ROWS
    assert parity["max_abs_diff"] <= SCORE_ATOL
    assert abs(parity["auc_onnx"] - parity["auc_torch"]) <= AUC_ATOL

    graph = onnx.load(str(out / "model.onnx")).graph
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert list(shapes) == ["sparse", "dense", "seq"]
    assert all(isinstance(s[0], str) and all(isinstance(d, int) for d in s[1:]) for s in shapes.values())
    assert {n.op_type for n in graph.node} >= {"Sigmoid"}


class CrossRow(torch.nn.Module):
    """Scores that depend on the other rows of the batch (a batch mean): what a BatchNorm left in
    training mode does. Traced at one batch size it looks fine; the parity check must catch it."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, sparse, dense, seq):  # noqa: ANN001, ANN201
        p = self.inner(sparse, dense, seq)
        return torch.sigmoid(p - p.mean())


def test_export_refuses_a_wrong_graph_and_leaves_nothing(tiny_runs, tmp_path, monkeypatch) -> None:
    import recsys.serving.export as export

    run_dir = tiny_runs("lr")
    real_load = export.load_run

    def load_cross_row(path):  # noqa: ANN001, ANN202
        run = real_load(path)
        run.scorer = CrossRow(run.scorer).eval()
        return run

    monkeypatch.setattr(export, "load_run", load_cross_row)
    with pytest.raises(ExportError, match=r"lr: scores differ between ONNX Runtime and PyTorch"):
        export_run(run_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # the temporary folder went too


def test_export_refuses_to_replace_a_folder_that_is_not_an_export(tiny_runs, tmp_path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not an earlier export"):
        export_run(tiny_runs("lr"), tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_a_retrained_dnis_export_stores_fewer_weights_by_the_pruned_entries(exported, tiny_runs) -> None:
    """DNIS retrained on DeepFM stores only its kept embedding entries, so the weights inside its ONNX file
    are fewer than DeepFM's (same data, same settings) by 4 bytes per pruned entry, not a table of masked
    zeros. (The file as a whole also carries per-node metadata, a few dozen kilobytes more for the packed
    lookup's nodes, which the real tables' savings dwarf: docs/benchmarks/search.md.)"""
    from onnx import numpy_helper

    def stored(model: str) -> int:
        graph = onnx.load(str(exported(model) / "model.onnx")).graph
        return sum(numpy_helper.to_array(t).nbytes for t in graph.initializer)

    architecture = json.loads((tiny_runs("dnis") / "architecture.json").read_text())
    pruned = architecture["dense_entries"] - architecture["kept_entries"]
    assert pruned > 1000
    saved = stored("deepfm") - stored("dnis")
    # The packed layout adds a few small index buffers per block range (a few kilobytes).
    assert 4 * pruned - 8_000 <= saved <= 4 * pruned, (saved, 4 * pruned)
