"""`recsys bench serve`: load benchmark of the scoring endpoint, ONNX Runtime against PyTorch eager.

For every `--run NAME=RUN_DIR` it exports the run (with the parity check), starts two `recsys serve`
processes on loopback (ONNX on the export, torch on the run folder), and measures both cell by cell,
alternating, so the two see the same machine state: concurrency levels x candidates per request.
Each cell is bounded by a number of requests and by seconds, whichever ends first, and measured
`--repeats` times, minutes apart; the report gives each statistic's median over the repeats, so one burst
of load from another job on a shared machine does not decide a goal.

The client is asyncio on raw keep-alive HTTP/1.1 connections: a heavier client (threads, a full HTTP
library) would take more of the two cores the server also needs, and inflate the latencies it reports.
Latency is measured from the first byte sent to the last byte received.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

GOALS = {"p99_ms_1_candidate": 5.0, "p99_ms_100_candidates": 10.0}
MARK_START, MARK_END = "<!-- serving-bench:start -->", "<!-- serving-bench:end -->"


def build_payloads(features_dir: Path, candidates: int, count: int, seed: int = 0) -> list[bytes]:
    """`count` request bodies of `candidates` instances each, from raw values the vocabularies know
    (and a few they do not), so that every request exercises the real lookup path."""
    from recsys.features import FeaturePipeline
    from recsys.features.records import RecordEncoder

    pipeline = FeaturePipeline.load(features_dir)
    fields = RecordEncoder(pipeline).input_fields
    rng = random.Random(seed)
    tokens = {t: vocab["token"].head(5000).to_list() for t, vocab in pipeline.vocabs.items()}

    def token(f) -> str:  # noqa: ANN001
        known = tokens.get(f.vocab_key)
        return rng.choice(known) if known and rng.random() > 0.02 else f"unseen-{rng.randrange(10**6)}"

    def value(f) -> Any:  # noqa: ANN001
        if f.kind == "sequence":
            return [token(f) for _ in range(f.max_len)]
        if f.kind == "numeric":
            return round(f.stats.get("mean", 0.0) * rng.uniform(0.5, 1.5), 3)
        return token(f)

    bodies = []
    for _ in range(count):
        # One user with many candidates: the user's history (the sequence fields) goes once, in
        # "context", as a client scoring a candidate list would send it (README, "Serving").
        context = {f.source: value(f) for f in fields if f.kind == "sequence"}
        instances = [{f.source: value(f) for f in fields if f.kind != "sequence"} for _ in range(candidates)]
        bodies.append(json.dumps({"instances": instances, **({"context": context} if context else {})}).encode())
    return bodies


def _request(port: int, body: bytes, path: str = "/v1/score") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = next(int(v) for k, _, v in (line.partition(":") for line in lines[1:]) if k.lower() == "content-length")
    await reader.readexactly(length)
    return status


async def run_cell(port: int, bodies: list[bytes], concurrency: int, max_requests: int, max_seconds: float,
                   path: str = "/v1/score") -> dict[str, Any]:
    """`concurrency` connections sending back to back to `path` until `max_requests` are done or
    `max_seconds` pass."""
    latencies: list[float] = []
    errors = {"status": 0, "connection": 0}
    issued = 0
    deadline = time.perf_counter() + max_seconds
    payloads = [_request(port, b, path) for b in bodies]

    async def worker(index: int) -> None:
        nonlocal issued
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while issued < max_requests and time.perf_counter() < deadline:
                payload = payloads[(issued + index) % len(payloads)]
                issued += 1
                start = time.perf_counter()
                try:
                    writer.write(payload)
                    status = await _read_response(reader)
                except (ConnectionError, asyncio.IncompleteReadError):
                    errors["connection"] += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    errors["status"] += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1e3
    done = len(latencies)
    return {
        "requests": done, "errors": errors["status"] + errors["connection"], "error_detail": errors,
        "seconds": elapsed, "requests_per_second": done / elapsed if elapsed else 0.0,
        "p50_ms": float(np.percentile(ms, 50)) if done else None, "p95_ms": float(np.percentile(ms, 95)) if done else None,
        "p99_ms": float(np.percentile(ms, 99)) if done else None, "max_ms": float(ms.max()) if done else None,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `recsys serve` process on loopback, stopped on exit."""

    def __init__(self, source: Path, backend: str, threads: int):
        self.port = _free_port()
        self.backend = backend
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recsys.commands.cli", "serve", str(source), "--backend", backend, "--host", "127.0.0.1",
             "--port", str(self.port), "--threads", str(threads), "--max-instances", "1000"],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "RECSYS_SERVE_TOKEN": ""},
        )

    def wait_ready(self, timeout: float = 120) -> None:
        import http.client

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{self.backend} server exited: {self.log.read().decode()[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.backend} server did not become ready in {timeout}s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def bench(runs: dict[str, Path], concurrency: list[int], candidates: list[int], max_requests: int, max_seconds: float,
          warmup: int, threads: int, work: Path, repeats: int = 3) -> dict[str, Any]:
    """Every cell `repeats` times. The repeat loop is outside the cell loops, so the repeats of one cell
    are minutes apart, and a burst of load from another job on the machine spoils one repeat of a few
    cells, not every repeat of one cell."""
    from recsys.serving.export import export_run

    rows = []
    for name, run_dir in runs.items():
        export_dir = work / name
        meta = export_run(run_dir, export_dir)
        servers = {"onnx": Server(export_dir, "onnx", threads), "torch": Server(run_dir, "torch", threads)}
        try:
            for server in servers.values():
                server.wait_ready()
            payloads = {n: build_payloads(export_dir / "features", n, 64, seed=n) for n in candidates}  # the same in every repeat
            for repeat in range(repeats):
                for n, bodies in payloads.items():
                    for server in servers.values():  # warm both before measuring either
                        asyncio.run(run_cell(server.port, bodies, 1, warmup, max_seconds))
                    for c in concurrency:
                        for backend, server in servers.items():
                            cell = asyncio.run(run_cell(server.port, bodies, c, max_requests, max_seconds))
                            rows.append({"run": name, "model": meta["model"], "dataset": meta["dataset"], "backend": backend,
                                         "candidates": n, "concurrency": c, "repeat": repeat, **cell})
                            print(f"{name:>10} {backend:>5} candidates={n:<4} concurrency={c:<3} repeat {repeat + 1}/{repeats}  "
                                  f"p50 {cell['p50_ms']:.2f} ms  p99 {cell['p99_ms']:.2f} ms  "
                                  f"{cell['requests_per_second']:.0f} req/s  errors {cell['errors']}", flush=True)
        finally:
            for server in servers.values():
                server.stop()
    cells = summarise(rows)
    return {"cells": cells, "rows": rows, "goals": check_goals(cells), "settings": {
        "concurrency": concurrency, "candidates": candidates, "max_requests_per_cell": max_requests,
        "max_seconds_per_cell": max_seconds, "warmup_requests": warmup, "threads_per_request": threads,
        "repeats": repeats, "runs": {k: str(v) for k, v in runs.items()},
    }, "environment": _environment()}


STATS = ("p50_ms", "p95_ms", "p99_ms", "requests_per_second")


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell: each statistic's median over the cell's repeats, the p99 of every repeat, and
    the errors of all repeats together."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["run"], r["candidates"], r["concurrency"], r["backend"]), []).append(r)
    cells = []
    for reps in groups.values():
        first = reps[0]
        cell = {k: first[k] for k in ("run", "model", "dataset", "backend", "candidates", "concurrency")}
        for stat in STATS:
            values = [r[stat] for r in reps if r[stat] is not None]
            cell[stat] = float(np.median(values)) if values else None
        cell["p99_ms_by_repeat"] = [r["p99_ms"] for r in reps]
        cell["requests"] = sum(r["requests"] for r in reps)
        cell["errors"] = sum(r["errors"] for r in reps)
        cells.append(cell)
    return cells


def _environment() -> dict[str, Any]:
    import onnxruntime
    import torch

    return {"cpu_count": os.cpu_count(), "machine": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def check_goals(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's goals, checked on the ONNX cells: p99 at concurrency 1 (the median over repeats of
    each repeat's p99; the check also says in how many repeats it held on its own), and zero errors at
    concurrency 32 in every repeat."""
    checks = []
    for r in cells:
        if r["backend"] != "onnx":
            continue
        if r["concurrency"] == 1 and r["candidates"] in (1, 100):
            limit = GOALS["p99_ms_1_candidate"] if r["candidates"] == 1 else GOALS["p99_ms_100_candidates"]
            by_repeat = [v for v in r["p99_ms_by_repeat"] if v is not None]
            checks.append({"run": r["run"], "goal": f"p99 <= {limit} ms, {r['candidates']} candidate(s), concurrency 1",
                           "value": r["p99_ms"], "met": r["p99_ms"] is not None and r["p99_ms"] <= limit,
                           "repeats_met": sum(v <= limit for v in by_repeat), "repeats": len(r["p99_ms_by_repeat"])})
        if r["concurrency"] == 32:
            checks.append({"run": r["run"], "goal": f"zero errors, {r['candidates']} candidate(s), concurrency 32",
                           "value": r["errors"], "met": r["errors"] == 0 and r["requests"] > 0})
    return checks


def markdown(result: dict[str, Any]) -> str:
    cells = result["cells"]
    repeats = result["settings"].get("repeats", 1)
    by_key = {(r["run"], r["candidates"], r["concurrency"], r["backend"]): r for r in cells}
    lines = [
        f"Each statistic is the median over {repeats} repeat(s) of the cell; errors are summed over them.",
        "",
        "| run (model, data) | candidates | concurrency | ONNX p50 / p95 / p99 ms | ONNX p99 by repeat | ONNX req/s | torch p50 / p95 / p99 ms | torch req/s | p99 torch/ONNX | req/s ONNX/torch | errors ONNX, torch |",
        "|---|---:|---:|---|---|---:|---|---:|---:|---:|---|",
    ]
    seen = []
    for r in cells:
        key = (r["run"], r["candidates"], r["concurrency"])
        if key in seen:
            continue
        seen.append(key)
        o, t = by_key.get((*key, "onnx")), by_key.get((*key, "torch"))
        if not o or not t:
            continue
        by_repeat = ", ".join(f"{v:.2f}" for v in o["p99_ms_by_repeat"] if v is not None)
        lines.append(
            f"| {r['run']} ({r['model']}, {r['dataset']}) | {r['candidates']} | {r['concurrency']} "
            f"| {o['p50_ms']:.2f} / {o['p95_ms']:.2f} / {o['p99_ms']:.2f} | {by_repeat} | {o['requests_per_second']:.0f} "
            f"| {t['p50_ms']:.2f} / {t['p95_ms']:.2f} / {t['p99_ms']:.2f} | {t['requests_per_second']:.0f} "
            f"| {t['p99_ms'] / o['p99_ms']:.2f}x | {o['requests_per_second'] / t['requests_per_second']:.2f}x | {o['errors']}, {t['errors']} |"
        )
    lines += ["", "Goals (ONNX):", ""]
    for g in result["goals"]:
        if g["value"] is None:
            got = "no requests"
        elif "errors" in g["goal"]:
            got = f"{g['value']} errors"
        else:
            got = f"{g['value']:.2f} ms; held in {g['repeats_met']} of {g['repeats']} repeats on its own"
        lines.append(f"- {'met' if g['met'] else 'MISSED'}: {g['run']}: {g['goal']} (got {got})")
    return "\n".join(lines) + "\n"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("serve", help="the scoring endpoint under load, ONNX Runtime against PyTorch eager",
                            description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, metavar="NAME=RUN_DIR",
                        help="a trained run folder to serve (repeat for several models)")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--candidates", default="1,100")
    parser.add_argument("--requests", type=int, default=2000, help="at most this many requests per cell")
    parser.add_argument("--seconds", type=float, default=10.0, help="at most this long per cell")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3,
                        help="measure every cell this many times, minutes apart; the report takes the median")
    parser.add_argument("--threads", type=int, default=1, help="each server's --threads: cores one request may use")
    parser.add_argument("--out", default="docs", help="folder for serving-bench.json and serving-bench.md")
    parser.add_argument("--benchmarks", default=None, help=f"also replace the {MARK_START} section of this Markdown file")
    parser.set_defaults(fn=main, parser=parser)


def main(args: argparse.Namespace) -> None:
    parser = args.parser
    runs = {}
    for spec in args.run:
        name, sep, path = spec.partition("=")
        if not sep or not Path(path, "metrics.json").exists():
            parser.error(f"--run {spec!r}: expected NAME=RUN_DIR with RUN_DIR/metrics.json")
        runs[name] = Path(path)
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as work:
        result = bench(runs, [int(c) for c in args.concurrency.split(",")], [int(c) for c in args.candidates.split(",")],
                       args.requests, args.seconds, args.warmup, args.threads, Path(work), args.repeats)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serving-bench.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (out / "serving-bench.md").write_text(table)
    if args.benchmarks:
        path = Path(args.benchmarks)
        text = path.read_text()
        if MARK_START in text and MARK_END in text:
            head, rest = text.split(MARK_START, 1)
            text = head + MARK_START + "\n" + table + MARK_END + rest.split(MARK_END, 1)[1]
            path.write_text(text)
    print(table)
