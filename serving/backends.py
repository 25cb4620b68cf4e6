"""What the endpoint scores with: the feature encoder plus one of two backends, loaded as one object so
that a reload swaps both together.

- `load_export(EXPORT_DIR)`: ONNX Runtime on an export (`recsys export`). CPU provider; on a machine
  whose onnxruntime has the CUDA provider, CUDA with I/O binding (inputs bound from host memory, the
  output bound to host memory, so ORT does each copy once and without extra allocations).
- `load_torch_run(RUN_DIR)`: PyTorch eager on the run folder itself, for the load benchmark's
  side-by-side comparison and for checking the export.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys.batch import INPUT_NAMES
from recsys.features import FeaturePipeline, FieldSpec
from recsys.features.records import RecordEncoder
from recsys.serving.export import FEATURES_DIR, METADATA_FILE, MODEL_FILE
from recsys.serving.retrieval import ITEMS_FILE, ItemIndex, item_tokens, set_search_threads

Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
# Below this many rows per chunk, splitting a request costs more in calls than it saves.
MIN_CHUNK_ROWS = 16


@lru_cache(maxsize=None)
def _chunk_pool(size: int) -> ThreadPoolExecutor:
    """One pool per process (and size), shared by every loaded version, so a reload leaves no threads behind."""
    return ThreadPoolExecutor(size, thread_name_prefix="score-chunk")


class NonFiniteScores(RuntimeError):
    """The model returned NaN or an infinite score for finite, in-range inputs: a broken model, not bad input."""


@dataclass
class LoadedModel:
    """One loaded model version. A request takes a reference to it once and uses only that, so a reload
    (which builds a new LoadedModel and swaps the reference) never mixes two versions in one request."""

    name: str
    version: str
    backend: str
    metadata: dict[str, Any]
    encoder: RecordEncoder
    scorer: Scorer
    device: str = "cpu"
    source: str = ""
    workers: int = 1  # cores one request may use (`recsys serve --threads`)
    # A next-item model: `scorer` gives user vectors [B, D], and this index finds their top items.
    index: ItemIndex | None = None

    @property
    def kind(self) -> str:
        """"next_item" (POST /v1/recommend) or "score" (POST /v1/score)."""
        return "next_item" if self.index is not None else "score"

    def recommend_records(self, records: Sequence[Mapping[str, Any]], k: int, max_sequence_items: int | None = None
                          ) -> list[list[dict[str, Any]]]:
        """Each record's top `k` items as [{"item": raw token, "score": inner product}], its history's items
        excluded (an item the vocabulary does not know is out-of-vocabulary there, not an error)."""
        sparse, dense, seq = self.encoder.encode(records, max_sequence_items=max_sequence_items)
        vectors = self.score_arrays(sparse, dense, seq)
        if not np.isfinite(vectors).all():  # JSON has no NaN: a broken model, said plainly
            row = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
            raise NonFiniteScores(f"model {self.name} {self.version} gave a non-finite user vector for instance {row}")
        ids, scores = self.index.search(vectors, k, exclude=seq[:, 0])
        tokens = self.index.tokens
        return [[{"item": tokens[i], "score": float(v)} for i, v in zip(row_ids, row_scores) if i >= 2]
                for row_ids, row_scores in zip(ids.tolist(), scores.tolist())]

    def score_records(self, records: Sequence[Mapping[str, Any]], max_sequence_items: int | None = None) -> list[float]:
        sparse, dense, seq = self.encoder.encode(records, max_sequence_items=max_sequence_items)
        return self.score_arrays(sparse, dense, seq).tolist()

    def score_arrays(self, sparse: np.ndarray, dense: np.ndarray, seq: np.ndarray) -> np.ndarray:
        """Scores for encoded rows. A request of many rows is cut into up to `workers` chunks of at least
        MIN_CHUNK_ROWS, scored side by side, each on one thread: both cores work on one large request,
        and each chunk's activations stay in cache where the whole batch's would not (README, "Serving")."""
        n = len(sparse)
        chunks = min(self.workers, n // MIN_CHUNK_ROWS)
        if chunks < 2:
            return self.scorer(sparse, dense, seq)
        bounds = np.linspace(0, n, chunks + 1).astype(int)
        parts = [(sparse[a:b], dense[a:b], seq[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        pool = _chunk_pool(self.workers - 1)
        pending = [pool.submit(self.scorer, *part) for part in parts[1:]]
        first = self.scorer(*parts[0])  # the request's own thread takes one chunk
        return np.concatenate([first, *(f.result() for f in pending)])

    def describe(self) -> dict[str, Any]:
        """What `GET /v1/model` shows: the metadata and the raw fields a request must carry."""
        described = {
            "model": self.name,
            "version": self.version,
            "kind": self.kind,
            "route": "/v1/recommend" if self.index is not None else "/v1/score",
            "backend": self.backend,
            "device": self.device,
            "source": self.source,
            "input_fields": [describe_field(f) for f in self.encoder.input_fields],
            "metadata": self.metadata,
        }
        if self.index is not None:
            described["retrieval"] = {"index": self.index.kind, "device": self.index.device, "items": len(self.index.item_ids),
                                      "settings": self.index.settings or {}}
        return described


def describe_field(f: FieldSpec) -> dict[str, Any]:
    if f.kind == "sequence":
        kind = {"type": "sequence", "accepts": f"a list of tokens or a {f.sep!r}-delimited string", "max_len": f.max_len, "sep": f.sep}
    elif f.is_dense or f.buckets:
        kind = {"type": "numeric", "accepts": "a number or a numeric string; null takes the fitted fill"}
    else:
        kind = {"type": "categorical", "accepts": "a string or a number; unseen values are out-of-vocabulary"}
    return {"name": f.source, **kind}


def io_binding_scorer(session) -> Scorer:  # noqa: ANN001 - ort.InferenceSession
    """Scores through an I/O binding: inputs bound from host memory and the output bound to host memory,
    so ONNX Runtime copies each to and from the device once, into buffers it allocates itself, instead of
    staging them per run. Used with the CUDA provider; on a CPU session it runs the same code (the tests
    check it there, on machines without a GPU)."""

    def score(sparse: np.ndarray, dense: np.ndarray, seq: np.ndarray) -> np.ndarray:
        binding = session.io_binding()  # one per call: an IOBinding is not shared between threads
        for name, array in zip(INPUT_NAMES, (sparse, dense, seq)):
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        binding.bind_output(session.get_outputs()[0].name, "cpu")
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    return score


def _onnx_scorer(path: Path) -> tuple[Scorer, str]:
    """The CUDA provider with I/O binding where this onnxruntime has it and it starts (a GPU is present),
    else the CPU provider. The device reported is the provider the session really got: onnxruntime-gpu
    on a machine without a usable GPU falls back to the CPU, and says so in `/v1/model`."""
    import onnxruntime as ort

    from recsys.serving.export import onnx_session

    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    session = onnx_session(path, ("CUDAExecutionProvider", "CPUExecutionProvider") if cuda else ("CPUExecutionProvider",))
    if session.get_providers()[0] == "CUDAExecutionProvider":
        return io_binding_scorer(session), "cuda"

    def score_cpu(sparse: np.ndarray, dense: np.ndarray, seq: np.ndarray) -> np.ndarray:
        return session.run(None, dict(zip(INPUT_NAMES, (sparse, dense, seq))))[0]

    return score_cpu, "cpu"


def load_export(export_dir: str | Path, threads: int = 1) -> LoadedModel:
    export_dir = Path(export_dir)
    meta_path = export_dir / METADATA_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{export_dir} is not an export (no {METADATA_FILE}); make one with `recsys export`")
    metadata = json.loads(meta_path.read_text())
    pipeline = FeaturePipeline.load(export_dir / FEATURES_DIR)
    encoder = RecordEncoder(pipeline)
    scorer, device = _onnx_scorer(export_dir / MODEL_FILE)
    index = _item_index(export_dir, pipeline) if metadata.get("kind") == "next_item" else None
    return LoadedModel(metadata["model"], metadata["version"], "onnx", metadata, encoder, scorer, device,
                       str(export_dir.resolve()), workers=threads if device == "cpu" else 1, index=index)


def _item_index(export_dir: Path, pipeline: FeaturePipeline) -> ItemIndex:
    """The export's retrieval index, on the GPU where faiss has one (exact and IVF indexes)."""
    items = np.load(export_dir / ITEMS_FILE, allow_pickle=False)
    set_search_threads(1)  # one search per worker thread, as ORT runs one thread per call
    vocab = pipeline.vocabs[pipeline.schema.target.vocab_key]
    return ItemIndex.load(export_dir, item_tokens(vocab["token"].to_list(), vocab["id"].to_list(), len(items))).to_gpu()


