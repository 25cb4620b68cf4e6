"""Fixtures for the serving tests: exports of the tiny trained runs (`tiny_runs`, tests/conftest.py) and
servers on real sockets."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def exported(tiny_runs, tmp_path_factory: pytest.TempPathFactory):
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
    """Serve `app` (of create_app) as `recsys serve` does, on an ephemeral loopback port in a thread;
    yields 'host:port'."""
    import uvicorn

    from recsys.serving.connection import server_config

    server = uvicorn.Server(server_config(app, host="127.0.0.1", port=0))
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
