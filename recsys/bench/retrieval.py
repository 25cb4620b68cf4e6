"""`recsys bench retrieval`: top-K retrieval over a large catalogue, exact against approximate faiss
indexes, side by side in one command; and `/v1/recommend` under load over the same catalogue.

    recsys bench retrieval [--items 1000000] [--dim 64] [--queries 2000] [--repeats 3] [--serve]

The catalogue is SYNTHETIC: item vectors drawn around `--clusters` centres (learned item embeddings are
clustered by taste and category; i.i.d. Gaussian vectors would be the hardest case for any graph or
cluster index, unlike real catalogues), queries drawn the same way. For each index kind it reports the
build time, queries per second one query at a time (what an endpoint does) and in batches, and recall@K
against exact search. Every index is measured `--repeats` times in turns (exact, hnsw, ivf, exact, ...),
medians with their spread. Goal (issue #14): an approximate index with recall@10 >= 0.95 at >= 10x the
exact index's single-query rate.

With `--serve`, it also writes a next-item export over the same catalogue (an untrained SASRec whose item
table is the catalogue: its scores mean nothing, its latency is the real one), starts `recsys serve` on
it and measures `POST /v1/recommend` with k=10 at the given concurrency levels (goal: p99 <= 10 ms at
concurrency 1 on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

GOAL_RECALL, GOAL_SPEEDUP, GOAL_P99_MS = 0.95, 10.0, 10.0


def synthetic_catalogue(items: int, dim: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(item vectors [items, dim], centre of each item's cluster [items]) in float32, in chunks."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (clusters, dim)).astype(np.float32)
    assignment = rng.integers(0, clusters, items)
    vectors = np.empty((items, dim), dtype=np.float32)
    for start in range(0, items, 100_000):  # chunks bound the temporary arrays
        stop = min(start + 100_000, items)
        vectors[start:stop] = centres[assignment[start:stop]] + rng.normal(0, 0.6, (stop - start, dim)).astype(np.float32)
    return vectors, assignment


def synthetic_queries(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    """User-like queries: the mean of a few items of one user's taste, plus noise."""
    rng = np.random.default_rng(seed + 1)
    picks = rng.integers(0, len(vectors), (n, 5))
    return (vectors[picks].mean(axis=1) + rng.normal(0, 0.3, (n, vectors.shape[1]))).astype(np.float32)


def measure(index: Any, queries: np.ndarray, k: int) -> dict[str, Any]:
    """Single-query rate (one search call per query, as an endpoint makes them) and batched rate."""
    start = time.perf_counter()
    found = [index.search(queries[i : i + 1], k)[1][0] for i in range(len(queries))]
    single = time.perf_counter() - start
    start = time.perf_counter()
    index.search(queries, k)
    batched = time.perf_counter() - start
    return {"single_qps": len(queries) / single, "batch_qps": len(queries) / batched, "ids": np.stack(found)}


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float((found[:, :, None] == exact[:, None, :]).any(axis=1).mean())


def run_indexes(args: argparse.Namespace, vectors: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    """Each index built once, then every search setting (HNSW's efSearch, IVF's nprobe) measured in turns
    with exact search, `--repeats` rounds."""
    from tqdm.auto import tqdm

    from recsys.serving.retrieval import build_index, set_search_threads

    set_search_threads(args.threads)
    builds, indexes = {}, {}
    for kind, settings in tqdm([("exact", {}), ("hnsw", {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction}),
                                ("ivf", {})], desc="building indexes", unit="index"):
        start = time.perf_counter()
        indexes[kind] = build_index(vectors, kind, **settings)
        builds[kind] = (time.perf_counter() - start, settings)
    variants: list[tuple[str, str, dict[str, Any], Any]] = [("exact", "exact", {}, lambda: None)]
    for ef in args.ef_search:
        variants.append((f"hnsw ef_search={ef}", "hnsw", {"ef_search": ef}, lambda ef=ef: setattr(indexes["hnsw"].hnsw, "efSearch", ef)))
    for nprobe in args.nprobe:
        variants.append((f"ivf nprobe={nprobe}", "ivf", {"nprobe": nprobe}, lambda n=nprobe: setattr(indexes["ivf"], "nprobe", n)))
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, *_ in variants}
    for _ in tqdm(range(args.repeats), desc="search rounds (in turns)", unit="round"):
        for label, kind, _, configure in variants:
            configure()
            runs[label].append(measure(indexes[kind], queries, args.k))
    exact_ids = runs["exact"][0]["ids"]
    rows = []
    for label, kind, search, _ in variants:
        single = [r["single_qps"] for r in runs[label]]
        build_seconds, build_settings = builds[kind]
        rows.append({"index": label, "kind": kind, "settings": {**build_settings, **search}, "build_seconds": build_seconds,
                     "single_qps": statistics.median(single), "single_qps_min": min(single), "single_qps_max": max(single),
                     "batch_qps": statistics.median(r["batch_qps"] for r in runs[label]),
                     f"recall@{args.k}": recall(runs[label][-1]["ids"], exact_ids)})
    exact_qps = rows[0]["single_qps"]
    for row in rows:
        row["speedup_vs_exact"] = row["single_qps"] / exact_qps
        row["meets_goal"] = row["kind"] != "exact" and row[f"recall@{args.k}"] >= GOAL_RECALL and row["speedup_vs_exact"] >= GOAL_SPEEDUP
    return {"indexes": rows}


