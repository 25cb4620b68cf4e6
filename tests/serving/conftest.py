"""Fixtures for the serving tests: tiny trained runs (one epoch of 8 steps each, at a high learning rate so that scores spread out: a near-constant untrained model has so many near-ties that float32 rounding alone moves its AUC by 1e-6) on the synthetic set,
with 10,000 validation rows so that export parity runs at its full size, and servers on real sockets."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
import pytest

SERVING_SYNTHETIC = ["data=synthetic", "data.synthetic.n_train=2000", "data.synthetic.n_valid=10000",
                     "data.synthetic.n_test=200", "data.batch_size=250", "trainer.max_epochs=1",
                     "task.learning_rate=0.01", "trainer.enable_progress_bar=false", "logger=csv"]


class TinyRuns:
    """Trains a model on first use and keeps its run folder for the rest of the session."""

    def __init__(self, root: Path):
        self.root, self.cache = root, root / "cache"
        self._runs: dict[str, Path] = {}

    def __call__(self, model: str, seed: int = 2021) -> Path:
        key = f"{model}-{seed}"
        if key not in self._runs:
            from recsys.bench import compose_train_config
            from recsys.train import train

            out = self.root / "runs" / key
            cfg = compose_train_config([f"model={model}", *SERVING_SYNTHETIC, f"seed={seed}",
                                        f"paths.cache_dir={self.cache}", f"paths.output_dir={out}"])
            train(cfg, out)
            self._runs[key] = out
        return self._runs[key]

    def raw_valid(self, n: int) -> list[dict[str, Any]]:
        """Raw validation rows as a client would send them (label dropped)."""
        from recsys.bench import compose_train_config
        from recsys.data import prepare_configured

        # The synthetic set is written on first use, which need not be a training run of this session.
        prepare_configured(compose_train_config([*SERVING_SYNTHETIC, f"paths.cache_dir={self.cache}"]))
        (path,) = self.cache.glob("raw/synthetic-*/valid.csv")
        return pl.read_csv(path, n_rows=n, infer_schema_length=0).drop("label").to_dicts()


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> TinyRuns:
    return TinyRuns(tmp_path_factory.mktemp("serving"))


@pytest.fixture(scope="session")
def exported(tiny_runs: TinyRuns, tmp_path_factory: pytest.TempPathFactory):
    """`exported(model)`: the export folder of that model's tiny run (made once per session)."""
    from recsys.serving.export import export_run

    root = tmp_path_factory.mktemp("exports")
    done: dict[str, Path] = {}

    def get(model: str) -> Path:
        if model not in done:
            export_run(tiny_runs(model), root / model)
            done[model] = root / model
        return done[model]

    return get


@contextmanager
def running_server(app) -> Iterator[str]:  # noqa: ANN001 - a Starlette app
    """Serve `app` with uvicorn on an ephemeral loopback port in a thread; yields 'host:port'."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def call(address: str, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One HTTP request; returns (status, parsed JSON body or text)."""
    host, port = address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        conn.request(method, path, body=data, headers={"content-type": "application/json", **(headers or {})})
        response = conn.getresponse()
        text = response.read().decode()
        try:
            return response.status, json.loads(text)
        except json.JSONDecodeError:
            return response.status, text
    finally:
        conn.close()
