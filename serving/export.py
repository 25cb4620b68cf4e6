"""`recsys export run_dir=DIR out=EXPORT_DIR`: one folder that is all serving needs.

    EXPORT_DIR/model.onnx      inputs sparse int64[B, F_sparse], dense float32[B, F_dense],
                               seq int64[B, F_seq, L] (all three always, empty groups included);
                               output score float32[B] (the sigmoid is inside); only B is dynamic.
                               A next-item run exports its user tower instead: output user_vector
                               float32[B, D], and beside it
    EXPORT_DIR/items.npy       the item matrix [items, D] (row = item id), and
    EXPORT_DIR/index.faiss     a faiss inner-product index over the recommendable items (+ index.json)
    EXPORT_DIR/features/       schema.json + vocab/<table>.parquet, the run's own feature artifacts
    EXPORT_DIR/metadata.json   model, dataset, metrics, data fingerprint, code version, inputs, parity

The export is written to a temporary folder and renamed into place only after the graph check and
the parity check pass, so a refused export leaves nothing behind (and an older export stays as it was).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
import warnings
from collections.abc import Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from omegaconf import OmegaConf

from recsys.batch import INPUT_NAMES, Batch
from recsys.data import frame_to_batch, prepare_dataset
from recsys.embedding import FeatureEmbedding
from recsys.features import FeaturePipeline, Schema
from recsys.features.atomic import atomic_directory, write_json_atomic
from recsys.metrics import auc
from recsys.runinfo import environment
from recsys.serving.runs import LoadedRun, load_run

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
FEATURES_DIR = "features"
EXPORT_FORMAT = 1
OUTPUT_NAME = "score"
USER_VECTOR_NAME = "user_vector"
# Next-item parity: user vectors (LayerNorm outputs, magnitude ~1) to 1e-4; the exact index's top K must
# be torch.topk's but for ties and float rounding.
VECTOR_ATOL = 1e-4
TOPK = 10
MIN_EXACT_TOPK_AGREEMENT = 0.99
# Rows the graph is traced with; parity then runs at other batch sizes, so a batch dimension baked
# into the graph (a reshape to the trace size) fails the check instead of reaching serving.
TRACE_ROWS = 3
PARITY_ROWS = 10_000
SCORE_ATOL = 1e-5


class ExportError(Exception):
    """The export was refused; the message says which model and why."""


def input_shapes(schema: Schema) -> dict[str, list[int | str]]:
    """The fixed part of each input's shape; "batch" marks the one dynamic dimension."""
    seq = schema.sequence
    seq_len = seq[0].max_len if seq else 0
    return {
        "sparse": ["batch", len(schema.sparse)],
        "dense": ["batch", len(schema.dense)],
        "seq": ["batch", len(seq), seq_len],
    }


INPUT_DTYPES = {"sparse": "int64", "dense": "float32", "seq": "int64"}


def export_onnx(scorer: torch.nn.Module, example: Batch, path: Path, output_name: str = OUTPUT_NAME) -> None:
    """Trace with torch.export (the `dynamo=True` exporter: the TorchScript one drops unused inputs,
    which would make the signature differ between models) and write one self-contained file."""
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            scorer, example.inputs(), str(path), dynamo=True, external_data=False, optimize=True,
            input_names=list(INPUT_NAMES), output_names=[output_name],
            dynamic_shapes=tuple({0: batch} for _ in INPUT_NAMES), verbose=False,
        )