def write_catalogue_export(vectors: np.ndarray, out: Path, kind: str, settings: dict[str, Any], max_len: int = 50) -> Path:
    """A next-item export over the catalogue: an untrained SASRec whose item table is `vectors`, its user
    tower in ONNX, the item matrix and a `kind` index; the features a request is encoded with."""
    import polars as pl
    import torch

    from recsys.batch import Batch
    from recsys.features import FeaturePipeline, FieldSpec, Schema
    from recsys.features.atomic import atomic_directory, write_json_atomic
    from recsys.models.sasrec import SASRec
    from recsys.serving.export import (EXPORT_FORMAT, FEATURES_DIR, METADATA_FILE, MODEL_FILE, USER_VECTOR_NAME,
                                       check_graph, export_onnx)
    from recsys.serving.retrieval import ITEMS_FILE, ItemIndex
    from recsys.serving.runs import UserTower

    n = len(vectors) + 2
    schema = Schema([FieldSpec("history", "sequence", max_len=max_len, vocab_size=n),
                     FieldSpec("target", "target", share_vocab_with="history", vocab_size=n)])
    model = SASRec(schema, embedding_dim=vectors.shape[1], max_len=max_len).eval()
    items = torch.zeros(n, vectors.shape[1])
    items[2:] = torch.from_numpy(vectors)
    with torch.no_grad():
        model.item_vectors().copy_(items)
    tokens = [f"item{i}" for i in range(len(vectors))]
    pipeline = FeaturePipeline(schema)
    pipeline.vocabs["history"] = pl.DataFrame({"token": tokens, "id": np.arange(2, n, dtype=np.int64),
                                               "count": np.ones(len(tokens), dtype=np.int64)})
    pipeline.fitted = True
    with atomic_directory(out) as tmp:
        example = Batch(torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, 0), torch.randint(2, n, (3, 1, max_len)))
        export_onnx(UserTower(model).eval(), example, tmp / MODEL_FILE, USER_VECTOR_NAME)
        check_graph(tmp / MODEL_FILE, schema, output_rank=2)
        pipeline.save(tmp / FEATURES_DIR)
        np.save(tmp / ITEMS_FILE, items.numpy(), allow_pickle=False)
        ItemIndex.from_item_vectors(items.numpy(), ["", "", *tokens], kind, **settings).save(tmp)
        write_json_atomic(tmp / METADATA_FILE, {
            "format": EXPORT_FORMAT, "model": "sasrec", "dataset": f"synthetic catalogue of {len(vectors):,} items",
            "synthetic_data": True, "version": f"catalogue-{len(vectors)}-{kind}", "kind": "next_item",
            "run_id": None, "metrics": {}, "parity": {}})
    return out


def serving_choice(args: argparse.Namespace, result_rows: list[dict[str, Any]]) -> tuple[str, str, dict[str, Any]]:
    """(label, kind, settings) of the index the endpoint is timed on: the fastest one at a time that met
    the recall and speed goal, of any kind; else HNSW at the widest efSearch measured."""
    best = max((r for r in result_rows if r["meets_goal"]), key=lambda r: r["single_qps"], default=None)
    if best is not None:
        return best["index"], best["kind"], dict(best["settings"])
    ef_search = max(args.ef_search)
    return (f"hnsw ef_search={ef_search}", "hnsw",
            {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction, "ef_search": ef_search})


