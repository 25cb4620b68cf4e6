"""Issue #11, the endpoint: what an attacker or a careless client sends never gets a 500 or a NaN, every
client receives its answer, and a slow client cannot hold a connection. On real sockets, with the
connection layer `recsys serve` runs (serving.connection.server_config)."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import pytest

from recsys.features import FeaturePipeline
from recsys.serving.app import Limits, ModelHolder, create_app
from recsys.serving.backends import load_export
from recsys.serving.export import FEATURES_DIR

from .conftest import call, running_server

MODEL = "din"
LIMITS = Limits(max_instances=200, max_sequence_items=100)  # the default 1 MiB body limit holds 100,000 levels
DEEP = 100_000


@pytest.fixture(scope="module")
def model(exported):
    return load_export(exported(MODEL))


@pytest.fixture(scope="module")
def server(model):
    with running_server(create_app(ModelHolder(lambda: model), LIMITS)) as address:
        yield address


@pytest.fixture(scope="module")
def row(tiny_runs) -> dict:
    return tiny_runs.raw_valid(1)[0]


def _with(row: dict, field: str, literal: bytes) -> bytes:
    """A two-instance body whose second instance carries `literal` (raw JSON text) in `field`."""
    return json.dumps({"instances": [row, {**row, field: "@"}]}).encode().replace(b'"@"', literal)


def _no_500_and_healthy(address: str) -> None:
    assert call(address, "GET", "/healthz") == (200, {"status": "ok"})
    metrics = call(address, "GET", "/metrics")[1]
    assert 'status="500"' not in metrics


def test_deeply_nested_json_is_a_400_not_a_recursion_error(server, row) -> None:
    """Item 1: 100,000 nested lists or objects, as the body or inside a field."""
    bodies = {
        "lists as the body": b"[" * DEEP + b"]" * DEEP,
        "objects as the body": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
        "lists in a numeric field": _with(row, "price", b"[" * DEEP + b"]" * DEEP),
        "objects in a sequence field": _with(row, "hist_item", b'{"a":' * DEEP + b"1" + b"}" * DEEP),
        "lists in the context": json.dumps({"instances": [row], "context": "@"}).encode().replace(b'"@"', b"[" * DEEP + b"]" * DEEP),
    }
    for what, body in bodies.items():
        status, answer = call(server, "POST", "/v1/score", raw=body)
        assert (status, answer["error"]["code"]) == (400, "nested_too_deep"), (what, answer)
    # Nesting that parses (under the parser's depth) is a wrong type, named as such.
    status, answer = call(server, "POST", "/v1/score", raw=_with(row, "price", b"[" * 50 + b"]" * 50))
    assert status == 422 and "instance 1: numeric field 'price' needs a number, got list" in answer["error"]["message"]
    _no_500_and_healthy(server)


@pytest.mark.parametrize("literal", [b"Infinity", b"-Infinity", b"1e309", b"-1e309", b'"inf"', b'"-Infinity"', b'"1e400"',
                                     b"1" + b"0" * 400])
def test_an_infinite_number_is_refused_naming_instance_and_field(server, row, literal) -> None:
    """Item 2: one infinite value is a 422 naming its instance and field, never a NaN score or a 500."""
    status, answer = call(server, "POST", "/v1/score", raw=_with(row, "price", literal))
    assert status == 422 and answer["error"]["code"] == "bad_instance", answer
    assert answer["error"]["message"].startswith("instance 1: numeric field 'price' is ")
    assert "must be finite" in answer["error"]["message"]


def test_nan_is_missing_and_a_value_outside_the_fitted_range_is_clipped(server, row, exported) -> None:
    """Item 2, the policy for finite values: NaN (and null) take the fitted fill; a finite value beyond the
    range fitting saw is scored as the end of that range (1e308 used to score 0.0 without a word)."""
    stats = FeaturePipeline.load(exported(MODEL) / FEATURES_DIR).schema["price"].stats

    def score(literal: bytes) -> float:
        status, answer = call(server, "POST", "/v1/score", raw=_with(row, "price", literal))
        assert status == 200, answer
        return answer["scores"][1]

    assert score(b"NaN") == score(b'"nan"') == score(b"null")
    assert score(b"1e308") == score(json.dumps(stats["max"]).encode()) == score(json.dumps(stats["max"] * 10).encode())
    assert score(b"-1e308") == score(json.dumps(stats["min"]).encode())
    inside = (stats["min"] + stats["max"]) / 2
    assert score(json.dumps(inside).encode()) != score(b"1e308")  # clipping does not flatten the range itself


def test_a_body_over_the_limit_gets_its_413_even_from_a_client_that_sends_it_all_first(server, row) -> None:
    """Item 3: urllib sends the whole body (with Connection: close) before it reads: the server answered
    before reading and closed, so the client saw the connection reset instead of its 413."""
    body = json.dumps({"instances": [row] * 100_000}).encode()
    assert len(body) > 10_000_000
    request = urllib.request.Request(f"http://{server}/v1/score", data=body, headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=60)
    assert answer.value.code == 413 and json.loads(answer.value.read())["error"]["code"] == "body_too_large"

    # A client that asks first (Expect: 100-continue) is told at once, and sends nothing.
    host, port = server.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                  "Expect: 100-continue\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 413 ")
    _no_500_and_healthy(server)


def _raw(address: str, payload: bytes) -> socket.socket:
    host, port = address.split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    if payload:
        s.sendall(payload)
    return s


def _answer(s: socket.socket, wait: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and when it closed it."""
    s.settimeout(wait)
    start, received = time.monotonic(), b""
    while True:
        try:
            chunk = s.recv(4096)
        except TimeoutError:
            return received + b"<still open>", time.monotonic() - start
        except ConnectionResetError:
            return received + b"<reset>", time.monotonic() - start
        if not chunk:
            return received, time.monotonic() - start
        received += chunk