def check_graph(path: Path, schema: Schema, output_rank: int = 1) -> None:
    """The graph's signature is the Batch contract: three named inputs, only dimension 0 symbolic; one
    output whose first dimension is the batch (a score [B], or a user vector [B, D] with `output_rank` 2)."""
    import onnx

    graph = onnx.load(str(path)).graph
    expected = input_shapes(schema)

    def dims(value: Any) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    names = [i.name for i in graph.input]
    if names != list(INPUT_NAMES):
        raise ExportError(f"graph inputs are {names}, expected {list(INPUT_NAMES)}")
    for value in graph.input:
        got, want = dims(value), expected[value.name]
        fixed_ok = len(got) == len(want) and got[1:] == want[1:]
        if not fixed_ok or not isinstance(got[0], str):
            raise ExportError(f"input {value.name!r} has shape {got}; expected {want} with only the batch dimension dynamic")
    outputs = [(o.name, dims(o)) for o in graph.output]
    if len(outputs) != 1 or len(outputs[0][1]) != output_rank or not isinstance(outputs[0][1][0], str):
        what = "one score of shape [batch]" if output_rank == 1 else "one user vector of shape [batch, D]"
        raise ExportError(f"graph outputs are {outputs}; expected {what}")


def onnx_session(path: Path, providers: Sequence[str] = ("CPUExecutionProvider",)):  # noqa: ANN201 - ort.InferenceSession
    """The one way this project opens an ONNX model: one intra-op thread, sequential execution, all graph
    optimisations. Parallelism is the caller's: the endpoint scores row chunks of a large request side by
    side (`serving.backends`), and concurrent requests run side by side; ORT's own thread pool on top
    would oversubscribe a small machine."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=list(providers))


def _run_onnx(session, batch: Batch) -> np.ndarray:  # noqa: ANN001
    feeds = {name: t.numpy() for name, t in zip(INPUT_NAMES, batch.inputs())}
    return session.run(None, feeds)[0]


def parity(scorer: torch.nn.Module, session, rows: Batch, atol: float = SCORE_ATOL) -> dict[str, Any]:  # noqa: ANN001
    """ONNX Runtime against PyTorch on `rows`: all rows in one call, in chunks of an odd size, and
    one row at a time for the first few. Raises ExportError when an output value differs by more than
    `atol` (SCORE_ATOL for scores; VECTOR_ATOL for next-item user vectors).

    The validation AUC of both is reported but decides nothing: with every score within SCORE_ATOL, the
    AUCs can differ only by positive/negative pairs scored within 2 * SCORE_ATOL of each other, a tie or a
    near-tie that float rounding breaks one way or the other (a tie broken the other way moves the AUC by
    half a pair, 0.5 / (n_pos * n_neg)). A fixed AUC tolerance refused sound models for that alone."""
    with torch.inference_mode():
        expected = scorer(*rows.inputs()).numpy()
    n = len(rows)
    chunk = 317
    runs = {
        f"batch {n}": _run_onnx(session, rows),
        f"chunks of {chunk}": np.concatenate([_run_onnx(session, rows.take(slice(i, i + chunk))) for i in range(0, n, chunk)]),
    }
    single = min(n, 32)
    singles = np.concatenate([_run_onnx(session, rows.take(slice(i, i + 1))) for i in range(single)])
    report: dict[str, Any] = {"rows": n, "trace_rows": TRACE_ROWS, "score_atol": atol}
    worst = 0.0
    for name, got in {**runs, f"batch 1 (first {single} rows)": singles}.items():
        want = expected[: len(got)]
        if got.shape != want.shape:
            raise ExportError(f"ONNX Runtime returned shape {got.shape} for {name}, PyTorch {want.shape}")
        diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if len(got) else 0.0
        if not np.isfinite(diff) or diff > atol:
            raise ExportError(f"scores differ between ONNX Runtime and PyTorch by {diff:.3g} at {name} (limit {atol})")
        worst = max(worst, diff)
    report["max_abs_diff"] = worst
    if rows.label is not None:
        auc_torch = auc(torch.from_numpy(expected), rows.label)
        auc_onnx = auc(torch.from_numpy(runs[f"batch {n}"]), rows.label)
        report.update(auc_torch=auc_torch, auc_onnx=auc_onnx)
    return report


def _same_features(a: Path, b: Path) -> bool:
    if Schema.load(a / FeaturePipeline.SCHEMA_FILE).to_dict() != Schema.load(b / FeaturePipeline.SCHEMA_FILE).to_dict():
        return False
    vocab_a = sorted(p.name for p in (a / FeaturePipeline.VOCAB_DIR).glob("*.parquet"))
    vocab_b = sorted(p.name for p in (b / FeaturePipeline.VOCAB_DIR).glob("*.parquet"))
    return vocab_a == vocab_b and all(
        pl.read_parquet(a / FeaturePipeline.VOCAB_DIR / n).equals(pl.read_parquet(b / FeaturePipeline.VOCAB_DIR / n)) for n in vocab_a
    )


def validation_rows(run: LoadedRun, rows: int, cache_dir: str | Path | None = None) -> tuple[Batch, str]:
    """The first `rows` validation rows of the run's own dataset, from the feature cache the run's config
    names (rebuilt from the raw files if it is gone), and the dataset fingerprint. The cache must hold
    exactly the run's feature artifacts, or the rows would not be what the model was trained to read."""
    data_cfg = OmegaConf.to_container(run.config.data, resolve=True)
    prepared = prepare_dataset(data_cfg, cache_dir or run.config.paths.cache_dir)
    if not _same_features(prepared.features_dir, run.features_dir):
        raise ExportError(
            f"the validation data in {prepared.directory} was fitted differently from the run's features "
            f"({run.features_dir}): the raw data or the field config changed since training"
        )
    frame = pl.read_parquet(prepared.split_path("valid"), n_rows=rows)
    return frame_to_batch(frame, run.schema), prepared.fingerprint