def load_torch_run(run_dir: str | Path, threads: int = 1) -> LoadedModel:
    from recsys.serving.runs import load_run

    run = load_run(run_dir)
    torch.set_num_threads(1)  # as ONNX Runtime: one thread per call, row chunks side by side (LoadedModel)
    module = run.scorer

    def score_torch(sparse: np.ndarray, dense: np.ndarray, seq: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(sparse), torch.from_numpy(dense), torch.from_numpy(seq)).numpy()

    m = run.metrics
    metadata = {"model": m.get("model"), "dataset": m.get("dataset"), "run_id": m.get("run_id"), "kind": m.get("task"),
                "metrics": {"val": m.get("val"), "test": m.get("test")}, "data_fingerprint": m.get("data_fingerprint")}
    index = None
    if run.next_item:  # the run's own item matrix behind an exact index (an export chooses its index kind)
        with torch.inference_mode():
            items = module.model.item_vectors().float().numpy()
        vocab = run.pipeline.vocabs[run.schema.target.vocab_key]
        index = ItemIndex.from_item_vectors(items, item_tokens(vocab["token"].to_list(), vocab["id"].to_list(), len(items)))
    return LoadedModel(str(m.get("model")), f"{m.get('run_id')}.torch", "torch", metadata,
                       RecordEncoder(run.pipeline), score_torch, "cpu", str(Path(run_dir).resolve()), workers=threads, index=index)
