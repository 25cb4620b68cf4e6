"""Latency of one score request through `recsys serve`, for two checkouts side by side: what the endpoint's
reliability checks (issue #11) cost a normal request. Both servers serve the same export; the client sends
the same bodies to each in turns (A, B, A, B, ...), so a burst of load from elsewhere hits both sides.

    python scripts/request_timing.py --export EXPORT_DIR --code before=/tmp/base --code after=. \\
        [--candidates 1 100] [--rounds 10] [--requests 300]

Prints, per checkout and candidate count, the median over rounds of each round's p50 and p99 (ms), with the
rounds' range; a keep-alive connection per server, one request at a time, so this is the request path
(parse, checks, encode, ONNX Runtime, JSON), not throughput.

    python scripts/request_timing.py --export EXPORT_DIR --code before=/tmp/base --code after=. --steps

times the steps in process instead (json.loads of the body, RecordEncoder.encode, score_records: medians of
400 calls, in µs), each checkout in its own process, the checkouts in turns, --rounds times. Steady where the
end-to-end figures are at the mercy of a loaded machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reliability_probes import BOOT  # noqa: E402  (imports recsys from a given checkout)


def start(boot: Path, code: Path, export: Path, log: Path) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(boot), str(code.resolve()), "recsys.commands.cli", "serve", str(export),
                             "--port", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"server for {code} did not start: {log.read_text()[-2000:]}")


def bodies(export: Path, candidates: int) -> bytes:
    """A request of `candidates` instances drawn from the export's vocabularies; with more than one, the
    user's fields and history are sent once in "context" (as the load bench does)."""
    import polars as pl

    schema = json.loads((export / "features" / "schema.json").read_text())
    values = {}
    for f in schema["fields"]:
        if f["kind"] in ("label", "group"):
            continue
        if f["kind"] == "numeric":
            values[f["source"]] = [round(f["stats"]["min"] + (f["stats"]["max"] - f["stats"]["min"]) * i / 97, 2) for i in range(97)]
        else:
            vocab = export / "features" / "vocab" / f"{f.get('table') or f['name']}.parquet"
            tokens = pl.read_parquet(vocab)["token"].to_list()[:200] if vocab.exists() else [str(i) for i in range(200)]
            values[f["source"]] = ["^".join(tokens[i:i + 20]) for i in range(50)] if f["kind"] == "sequence" else tokens
    user = {k: v[3] for k, v in values.items() if k in ("user", "hist_item", "device", "context")}
    instances = [{k: v[(7 * i + 3) % len(v)] for k, v in values.items() if k not in user} for i in range(candidates)]
    payload = {"context": user, "instances": instances} if candidates > 1 else {"instances": [{**user, **instances[0]}]}
    return json.dumps(payload).encode()


def measure(port: int, body: bytes, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        conn.request("POST", "/v1/score", body=body, headers={"content-type": "application/json"})
        response = conn.getresponse()
        response.read()
        times.append((time.perf_counter() - start) * 1000)
        assert response.status == 200, response.status
    conn.close()
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


STEPS = r"""
import json, statistics, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from request_timing import bodies
from recsys.serving.backends import load_export
export = Path(sys.argv[2])
model = load_export(export)
out = {}
for c in json.loads(sys.argv[3]):
    body = bodies(export, c)
    payload = json.loads(body)
    records = [{**payload.get("context", {}), **i} for i in payload["instances"]]
    def timed(fn, n=400):
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e6)
        return statistics.median(times)
    for _ in range(50):
        model.score_records(records)
    out[c] = {"json_loads_us": timed(lambda: json.loads(body)), "encode_us": timed(lambda: model.encoder.encode(records)),
              "score_records_us": timed(lambda: model.score_records(records))}
print(json.dumps(out))
"""


def steps(boot: Path, codes: dict[str, str], export: Path, candidates: list[int], rounds: int) -> dict:
    results: dict[str, list[dict]] = {name: [] for name in codes}
    for _ in range(rounds):
        for name, path in codes.items():  # in turns
            proc = subprocess.run([sys.executable, str(boot), str(Path(path).resolve()), "--exec", STEPS,
                                   str(Path(__file__).resolve().parent), str(export), json.dumps(candidates)],
                                  capture_output=True, text=True, check=True)
            results[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{'code':<10} {'cands':>5} {'json.loads us':>16} {'encode us':>16} {'score_records us':>18}   (median of rounds; range)")
    for name in codes:
        for c in candidates:
            row = [[r[str(c)][k] for r in results[name]] for k in ("json_loads_us", "encode_us", "score_records_us")]
            cells = [f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})" for v in row]
            print(f"{name:<10} {c:>5} {cells[0]:>16} {cells[1]:>16} {cells[2]:>18}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, required=True)
    parser.add_argument("--code", action="append", required=True, help="NAME=CHECKOUT (twice or more)")
    parser.add_argument("--candidates", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=300, help="requests per round (after 30 warm-up ones)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--steps", action="store_true", help="time the request's steps in process instead")
    a = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="request-timing-"))
    boot = work / "boot.py"
    boot.write_text(BOOT)
    codes = dict(c.split("=", 1) for c in a.code)
    if a.steps:
        results = steps(boot, codes, a.export.resolve(), a.candidates, a.rounds)
        if a.json:
            a.json.write_text(json.dumps({"codes": codes, "steps": results}, indent=1))
        return
    servers = {name: start(boot, Path(path), a.export, work / f"{name}.log") for name, path in codes.items()}
    results: dict[str, dict[int, list[tuple[float, float]]]] = {name: {c: [] for c in a.candidates} for name in codes}
    try:
        payloads = {c: bodies(a.export, c) for c in a.candidates}
        for name, (_, port) in servers.items():
            for c in a.candidates:
                measure(port, payloads[c], 30)  # warm-up
        for _ in range(a.rounds):
            for c in a.candidates:
                for name, (_, port) in servers.items():  # in turns
                    times = measure(port, payloads[c], a.requests)
                    results[name][c].append((percentile(times, 0.5), percentile(times, 0.99)))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
    print(f"{'code':<10} {'cands':>5} {'p50 ms (median, range)':>28} {'p99 ms (median, range)':>28}")
    summary = {}
    for name in codes:
        for c in a.candidates:
            p50s, p99s = zip(*results[name][c])
            summary[f"{name}/{c}"] = {"p50": statistics.median(p50s), "p50_range": [min(p50s), max(p50s)],
                                      "p99": statistics.median(p99s), "p99_range": [min(p99s), max(p99s)]}
            print(f"{name:<10} {c:>5} {statistics.median(p50s):>10.3f} ({min(p50s):.3f}-{max(p50s):.3f}) "
                  f"{statistics.median(p99s):>10.3f} ({min(p99s):.3f}-{max(p99s):.3f})")
    if a.json:
        a.json.write_text(json.dumps({"codes": codes, "rounds": a.rounds, "requests": a.requests, "results": summary}, indent=1))


if __name__ == "__main__":
    main()
