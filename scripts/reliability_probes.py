"""The probes of issue #11, run against any checkout of this repository: one line per numbered item saying
what the code did. docs/benchmarks/reliability.md holds the table of a run against the code before and
after the fixes.

    python scripts/reliability_probes.py                      # this checkout
    python scripts/reliability_probes.py --code /tmp/base     # another checkout (e.g. `git archive <commit>`)
    python scripts/reliability_probes.py --only 1,2,14 --json probes.json

Every command runs in a subprocess with `recsys` (and recsys.features/models/serving/conf) imported from
--code, so the same script probes an old and a new tree with the same virtual environment. Probe 11's
fresh-clone check needs --code to be a git checkout (`git clone`); it is skipped otherwise.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

# Imports `recsys` from ROOT (first argument) before the installed package, then runs a module as __main__
# or, with --exec, a piece of code.
BOOT = r'''
import os, runpy, sys
from importlib.util import spec_from_file_location
ROOT = sys.argv.pop(1)
MAPPED = {"recsys": "recsys", "recsys.features": "features", "recsys.models": "models", "recsys.conf": "conf", "recsys.serving": "serving"}
class AtCheckout:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name in MAPPED:
            folder = os.path.join(ROOT, MAPPED[name])
            return spec_from_file_location(name, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])
        return None
sys.meta_path.insert(0, AtCheckout)
if sys.argv[1] == "--exec":
    code = sys.argv[2]
    sys.argv = [sys.argv[0], *sys.argv[3:]]
    exec(compile(code, "<probe>", "exec"), {"__name__": "__main__"})
else:
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
'''


class Probes:
    def __init__(self, code: Path, work: Path):
        self.code, self.work = code.resolve(), work
        self.boot = work / "boot.py"
        self.boot.write_text(BOOT)
        self.results: list[dict[str, str]] = []

    # ------------------------------------------------------------------ helpers
    def python(self, *args: str, cwd: Path | None = None, timeout: float = 900, env: dict | None = None,
               code: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(self.boot), str(code or self.code), *args], cwd=cwd or self.work,
                              capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})

    def recsys(self, *args: str, **kw) -> subprocess.CompletedProcess:  # noqa: ANN003
        return self.python("recsys.commands.cli", *args, **kw)

    def record(self, item: str, probe: str, outcome: str) -> None:
        self.results.append({"item": item, "probe": probe, "outcome": outcome})
        print(f"{item:>4} | {probe} | {outcome}", flush=True)

    @staticmethod
    def tail(proc: subprocess.CompletedProcess) -> str:
        """How a command ended: exit status, the number of lines of its error report (stderr without the
        libraries' "file.py:LINE: message" warnings) and the line of it that says what went wrong (an
        exception's, or recsys's one line, else the report's first line)."""
        report = [line for line in proc.stderr.splitlines() if line.strip() and not re.match(r"^\S+\.py:\d+: ", line)]
        said = [line for line in report if re.match(r"^(recsys \w+: |[\w.]*(Error|Exception|Loss)\b)", line)]
        key = (said[-1] if said else (report[0] if report else "")).strip()
        return f"exit {proc.returncode}, error report {len(report)} lines: {key[:260]!r}"

    # ------------------------------------------------------------------ a trained run, an export, a server
    def tiny_run(self) -> tuple[Path, Path]:
        run, export = self.work / "run", self.work / "export"
        if not (run / "metrics.json").exists():
            proc = self.recsys("train", "model=lr", "data=synthetic", "data.synthetic.n_train=3000", "data.synthetic.n_valid=2000",
                               "data.synthetic.n_test=500", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                               "task.learning_rate=0.01", f"paths.output_dir={run}", f"paths.cache_dir={self.work / 'cache'}")
            assert proc.returncode == 0, proc.stderr[-2000:]
        if not export.exists():
            proc = self.recsys("export", f"run_dir={run}", f"out={export}", f"cache_dir={self.work / 'cache'}")
            assert proc.returncode == 0, proc.stderr[-2000:]
        return run, export

    def raw_rows(self, n: int) -> list[dict]:
        (path,) = (self.work / "cache").glob("raw/synthetic-*/valid.csv")
        header, *lines = path.read_text().splitlines()[: n + 1]
        rows = [dict(zip(header.split(","), line.split(","))) for line in lines]
        for r in rows:
            r.pop("label")
        return rows

    def start_server(self, export: Path) -> tuple[subprocess.Popen, str]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = (self.work / "server.log").open("a")  # a file, not a pipe nobody reads: a full pipe blocks the server
        proc = subprocess.Popen([sys.executable, str(self.boot), str(self.code), "recsys.commands.cli", "serve", str(export),
                                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, text=True)
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if self.http(address, "GET", "/readyz")[0] == 200:
                    return proc, address
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {(self.work / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)

    @staticmethod
    def http(address: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
             timeout: float = 60) -> tuple[int, str]:
        host, port = address.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            conn.request(method, path, body=body, headers={"content-type": "application/json", **(headers or {})})
            response = conn.getresponse()
            return response.status, response.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def score(self, address: str, body: bytes) -> str:
        status, text = self.http(address, "POST", "/v1/score", body)
        try:
            payload = json.loads(text)
        except json.JSONDecodeError:
            return f"{status} {text[:80]!r}"
        if "error" in payload:
            return f"{status} {payload['error']['code']}: {payload['error']['message'][:150]}"
        return f"{status} scores {payload['scores'][:2]}"

    # ------------------------------------------------------------------ the endpoint (items 1-7)
    def endpoint(self, only: set[str]) -> None:
        _, export = self.tiny_run()
        proc, address = self.start_server(export)
        row = self.raw_rows(2)[0]
        try:
            if "1" in only:
                deep = b"[" * 100_000 + b"]" * 100_000
                self.record("1", "body: 100,000 nested lists", self.score(address, deep))
                inner = json.dumps({"instances": [{**row, "price": "@"}]}).encode().replace(b'"@"', b"[" * 100_000 + b"]" * 100_000)
                self.record("1", "price: 100,000 nested lists", self.score(address, inner))
            if "2" in only:
                for literal in (b"Infinity", b"-Infinity", b"1e309", b'"inf"'):
                    body = json.dumps({"instances": [row, {**row, "price": "@"}]}).encode().replace(b'"@"', literal)
                    self.record("2", f"price = {literal.decode()} (2nd of 2 instances)", self.score(address, body))
                body = json.dumps({"instances": [{**row, "price": 1e308}, {**row, "price": 1e4}, row]}).encode()
                self.record("2", "price = 1e308, 1e4 (fitted max ~2000), 'as sent'", self.score(address, body))
            if "3" in only:
                big = json.dumps({"instances": [row] * 100_000}).encode()
                request = urllib.request.Request(f"http://{address}/v1/score", data=big, headers={"content-type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=60) as response:
                        outcome = f"{response.status}"
                except urllib.error.HTTPError as err:
                    outcome = f"{err.code} {json.loads(err.read())['error']['code']}"
                except (urllib.error.URLError, OSError) as err:
                    outcome = f"no answer: {type(err).__name__}: {getattr(err, 'reason', err)}"
                self.record("3", f"{len(big) / 1e6:.1f} MB body with urllib", outcome)
            if "4" in only:
                self.record("4", "headers of a POST, then nothing", self.idle(address, b"POST /v1/score HTTP/1.1\r\nHost: x\r\n"
                                                                         b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"))
                self.record("4", "half a header, then nothing", self.idle(address, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "))
                self.record("4", "500 idle connections + one client", self.many_idle(address, 500))
            if "5" in only:
                body = json.dumps({"instances": [row]}).encode("utf-16")
                self.record("5", "UTF-16 body with BOM", self.score(address, body))
            if "6" in only:
                self.http(address, "GET", "/nope")
                self.http(address, "GET", "/v1/score")
                metrics = self.http(address, "GET", "/metrics")[1]
                counted = [line for line in metrics.splitlines() if line.startswith("recsys_requests_total") and ('"404"' in line or '"405"' in line)]
                self.record("6", "GET /nope, GET /v1/score, then /metrics", "; ".join(counted) or "404/405 not counted")
            if "7" in only:
                self.record("7", "2,000 random bodies (seeded)", self.random_bodies(address, row, 2000))
            self.record("-", "server after the probes", f"healthz {self.http(address, 'GET', '/healthz')[0]}, process "
                        f"{'alive' if proc.poll() is None else 'dead'}")
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    @staticmethod
    def idle(address: str, sent: bytes, wait: float = 25) -> str:
        host, port = address.split(":")
        start = time.monotonic()
        with socket.create_connection((host, int(port))) as s:
            s.sendall(sent)
            s.settimeout(wait)
            try:
                data = s.recv(4096)
            except TimeoutError:
                return f"still open after {wait:.0f} s"
            except ConnectionResetError:
                return f"reset after {time.monotonic() - start:.1f} s"
        first = data.split(b"\r\n", 1)[0].decode(errors="replace") if data else "closed, no answer"
        return f"{first} after {time.monotonic() - start:.1f} s"

    def many_idle(self, address: str, n: int, wait: float = 25) -> str:
        host, port = address.split(":")
        sockets = []
        try:
            for _ in range(n):
                s = socket.create_connection((host, int(port)))
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                sockets.append(s)
            served = self.http(address, "GET", "/healthz")[0]
            time.sleep(wait)
            closed = 0
            for s in sockets:
                s.setblocking(False)
                try:
                    data = s.recv(4096)
                    closed += data == b"" or data.startswith(b"HTTP/1.1 408")
                except BlockingIOError:
                    pass
                except ConnectionResetError:
                    closed += 1
            return f"other client got {served}; after {wait:.0f} s {closed}/{n} idle connections closed by the server"
        finally:
            for s in sockets:
                s.close()

    def random_bodies(self, address: str, row: dict, n: int) -> str:
        rng = random.Random(11)
        odd = [None, True, 0, -1, 1e308, -1e308, 2**70, "", "inf", "NaN", "-Infinity", "1e999", "\u0000", "\ud800", "é" * 50,
               [], {}, [1, [2, [3]]], {"a": {"b": None}}]
        literals = ["Infinity", "-Infinity", "NaN", "1e999", "-1e999", "[[[[[[[[[[]]]]]]]]]]", "[" * 5000 + "]" * 5000,
                    "9" * 5000]
        statuses: dict[int, int] = {}
        for _ in range(n):
            instance = dict(row)
            for key in rng.sample(sorted(instance), rng.randint(1, 3)):
                choice = rng.random()
                if choice < 0.15:
                    instance.pop(key)
                else:
                    instance[key] = "@" if choice < 0.45 else rng.choice(odd)
            body = json.dumps({"instances": [row, instance], **({"context": rng.choice(odd)} if rng.random() < 0.1 else {})})
            while '"@"' in body:
                body = body.replace('"@"', rng.choice(literals), 1)
            raw = body.encode("utf-8", "surrogatepass")
            try:
                status: int | str = self.http(address, "POST", "/v1/score", raw, timeout=30)[0]
            except OSError as err:
                status = f"no answer ({type(err).__name__})"
            statuses[status] = statuses.get(status, 0) + 1
        five = sum(v for k, v in statuses.items() if not isinstance(k, int) or k >= 500)
        return f"{five} answered 5xx or not at all; statuses {dict(sorted(statuses.items(), key=str))}"

    # ------------------------------------------------------------------ training data and runs (items 8-12)
    def dataset(self, name: str, edits: dict[str, callable] | None = None, fields_extra: str = "") -> Path:  # type: ignore[valid-type]
        """A tiny CSV dataset (train 300 rows, valid and test 100) and a config folder naming it
        `data=<name>`; `edits[split](text) -> text` breaks a split."""
        root = self.work / "data" / name
        root.mkdir(parents=True, exist_ok=True)
        rng = random.Random(5)
        for split, n in (("train", 300), ("valid", 100), ("test", 100)):
            lines = ["label,user,item,price"] + [
                f"{rng.randint(0, 1)},u{rng.randint(0, 20)},i{rng.randint(0, 30)},{rng.uniform(1, 100):.2f}" for _ in range(n)]
            text = "\n".join(lines) + "\n"
            if edits and split in edits:
                text = edits[split](text)
            (root / f"{split}.csv").write_bytes(text if isinstance(text, bytes) else text.encode())
        conf = self.work / "conf" / name
        (conf / "data").mkdir(parents=True, exist_ok=True)
        (conf / "data" / f"{name}.yaml").write_text(
            f"name: {name}\nroot: {root}\nfiles: {{train: train.csv, valid: valid.csv, test: test.csv}}\nbatch_size: 64\n"
            "fields:\n  - {name: label, kind: label}\n  - {name: user, kind: categorical}\n  - {name: item, kind: categorical}\n"
            f"  - {{name: price, kind: numeric{fields_extra}}}\n")
        return conf

    def train_on(self, name: str, conf: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
        out = self.work / "runs" / name
        proc = self.recsys("train", f"--config-dir={conf}", f"data={name}", "model=lr", "trainer.max_epochs=2",
                           "trainer.enable_progress_bar=false", f"paths.output_dir={out}",
                           f"paths.cache_dir={self.work / ('cache-' + name)}", *extra)
        return proc, out

    def row_edit(self, row: int, column: int, value: str) -> callable:  # type: ignore[valid-type]
        def edit(text: str) -> str:
            lines = text.splitlines()
            cells = lines[row].split(",")
            cells[column] = value
            lines[row] = ",".join(cells)
            return "\n".join(lines) + "\n"
        return edit

    def data_items(self, only: set[str]) -> None:
        def outcome(name: str, conf: Path, *extra: str) -> str:
            proc, out = self.train_on(name, conf, *extra)
            metrics = (out / "metrics.json").exists()
            caches = list((self.work / f"cache-{name}").glob(f"{name}-*/DONE"))
            return f"{self.tail(proc)}; metrics.json {'written' if metrics else 'absent'}; complete cache {'left' if caches else 'none'}"

        if "8" in only:
            conf = self.dataset("inf_train", {"train": self.row_edit(40, 3, "inf")})
            self.record("8", "'inf' in train.csv price (row 40)", outcome("inf_train", conf))
            proc = self.recsys("train", "model=fm", "data=synthetic", "data.synthetic.n_train=2000", "data.synthetic.n_valid=500",
                               "data.synthetic.n_test=500", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                               "task.learning_rate=1e20", f"paths.output_dir={self.work / 'runs' / 'nan'}",
                               f"paths.cache_dir={self.work / 'cache'}")
            written = (self.work / "runs" / "nan" / "metrics.json").exists()
            self.record("8", "model=fm task.learning_rate=1e20 (the loss becomes NaN)",
                        f"{self.tail(proc)}; metrics.json {'written' if written else 'absent'}")
        if "9" in only:
            conf = self.dataset("na_valid", {"valid": self.row_edit(17, 3, "N/A!")})
            self.record("9", "'N/A!' in valid.csv price (row 17)", outcome("na_valid", conf))
            conf = self.dataset("na_train", {"train": self.row_edit(17, 3, "N/A!")})
            self.record("9", "'N/A!' in train.csv price (row 17)", outcome("na_train", conf))
        if "10" in only:
            def bad_utf8(text: str) -> bytes:
                lines = text.encode().split(b"\n")
                lines[9] = lines[9].replace(b",u", b",\xff\xfeu", 1)
                return b"\n".join(lines)
            conf = self.dataset("utf8_user", {"train": bad_utf8})
            self.record("10", "invalid UTF-8 in train.csv user (row 9)", outcome("utf8_user", conf))
            conf = self.dataset("ragged", {"valid": lambda t: t.replace("\n", ",extra\n", 13).replace(",extra\n", "\n", 12)})
            self.record("10", "ragged row in valid.csv (line 13)", outcome("ragged", conf))
            conf = self.dataset("empty_valid", {"valid": lambda t: ""})
            self.record("10", "0-byte valid.csv", outcome("empty_valid", conf))
            conf = self.dataset("header_valid", {"valid": lambda t: t.splitlines()[0] + "\n"})
            self.record("10", "header-only valid.csv", outcome("header_valid", conf))
        if "11" in only:
            self.record("11", "kill -9 while fitting features, then a second run", self.killed_fit())
            self.record("11", "kill -9 during recsys export, then a second export", self.killed_export())
            self.record("11", "fresh clone: recsys train paths.output_dir=runs/x", self.fresh_clone())
        if "12" in only:
            proc = self.recsys("train", "data=mydata", f"paths.output_dir={self.work / 'runs' / 'mydata'}")
            self.record("12", "recsys train data=mydata", self.tail(proc))
            tiny = ["data.synthetic.n_train=2000", "data.synthetic.n_valid=500", "data.synthetic.n_test=500",
                    "trainer.enable_progress_bar=false", f"paths.cache_dir={self.work / 'cache'}"]
            for bad in ("foo.bar=1", "+model.foo=1", "trainer.max_epochs=abc"):
                proc = self.recsys("train", bad, *tiny, f"paths.output_dir={self.work / 'runs' / 'bad'}")
                self.record("12", f"recsys train {bad}", self.tail(proc))
            conf = self.dataset("na_valid", {"valid": self.row_edit(17, 3, "N/A!")})
            proc, _ = self.train_on("na_valid", conf)
            self.record("12", "bad data (N/A! in valid)", self.tail(proc))
            proc = self.recsys("export", f"run_dir={self.work / 'nowhere'}", f"out={self.work / 'x'}")
            self.record("12", "recsys export of a folder that is no run", self.tail(proc))

    def killed_fit(self) -> str:
        cache = self.work / "cache-kill"
        args = ["train", "model=lr", "data=synthetic", "data.synthetic.n_train=300000", "data.synthetic.n_valid=1000",
                "data.synthetic.n_test=1000", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                f"paths.output_dir={self.work / 'runs' / 'kill'}", f"paths.cache_dir={cache}"]
        proc = subprocess.Popen([sys.executable, str(self.boot), str(self.code), "recsys.commands.cli", *args], cwd=self.work,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while not list(cache.glob(".synthetic_ctr-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        debris = sorted(p.name for p in cache.glob(".synthetic_ctr-*"))
        again = self.recsys(*args[:-2], "data.synthetic.n_train=3000", f"paths.output_dir={self.work / 'runs' / 'kill2'}",
                            f"paths.cache_dir={cache}")
        left = sorted(p.name for p in cache.glob(".synthetic_ctr-*"))
        return f"temp folders after the kill: {len(debris)}; after the next run (exit {again.returncode}): {len(left)} {left[:2]}"

    def killed_export(self) -> str:
        run, _ = self.tiny_run()
        parent = self.work / "exports"
        parent.mkdir(exist_ok=True)
        args = ["recsys.commands.cli", "export", f"run_dir={run}", f"out={parent / 'exp'}", f"cache_dir={self.work / 'cache'}"]
        proc = subprocess.Popen([sys.executable, str(self.boot), str(self.code), *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while not list(parent.glob(".exp[-.]*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        debris = len(list(parent.glob(".exp[-.]*")))
        again = self.python(*args)
        left = sorted(p.name for p in parent.glob(".exp[-.]*"))
        return f"temp folders after the kill: {debris}; after the next export (exit {again.returncode}): {len(left)} {left[:2]}"

    def fresh_clone(self) -> str:
        if not (self.code / ".git").exists():
            return "skipped: --code is not a git checkout"
        clone = self.work / "clone"
        shutil.rmtree(clone, ignore_errors=True)
        subprocess.run(["git", "clone", "-q", str(self.code), str(clone)], check=True)
        subprocess.run(["git", "-C", str(clone), "checkout", "-q", subprocess.run(
            ["git", "-C", str(self.code), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()], check=True)
        proc = self.python("recsys.commands.cli", "train", "model=lr", "data=synthetic", "data.synthetic.n_train=2000",
                           "data.synthetic.n_valid=500", "data.synthetic.n_test=500", "trainer.max_epochs=1",
                           "trainer.enable_progress_bar=false", "paths.output_dir=runs/x", cwd=clone, code=clone)
        if proc.returncode != 0:
            return f"train failed: {self.tail(proc)}"
        commit = json.loads((clone / "runs" / "x" / "metrics.json").read_text())["environment"]["git_commit"]
        status = subprocess.run(["git", "-C", str(clone), "status", "--porcelain"], capture_output=True, text=True).stdout.split()
        return f"git_commit recorded {commit[:10]}...{commit[40:] or '(clean)'}; git status shows {status[1::2][:4] or 'nothing'}"

    # ------------------------------------------------------------------ reports and export (items 13, 14)
    def report_and_export(self, only: set[str]) -> None:
        if "13" in only:
            code = r'''
import json, sys
from pathlib import Path
from recsys.commands.report import collect
root = Path(sys.argv[1])
for name, val in (("good", 0.7), ("nan", float("nan")), ("text", "0.99")):
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "metrics.json").write_text(json.dumps({"run_id": name, "model": name, "dataset": "d", "val": {"auc": val},
        "test": {"auc": 0.5}, "best_epoch": 1, "epochs": 2, "train_seconds": 1.0, "train_samples_per_second": 1.0,
        "num_parameters": 10, "config": {}}))
found = collect(root)
print("ranked:", [r["model"] for r in found.runs], "| warnings:", len(found.warnings), found.warnings[-1][-80:] if found.warnings else "")
'''
            proc = self.python("--exec", code, str(self.work / "report"))
            self.record("13", "runs with val AUC NaN and '0.99'", (proc.stdout.strip() or self.tail(proc))[:300])
        if "14" in only:
            code = r'''
import numpy as np, torch
from recsys.batch import Batch
from recsys.serving.export import ExportError, parity
n = 40
base = np.round(np.linspace(0.2, 0.8, n), 2).astype(np.float32)
base[10] = base[11] = base[12] = base[13] = np.float32(0.5)   # four tied scores, two of each label
labels = torch.tensor([i % 2 for i in range(n)], dtype=torch.float32)
class Fixed(torch.nn.Module):
    def forward(self, sparse, dense, seq):
        return torch.from_numpy(base[sparse[:, 0].numpy()])
class Session:   # ONNX Runtime breaking the tie: the same scores but one of them 1e-7 higher
    def run(self, names, feeds):
        out = base[feeds["sparse"][:, 0]].copy()
        out[feeds["sparse"][:, 0] == 11] += np.float32(1e-7)
        return [out]
rows = Batch(torch.arange(n).reshape(n, 1), torch.zeros(n, 0), torch.zeros(n, 0, 0, dtype=torch.long), labels)
try:
    report = parity(Fixed(), Session(), rows)
    print(f"accepted: max diff {report['max_abs_diff']:.1e}, AUC torch {report['auc_torch']:.6f} onnx {report['auc_onnx']:.6f}")
except ExportError as err:
    print(f"refused: {err}")
'''
            proc = self.python("--exec", code)
            self.record("14", "parity on 40 rows, a tied pair broken by 1e-7", (proc.stdout.strip() or self.tail(proc))[:300])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parent.parent, help="the checkout to probe")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--only", default=",".join(str(i) for i in range(1, 15)), help="comma-separated item numbers")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    a = parser.parse_args()
    only = set(a.only.split(","))
    work = a.work or Path(tempfile.mkdtemp(prefix="reliability-probes-"))
    work.mkdir(parents=True, exist_ok=True)
    probes = Probes(a.code, work)
    try:
        if only & {str(i) for i in range(1, 8)}:
            probes.endpoint(only)
        if only & {str(i) for i in range(8, 13)}:
            probes.data_items(only)
        if only & {"13", "14"}:
            probes.report_and_export(only)
    finally:
        if a.json:
            a.json.write_text(json.dumps({"code": str(a.code), "results": probes.results}, indent=1))
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
