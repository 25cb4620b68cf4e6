"""Time ONNX exports side by side on the same requests: model latency only (no HTTP), one ORT thread,
calls alternating between the exports so that both see the same machine state.

    python scripts/onnx_latency.py OLD_EXPORT NEW_EXPORT [--candidates 100] [--rounds 200]

Requests are built as `recsys bench serve` builds them (one user's history shared by the candidates), from
the first export's vocabularies; the exports must take the same inputs (e.g. one run exported by two code
versions). Prints p50 / p90 / p99 per export and the p50 ratio to the first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from recsys.serving.backends import load_export
from recsys.bench.serve import build_payloads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("exports", nargs="+", type=Path)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    models = [load_export(e) for e in args.exports]
    bodies = build_payloads(args.exports[0] / "features", args.candidates, 20)
    requests = [[{**p.get("context", {}), **x} for x in p["instances"]] for p in map(json.loads, bodies)]
    arrays = [models[0].encoder.encode(r) for r in requests]
    times: list[list[float]] = [[] for _ in models]
    for i in range(args.rounds + 10):
        batch = arrays[i % len(arrays)]
        for model, spent in zip(models, times):
            start = time.perf_counter()
            model.scorer(*batch)
            if i >= 10:  # warm-up rounds are not counted
                spent.append((time.perf_counter() - start) * 1e3)
    base = statistics.median(times[0])
    for export, spent in zip(args.exports, times):
        spent.sort()
        p50 = statistics.median(spent)
        print(f"{export}: p50 {p50:.2f} ms, p90 {spent[int(0.9 * len(spent))]:.2f}, p99 {spent[int(0.99 * len(spent))]:.2f}; "
              f"p50 {base / p50:.2f}x the first")


if __name__ == "__main__":
    main()
