"""Top-K retrieval for next-item exports: the item vectors behind a faiss index.

`recsys export` of a next-item run writes the user tower (history -> user vector) as ONNX and, beside
it, the item matrix (`items.npy`, row = item id) and a faiss index over the items that can be recommended
(ids >= 2; 0 is padding and 1 out-of-vocabulary). Scores are inner products, the models' own scores.

- `exact`: IndexFlatIP, every item scored; the same top K as `torch.topk` over the same scores (ties
  aside, which the export's parity check measures).
- `hnsw`: a graph index (IndexHNSWFlat, inner product), approximate; its recall@K against exact search is
  measured and recorded by the export and by `recsys bench retrieval`.
- `ivf`: inverted lists over k-means cells (IndexIVFFlat, inner product), approximate, `nprobe` cells
  searched.

On a machine whose faiss has GPUs (the `gpu` extra, faiss-gpu) an exact index is searched on the GPU, the
way the ONNX endpoint picks its provider; the device it really got is reported. The index file is faiss's
own binary format, not a pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys.metrics import FIRST_ITEM_ID

INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.npy"
INDEX_META_FILE = "index.json"
INDEX_KINDS = ("exact", "hnsw", "ivf")


def _faiss():  # noqa: ANN202 - the faiss module, imported on use (an optional, heavy dependency)
    import logging

    # faiss announces at INFO which of its builds it loaded (and that the AVX2 one is missing): noise.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        import faiss
    except ImportError as err:
        raise ImportError("retrieval needs faiss: pip install -e '.[cpu]' (faiss-cpu) or '.[gpu]' (faiss-gpu)") from err
    return faiss


def build_index(vectors: np.ndarray, kind: str = "exact", *, hnsw_m: int = 32, ef_construction: int = 80,
                ef_search: int = 128, ivf_cells: int | None = None, nprobe: int = 16, seed: int = 0) -> Any:
    """A faiss inner-product index over `vectors` [n, d] (float32); position i in the index is vector i."""
    faiss = _faiss()
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    if kind == "exact":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    else:
        cells = ivf_cells or max(1, int(4 * np.sqrt(n)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, cells, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(vectors[np.random.default_rng(seed).permutation(n)[: max(cells * 40, 10_000)]])
        index.nprobe = nprobe
    index.add(vectors)
    return index


def set_search_threads(threads: int) -> None:
    """faiss's OpenMP threads per search. The endpoint searches one request per worker thread, so 1, as
    ONNX Runtime runs one intra-op thread per call there (`serving.export.onnx_session`)."""
    _faiss().omp_set_num_threads(threads)


def gpu_available() -> bool:
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@dataclass
class ItemIndex:
    """Item vectors behind a faiss index, and the raw token of each item id.

    index: faiss index over `item_ids` (position i -> item id item_ids[i]).
    tokens: raw item token per item id (what a client sent in its histories, and gets back)."""

    index: Any
    item_ids: np.ndarray  # int64 [n]
    tokens: list[str]
    kind: str
    device: str = "cpu"
    settings: dict[str, Any] | None = None

    @classmethod
    def from_item_vectors(cls, vectors: np.ndarray, tokens: list[str], kind: str = "exact", **settings: Any) -> ItemIndex:
        """Index the items that can be recommended: rows >= 2 of the item matrix `vectors` (row = id)."""
        ids = np.arange(FIRST_ITEM_ID, len(vectors), dtype=np.int64)
        return cls(build_index(vectors[FIRST_ITEM_ID:], kind, **settings), ids, tokens, kind, "cpu", settings)

    def search(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Item ids [B, k] and scores [B, k], best first, leaving out each row's `exclude` ids [B, M] (0 is
        padding). A row with fewer than k items left after exclusion is padded with id 0 and score -inf."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        b = len(queries)
        excluded = 0 if exclude is None else int((exclude >= FIRST_ITEM_ID).sum(axis=1).max(initial=0))
        want = min(k + excluded, len(self.item_ids))
        while True:
            scores, positions = self.index.search(queries, want)
            ids = np.where(positions >= 0, self.item_ids[np.clip(positions, 0, None)], 0)
            keep = positions >= 0
            if exclude is not None and excluded:
                keep &= ~(ids[:, :, None] == exclude[:, None, :]).any(axis=2)
            enough = keep.sum(axis=1) >= min(k, len(self.item_ids) - excluded)
            if enough.all() or want >= len(self.item_ids):
                break
            want = min(2 * want, len(self.item_ids))  # an approximate index returned too few: look deeper
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept results first, in score order
        top_ids = np.take_along_axis(np.where(keep, ids, 0), order, axis=1)
        top_scores = np.take_along_axis(np.where(keep, scores, -np.inf), order, axis=1)
        if top_ids.shape[1] < k:
            pad = k - top_ids.shape[1]
            top_ids = np.pad(top_ids, ((0, 0), (0, pad)))
            top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return top_ids.reshape(b, k), top_scores.reshape(b, k)

    def to_gpu(self) -> ItemIndex:
        """The same index searched on GPU 0 where faiss has GPUs and the index kind runs there (exact, ivf);
        else itself. `device` says which it got."""
        faiss = _faiss()
        if self.kind == "hnsw" or not gpu_available():
            return self
        resources = faiss.StandardGpuResources()
        return ItemIndex(faiss.index_cpu_to_gpu(resources, 0, self.index), self.item_ids, self.tokens, self.kind, "cuda",
                         self.settings)

    def save(self, directory: Path) -> None:
        faiss = _faiss()
        faiss.write_index(self.index, str(directory / INDEX_FILE))
        (directory / INDEX_META_FILE).write_text(json.dumps({
            "kind": self.kind, "settings": self.settings or {}, "first_item_id": FIRST_ITEM_ID, "items": len(self.item_ids),
        }, indent=2))

    @classmethod
    def load(cls, directory: Path, tokens: list[str]) -> ItemIndex:
        faiss = _faiss()
        meta = json.loads((directory / INDEX_META_FILE).read_text())
        index = faiss.read_index(str(directory / INDEX_FILE))
        if meta["kind"] == "hnsw":
            index.hnsw.efSearch = int((meta.get("settings") or {}).get("ef_search", 128))
        elif meta["kind"] == "ivf":
            index.nprobe = int((meta.get("settings") or {}).get("nprobe", 16))
        ids = np.arange(meta["first_item_id"], meta["first_item_id"] + meta["items"], dtype=np.int64)
        return cls(index, ids, tokens, meta["kind"], "cpu", meta.get("settings"))


def item_tokens(vocab_tokens: list[str], vocab_ids: list[int], size: int) -> list[str]:
    """Raw token per item id 0..size-1 from a fitted vocabulary (token, id); ids 0 and 1 have none."""
    tokens = [""] * size
    for token, i in zip(vocab_tokens, vocab_ids):
        tokens[int(i)] = str(token)
    return tokens


def topk_agreement(found: np.ndarray, expected: np.ndarray) -> float:
    """Mean share of each row's expected top-K ids that `found` also returned (recall@K of `found`
    against `expected`; order is not compared)."""
    hits = (found[:, :, None] == expected[:, None, :]).any(axis=1)
    return float(hits.mean())