def write_item_index(run: LoadedRun, rows: Batch, directory: Path, kind: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Write the item matrix and a faiss index of kind `kind` into `directory`, and check retrieval parity:
    the index's top K for the validation users' vectors against torch.topk over the same scores. An exact
    index must agree but for ties (MIN_EXACT_TOPK_AGREEMENT); an approximate one records its recall@K."""
    from recsys.serving.retrieval import ITEMS_FILE, ItemIndex, item_tokens, topk_agreement

    model = run.scorer.model
    with torch.inference_mode():
        items = model.item_vectors().float().numpy()
        users = run.scorer(*rows.inputs()).float()
        expected = torch.topk(users @ torch.from_numpy(items[2:]).t(), TOPK, dim=1).indices.numpy() + 2
    np.save(directory / ITEMS_FILE, items, allow_pickle=False)
    vocab = run.pipeline.vocabs[run.schema.target.vocab_key]
    tokens = item_tokens(vocab["token"].to_list(), vocab["id"].to_list(), len(items))
    start = time.perf_counter()
    index = ItemIndex.from_item_vectors(items, tokens, kind, **settings)
    build_seconds = time.perf_counter() - start
    found, _ = index.search(users.numpy(), TOPK)
    agreement = topk_agreement(found, expected)
    exact = ItemIndex.from_item_vectors(items, tokens, "exact") if kind != "exact" else index
    recall = topk_agreement(found, exact.search(users.numpy(), TOPK)[0]) if kind != "exact" else agreement
    if kind == "exact" and agreement < MIN_EXACT_TOPK_AGREEMENT:
        raise ExportError(f"the exact index's top {TOPK} agrees with torch.topk on only {agreement:.4f} of the items "
                          f"(limit {MIN_EXACT_TOPK_AGREEMENT})")
    index.save(directory)
    return {"index": kind, "settings": settings, "items": len(items) - 2, "dim": items.shape[1], "k": TOPK,
            "users": len(rows), "topk_agreement_with_torch": agreement, f"recall@{TOPK}_vs_exact": recall,
            "build_seconds": build_seconds}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _package_version() -> str | None:
    try:
        return importlib_metadata.version("recsys-zoo")
    except importlib_metadata.PackageNotFoundError:
        return None


def export_run(run_dir: str | Path, out: str | Path, *, rows: int = PARITY_ROWS, cache_dir: str | Path | None = None,
               index: str = "exact", index_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export the run in `run_dir` to `out`. Returns the metadata; raises ExportError when refused.
    A next-item run also gets its item matrix and a retrieval index of kind `index` (exact, hnsw or
    ivf; `index_settings` are `serving.retrieval.build_index`'s)."""
    out = Path(out)
    if out.exists() and not (out / METADATA_FILE).exists():
        raise ExportError(f"{out} exists and is not an earlier export (no {METADATA_FILE}); refusing to replace it")
    run = load_run(run_dir)
    # The export's own copy of the model: counted cross indices go into the graph at their narrowest width.
    for module in run.scorer.modules():
        if isinstance(module, FeatureEmbedding):
            module.narrow_cross_indices()
    name = run.metrics.get("model")
    valid, fingerprint = validation_rows(run, rows, cache_dir)
    if run.metrics.get("data_fingerprint") not in (None, fingerprint):
        raise ExportError(f"the run was trained on data {run.metrics['data_fingerprint']}, but its config now gives "
                          f"{fingerprint}: the raw files' contents or the field config changed since training, so "
                          "the parity check would compare against other data; retrain the run on the current data")
    if len(valid) <= TRACE_ROWS:
        raise ExportError(f"only {len(valid)} validation rows; parity needs more than the {TRACE_ROWS} traced")
    output = USER_VECTOR_NAME if run.next_item else OUTPUT_NAME
    with atomic_directory(out) as tmp:
        start = time.perf_counter()
        try:
            export_onnx(run.scorer, valid.take(slice(0, TRACE_ROWS)), tmp / MODEL_FILE, output)
        except Exception as err:  # the exporter raises many types; each means "this graph cannot be exported"
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ExportError(f"{name}: torch.onnx.export failed: {type(err).__name__}: {first}") from err
        export_seconds = time.perf_counter() - start
        try:
            check_graph(tmp / MODEL_FILE, run.schema, output_rank=2 if run.next_item else 1)
            report = parity(run.scorer, onnx_session(tmp / MODEL_FILE), valid, VECTOR_ATOL if run.next_item else SCORE_ATOL)
            if run.next_item:
                report["retrieval"] = write_item_index(run, valid, tmp, index, index_settings or {})
        except ExportError as err:
            raise ExportError(f"{name}: {err}") from err
        shutil.copytree(run.features_dir, tmp / FEATURES_DIR)
        import onnx

        meta = {
            "format": EXPORT_FORMAT,
            "model": name,
            "dataset": run.metrics.get("dataset"),
            "synthetic_data": run.metrics.get("synthetic_data"),
            "run_id": run.metrics.get("run_id"),
            # The run plus the exact graph: two exports of one run that differ in their bytes differ here.
            "version": f"{run.metrics.get('run_id')}.{_sha256(tmp / MODEL_FILE)[:8]}",
            "metrics": {"val": run.metrics.get("val"), "test": run.metrics.get("test")},
            "data_fingerprint": fingerprint,
            "schema_fingerprint": run.schema.fingerprint(),
            "code_version": {
                "recsys_zoo": _package_version(),
                "git_commit": environment()["git_commit"],
                "trained_at_commit": (run.metrics.get("environment") or {}).get("git_commit"),
            },
            "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__, "exporter": "torch.onnx.export(dynamo=True)"},
            "inputs": [{"name": n, "dtype": INPUT_DTYPES[n], "shape": s} for n, s in input_shapes(run.schema).items()],
            "kind": "next_item" if run.next_item else "score",
            "output": ({"name": USER_VECTOR_NAME, "dtype": "float32", "shape": ["batch", int(report["retrieval"]["dim"])],
                        "meaning": "the user vector; an item's score is its inner product with the item's row of items.npy"}
                       if run.next_item else
                       {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch"], "meaning": "sigmoid(logit), the click probability"}),
            "parity": report,
            "export_seconds": export_seconds,
            "source_run": str(Path(run_dir).resolve()),
        }
        write_json_atomic(tmp / METADATA_FILE, meta)
    log.info("exported %s to %s: max |onnx - torch| = %.2g over %d rows", name, out, report["max_abs_diff"], report["rows"])
    return meta