def test_slow_clients_are_dropped_after_the_deadlines_while_others_are_served(model, row) -> None:
    """Item 4: a client that sends nothing, half a header, headers and no body, or half a body holds its
    connection only until the header or body deadline; other clients are served meanwhile."""
    limits = Limits(header_timeout=2.0, body_timeout=2.0, keep_alive_timeout=2.0)
    app = create_app(ModelHolder(lambda: model), limits)
    body = json.dumps({"instances": [row]}).encode()
    post = f"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    with running_server(app) as address:
        idle = {
            "nothing": _raw(address, b""),
            "blank lines": _raw(address, b"\r\n\r\n"),
            "half a header": _raw(address, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "),
            "headers, no body": _raw(address, post),
            "half the body": _raw(address, post + body[: len(body) // 2]),
        }
        opened = time.monotonic()
        for _ in range(5):  # served while the slow ones hold their connections
            assert call(address, "POST", "/v1/score", {"instances": [row]})[0] == 200
        assert time.monotonic() - opened < 1.9, "the other clients were served only after the deadline"
        for what, s in idle.items():
            received, _ = _answer(s, wait=15)
            s.close()
            assert received.startswith(b"HTTP/1.1 408 "), (what, received[:80])
            assert time.monotonic() - opened >= 1.9, what
        assert time.monotonic() - opened < 8
        metrics = call(address, "GET", "/metrics")[1]
        assert 'recsys_requests_total{route="connection",status="408"} 5.0' in metrics
        assert 'recsys_request_errors_total{code="request_timeout",route="connection"} 5.0' in metrics
        # An idle keep-alive connection is closed after its own timeout, without an answer.
        s = _raw(address, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        received, after = _answer(s, wait=15)
        s.close()
        assert received.startswith(b"HTTP/1.1 200 ") and b"408" not in received and 1.9 <= after < 8


def test_connections_past_the_cap_get_503_until_the_slow_ones_are_dropped(model, row) -> None:
    """Item 4, the cap: with max_connections held by clients that send nothing, a new client is refused
    with 503 (not left waiting); once the deadline drops them it is served."""
    app = create_app(ModelHolder(lambda: model), Limits(max_connections=4, header_timeout=1.5))
    with running_server(app) as address:
        held = [_raw(address, b"") for _ in range(4)]
        time.sleep(0.2)
        status, answer = call(address, "GET", "/healthz")
        assert status == 503
        time.sleep(2.0)
        assert call(address, "GET", "/healthz") == (200, {"status": "ok"})
        for s in held:
            assert _answer(s, wait=5)[0].startswith(b"HTTP/1.1 408 ")
            s.close()
        assert 'recsys_request_errors_total{code="over_capacity",route="connection"} 1.0' in call(address, "GET", "/metrics")[1]


def test_a_body_that_is_not_utf8_is_a_400(server, row) -> None:
    """Item 5: JSON is UTF-8 (RFC 8259). json.loads(bytes) guessed UTF-16 and UTF-32 and scored them."""
    text = json.dumps({"instances": [row]})
    for encoding in ("utf-16", "utf-16-le", "utf-16-be", "utf-32"):
        status, answer = call(server, "POST", "/v1/score", raw=text.encode(encoding))
        assert (status, answer["error"]["code"]) == (400, "malformed_json"), encoding
        assert "not UTF-8" in answer["error"]["message"] or "not valid JSON" in answer["error"]["message"], encoding
    # A UTF-8 byte order mark may be ignored (RFC 8259, section 8.1): it is.
    plain = call(server, "POST", "/v1/score", raw=text.encode())
    assert call(server, "POST", "/v1/score", raw=text.encode("utf-8-sig")) == plain and plain[0] == 200


def test_unknown_routes_and_methods_are_counted_in_metrics(server) -> None:
    """Item 6: 404 and 405 answers appear in /metrics like every other answer."""
    for _ in range(2):
        assert call(server, "GET", "/nope")[1]["error"]["code"] == "not_found"
    assert call(server, "DELETE", "/v1/score")[1]["error"]["code"] == "method_not_allowed"
    assert call(server, "GET", "/admin/reload")[0] == 405
    metrics = call(server, "GET", "/metrics")[1]
    assert 'recsys_requests_total{route="unmatched",status="404"} 2.0' in metrics
    assert 'recsys_requests_total{route="score",status="405"} 1.0' in metrics
    assert 'recsys_requests_total{route="reload",status="405"} 1.0' in metrics
    assert 'recsys_request_errors_total{code="method_not_allowed",route="score"} 1.0' in metrics


def test_the_connection_cap_stays_within_the_files_the_process_may_open(monkeypatch) -> None:
    """Past `ulimit -n`, accept() fails (EMFILE) instead of answering a clean 503: the cap is lowered below it."""
    import resource

    from recsys.serving.app import within_open_files

    monkeypatch.setattr(resource, "getrlimit", lambda which: (300, 4096))
    assert within_open_files(Limits(max_connections=1000)).max_connections == 236
    assert within_open_files(Limits(max_connections=100)).max_connections == 100


def test_a_model_that_scores_nan_gets_a_named_500_not_a_failed_json_rendering(model, row) -> None:
    """Inputs are finite and in range, so a NaN score is the model's fault: said so (500 non_finite_score),
    rather than JSON rendering failing into an anonymous 500; the response never carries NaN."""
    import dataclasses

    import numpy as np

    broken = dataclasses.replace(model, scorer=lambda sparse, dense, seq: np.full(len(sparse), np.nan, dtype=np.float32))
    with running_server(create_app(ModelHolder(lambda: broken), LIMITS)) as address:
        status, answer = call(address, "POST", "/v1/score", {"instances": [row, row]})
    assert status == 500 and answer["error"]["code"] == "non_finite_score"
    assert answer["error"]["message"].endswith("scored nan for instance 0 (2 of 2 instances not finite)")