def run_serving(args: argparse.Namespace, vectors: np.ndarray, work: Path, result_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Serve the catalogue behind the fastest approximate index (one at a time) that met the recall goal,
    else HNSW at the widest efSearch measured: the endpoint is timed on an index worth serving."""
    import asyncio

    from recsys.bench.serve import Server, run_cell

    label, kind, settings = serving_choice(args, result_rows)
    export = write_catalogue_export(vectors, work / "catalogue-export", kind, settings)
    rng = np.random.default_rng(args.seed + 2)
    bodies = [json.dumps({"instances": [{"history": [f"item{i}" for i in rng.integers(0, len(vectors), 20)]}],
                          "k": 10}).encode() for _ in range(64)]
    server = Server(export, "onnx", threads=1)
    cells = []
    try:
        server.wait_ready(timeout=600)
        asyncio.run(run_cell(server.port, bodies, 1, args.warmup, 30.0, path="/v1/recommend"))
        for repeat in range(args.repeats):
            for c in args.concurrency:
                cell = asyncio.run(run_cell(server.port, bodies, c, args.requests, args.seconds, path="/v1/recommend"))
                cells.append({"concurrency": c, "repeat": repeat, **cell})
                print(f"/v1/recommend k=10 concurrency={c} repeat {repeat + 1}: p50 {cell['p50_ms']:.2f} ms p99 "
                      f"{cell['p99_ms']:.2f} ms, {cell['requests_per_second']:.0f} req/s, errors {cell['errors']}", flush=True)
    finally:
        server.stop()
    summary = []
    for c in args.concurrency:
        reps = [r for r in cells if r["concurrency"] == c]
        summary.append({"concurrency": c, **{s: statistics.median(r[s] for r in reps) for s in ("p50_ms", "p99_ms", "requests_per_second")},
                        "p99_ms_by_repeat": [r["p99_ms"] for r in reps], "errors": sum(r["errors"] for r in reps)})
    return {"serving": summary, "serving_index": label}


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    k = s["k"]
    lines = [f"SYNTHETIC catalogue: {s['items']:,} items, d {s['dim']}, {s['clusters']:,} clusters; {s['queries']:,} queries; "
             f"{result['environment']['cpu_count']} cores. Single-query rate: one search call per query; median "
             f"(min–max) over {s['repeats']} rounds in turns.", "",
             f"| index | settings | build s | queries/s, one at a time | vs exact | queries/s, batched | recall@{k} vs exact | goal |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["indexes"]:
        settings = ", ".join(f"{a}={b}" for a, b in r["settings"].items()) or "—"
        goal = "—" if r["kind"] == "exact" else ("met" if r["meets_goal"] else "missed")
        lines.append(f"| {r['index']} | {settings} | {r['build_seconds']:.1f} | {r['single_qps']:,.0f} ({r['single_qps_min']:,.0f}–"
                     f"{r['single_qps_max']:,.0f}) | {r['speedup_vs_exact']:.1f}x | {r['batch_qps']:,.0f} | {r[f'recall@{k}']:.4f} | {goal} |")
    if "serving" in result:
        lines += ["", f"`POST /v1/recommend`, k = 10, history of 20 items, index {result['serving_index']}, ONNX Runtime user tower "
                  f"(median over {s['repeats']} repeats):", "", "| concurrency | p50 ms | p99 ms | p99 by repeat | req/s | errors | goal |",
                  "|---|---|---|---|---|---|---|"]
        for r in result["serving"]:
            goal = ("met" if r["p99_ms"] <= GOAL_P99_MS else "missed") if r["concurrency"] == 1 else "—"
            by_repeat = ", ".join(f"{v:.2f}" for v in r["p99_ms_by_repeat"])
            lines.append(f"| {r['concurrency']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {by_repeat} | {r['requests_per_second']:.0f} | "
                         f"{r['errors']} | {goal} |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    out = Path(args.out or f"outputs/bench/retrieval-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    vectors, _ = synthetic_catalogue(args.items, args.dim, args.clusters, args.seed)
    queries = synthetic_queries(vectors, args.queries, args.seed)
    result: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k not in ("fn",)}}
    result.update(run_indexes(args, vectors, queries))
    if args.serve:
        with tempfile.TemporaryDirectory(prefix="retrieval-bench-", dir=out) as work:
            result.update(run_serving(args, vectors, Path(work), result["indexes"]))
    result["environment"] = {"cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg(),
                             "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    (out / "retrieval.json").write_text(json.dumps(result, indent=2, default=str))
    table = markdown(result)
    (out / "retrieval.md").write_text(table)
    print(table)
    return result


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retrieval", help="exact vs approximate faiss top-K over a large synthetic catalogue; /v1/recommend under load")
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--clusters", type=int, default=2000)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=80)
    p.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128, 256], help="HNSW search breadths to measure")
    p.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128], help="IVF cells searched, to measure")
    p.add_argument("--threads", type=int, default=1, help="faiss threads per search (the endpoint uses 1 per request)")
    p.add_argument("--serve", action="store_true", help="also serve the catalogue and load-test /v1/recommend")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--out", default=None)
    p.set_defaults(fn=main)
