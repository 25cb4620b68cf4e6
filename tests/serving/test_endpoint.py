"""The endpoint on a real socket: the happy path, every kind of bad input, scores equal to the offline
model's, reload under concurrent traffic, and the `recsys serve` command (token, SIGHUP)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from recsys.features.atomic import atomic_directory
from recsys.serving.app import Limits, ModelHolder, create_app
from recsys.serving.backends import load_export
from recsys.serving.export import validation_rows
from recsys.serving.runs import load_run

from .conftest import call, running_server

MODEL = "din"  # has a behaviour sequence, so the sequence rules are exercised end to end
LIMITS = Limits(max_instances=200, max_body_bytes=64 * 1024, max_sequence_items=100)


@pytest.fixture(scope="module")
def server(exported):
    # Two workers: the 100-instance requests below go through the chunked, side-by-side scoring.
    holder = ModelHolder(lambda: load_export(exported(MODEL), threads=2))
    with running_server(create_app(holder, LIMITS)) as address:
        yield address


def test_happy_path_matches_the_offline_model(server, tiny_runs) -> None:
    raw = tiny_runs.raw_valid(100)
    status, body = call(server, "POST", "/v1/score", {"instances": raw})
    assert status == 200, body
    assert body["model"] == MODEL and body["version"]
    scores = np.array(body["scores"])
    assert scores.shape == (100,) and ((scores > 0) & (scores < 1)).all()

    # Offline: the trained PyTorch model on the same rows as training's feature cache holds them.
    run = load_run(tiny_runs(MODEL))
    rows, _ = validation_rows(run, 100)
    with torch.inference_mode():
        offline = run.scorer(*rows.inputs()).numpy()
    np.testing.assert_allclose(scores, offline, atol=1e-5, rtol=0)


def test_a_large_request_is_scored_in_chunks_side_by_side(exported, tiny_runs) -> None:
    raw = tiny_runs.raw_valid(100)
    single = load_export(exported(MODEL), threads=1)
    parallel = load_export(exported(MODEL), threads=3)
    chunks, score = [], parallel.scorer
    parallel.scorer = lambda sparse, dense, seq: chunks.append(len(sparse)) or score(sparse, dense, seq)
    np.testing.assert_allclose(parallel.score_records(raw), single.score_records(raw), atol=1e-6, rtol=0)
    assert sorted(chunks) == [33, 33, 34]  # in row order, concatenated back in row order (checked above)
    chunks.clear()
    parallel.score_records(raw[:20])  # too few rows to split
    assert chunks == [20]


def test_io_binding_path_scores_as_the_plain_session(exported, tiny_runs, monkeypatch) -> None:
    """The CUDA path's binding code, run on a CPU session; and onnxruntime claiming the CUDA provider
    on a machine where it cannot start falls back to the CPU and reports it (no GPU here)."""
    import onnxruntime as ort

    from recsys.serving.backends import io_binding_scorer
    from recsys.serving.export import MODEL_FILE, onnx_session

    plain = load_export(exported(MODEL))
    sparse, dense, seq = plain.encoder.encode(tiny_runs.raw_valid(50))
    bound = io_binding_scorer(onnx_session(exported(MODEL) / MODEL_FILE))
    np.testing.assert_allclose(bound(sparse, dense, seq), plain.scorer(sparse, dense, seq), atol=1e-7, rtol=0)
    np.testing.assert_allclose(bound(sparse[7:9], dense[7:9], seq[7:9]), plain.scorer(sparse, dense, seq)[7:9], atol=1e-7, rtol=0)

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
        claimed = load_export(exported(MODEL))
        assert claimed.device == "cpu" and claimed.describe()["device"] == "cpu"
        np.testing.assert_allclose(claimed.scorer(sparse, dense, seq), plain.scorer(sparse, dense, seq), atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_provider_with_io_binding_scores_as_the_cpu(exported, tiny_runs) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider (install the gpu extra: onnxruntime-gpu)")
    on_gpu = load_export(exported(MODEL))
    assert on_gpu.device == "cuda"
    from recsys.serving.export import MODEL_FILE, onnx_session

    cpu = onnx_session(exported(MODEL) / MODEL_FILE)
    sparse, dense, seq = on_gpu.encoder.encode(tiny_runs.raw_valid(200))
    expected = cpu.run(None, {"sparse": sparse, "dense": dense, "seq": seq})[0]
    np.testing.assert_allclose(on_gpu.score_arrays(sparse, dense, seq), expected, atol=1e-5, rtol=0)


def test_sequence_forms_context_and_unseen_values(server, tiny_runs) -> None:
    raw = tiny_runs.raw_valid(5)
    base = call(server, "POST", "/v1/score", {"instances": raw})[1]["scores"]
    as_lists = [{**r, "hist_item": r["hist_item"].split("^") if r["hist_item"] else []} for r in raw]
    assert call(server, "POST", "/v1/score", {"instances": as_lists})[1]["scores"] == base

    # One user, many candidates: the user's fields once in "context".
    user_fields = ("user", "hist_item", "device", "context")
    context = {k: raw[0][k] for k in user_fields}
    candidates = [{k: v for k, v in r.items() if k not in user_fields} for r in raw]
    flat = [{**r, **context} for r in raw]
    got = call(server, "POST", "/v1/score", {"context": context, "instances": candidates})
    assert got[0] == 200 and got[1]["scores"] == call(server, "POST", "/v1/score", {"instances": flat})[1]["scores"]

    unseen = {**raw[0], "item": "never-seen-item", "user": 10**12, "hist_item": ["nope", "x"]}
    status, body = call(server, "POST", "/v1/score", {"instances": [unseen]})
    assert status == 200 and 0 < body["scores"][0] < 1


def _bad_requests(raw: dict) -> list[tuple[str, dict, int, str]]:
    missing = {k: v for k, v in raw.items() if k != "item"}
    return [
        ("malformed JSON", {"raw": b'{"instances": [}'}, 400, "malformed_json"),
        ("not UTF-8", {"raw": b"\xff\xfe"}, 400, "malformed_json"),
        ("no instances key", {"body": {"rows": [raw]}}, 422, "missing_instances"),
        ("instances not a list", {"body": {"instances": raw}}, 422, "bad_instances"),
        ("empty instances", {"body": {"instances": []}}, 422, "bad_instances"),
        ("instance not an object", {"body": {"instances": [raw, 3]}}, 422, "bad_instance"),
        ("missing field", {"body": {"instances": [raw, missing]}}, 422, "bad_instance"),
        ("wrong type: list for a category", {"body": {"instances": [{**raw, "item": [1, 2]}]}}, 422, "bad_instance"),
        ("wrong type: text for a number", {"body": {"instances": [{**raw, "price": "cheap"}]}}, 422, "bad_instance"),
        ("wrong type: number for a sequence", {"body": {"instances": [{**raw, "hist_item": 12}]}}, 422, "bad_instance"),
        ("context not an object", {"body": {"context": [1], "instances": [raw]}}, 422, "bad_context"),
        ("too many instances", {"body": {"instances": [raw] * (LIMITS.max_instances + 1)}}, 422, "too_many_instances"),
        ("body over the limit", {"raw": b'{"instances": [' + b" " * LIMITS.max_body_bytes + b"]}"}, 413, "body_too_large"),
        ("sequence over the limit", {"body": {"instances": [{**raw, "hist_item": ["1"] * (LIMITS.max_sequence_items + 1)}]}},
         422, "sequence_too_long"),
    ]


def test_every_bad_input_gets_a_4xx_that_names_the_problem(server, tiny_runs) -> None:
    raw = tiny_runs.raw_valid(1)[0]
    for what, request, status, code in _bad_requests(raw):
        got_status, body = call(server, "POST", "/v1/score", request.get("body"), raw=request.get("raw"))
        assert (got_status, body["error"]["code"]) == (status, code), (what, body)
        assert body["error"]["message"], what
    assert "field 'item' is missing" in call(server, "POST", "/v1/score", {"instances": [{k: v for k, v in raw.items() if k != "item"}]})[1]["error"]["message"]
    assert call(server, "GET", "/v1/score")[0] == 405
    assert call(server, "GET", "/nope")[1]["error"]["code"] == "not_found"

    # Long sequences under the limit are truncated to the most recent max_len items, as in training.
    history = [str(i) for i in range(1, 60)]
    long = call(server, "POST", "/v1/score", {"instances": [{**raw, "hist_item": history}]})
    recent = call(server, "POST", "/v1/score", {"instances": [{**raw, "hist_item": history[-20:]}]})
    assert long[0] == 200 and long[1]["scores"] == recent[1]["scores"]

    # Still serving, nothing answered 500, and the errors are counted.
    assert call(server, "GET", "/healthz") == (200, {"status": "ok"})
    metrics = call(server, "GET", "/metrics")[1]
    assert 'status="500"' not in metrics
    assert 'recsys_request_errors_total{code="too_many_instances",route="score"} 1.0' in metrics
    assert "recsys_request_latency_seconds_bucket" in metrics


def test_model_description_and_probes(server, exported) -> None:
    status, body = call(server, "GET", "/v1/model")
    assert status == 200
    meta = json.loads((exported(MODEL) / "metadata.json").read_text())
    assert body["version"] == meta["version"] and body["metadata"]["data_fingerprint"] == meta["data_fingerprint"]
    fields = {f["name"]: f for f in body["input_fields"]}
    assert set(fields) == {"user", "item", "context", "device", "category", "price", "hist_item"}
    assert fields["hist_item"]["type"] == "sequence" and fields["hist_item"]["max_len"] == 20
    assert body["limits"]["max_instances"] == LIMITS.max_instances
    assert call(server, "GET", "/readyz")[1]["version"] == meta["version"]


def test_reload_under_concurrent_traffic_fails_no_request(exported, tiny_runs, tmp_path) -> None:
    live = tmp_path / "live"
    shutil.copytree(exported(MODEL), live)
    versions = [json.loads((exported(m) / "metadata.json").read_text())["version"] for m in (MODEL, "finalmlp")]
    raw = tiny_runs.raw_valid(20)
    holder = ModelHolder(lambda: load_export(live))
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def traffic(address: str) -> None:
        while not stop.is_set():
            status, body = call(address, "POST", "/v1/score", {"instances": raw})
            results.append((status, body.get("version") if isinstance(body, dict) else body))

    def publish(model: str) -> None:  # as `recsys export` publishes: a whole folder renamed into place
        with atomic_directory(live) as tmp:
            shutil.copytree(exported(model), tmp, dirs_exist_ok=True)

    with running_server(create_app(holder, LIMITS)) as address:
        clients = [threading.Thread(target=traffic, args=(address,)) for _ in range(4)]
        for c in clients:
            c.start()
        for model, version in [("finalmlp", versions[1]), (MODEL, versions[0]), ("finalmlp", versions[1])]:
            time.sleep(0.3)
            publish(model)
            status, body = call(address, "POST", "/admin/reload")
            assert status == 200 and body["version"] == version
        time.sleep(0.3)
        stop.set()
        for c in clients:
            c.join()
    assert results and all(status == 200 for status, _ in results), [r for r in results if r[0] != 200][:3]
    assert {v for _, v in results} == set(versions)


def test_a_request_in_flight_finishes_on_the_old_model(exported, tiny_runs) -> None:
    raw = tiny_runs.raw_valid(3)
    started = threading.Event()
    loads = iter([MODEL, "finalmlp"])

    def load():  # noqa: ANN202 - the first model scores slowly, so a reload lands mid-request
        model = load_export(exported(next(loads)))
        if model.name != MODEL:
            return model
        fast = model.scorer

        def slow(*inputs):  # noqa: ANN002, ANN202
            started.set()
            time.sleep(0.5)
            return fast(*inputs)

        return dataclasses.replace(model, scorer=slow)

    holder = ModelHolder(load)
    old_version = holder.current.version
    with running_server(create_app(holder, LIMITS)) as address:
        in_flight: list = []
        request = threading.Thread(target=lambda: in_flight.append(call(address, "POST", "/v1/score", {"instances": raw})))
        request.start()
        assert started.wait(10)
        reload_status, reloaded = call(address, "POST", "/admin/reload")
        request.join()
        after = call(address, "POST", "/v1/score", {"instances": raw})
    assert reload_status == 200 and reloaded["previous_version"] == old_version
    assert in_flight[0][0] == 200 and in_flight[0][1]["version"] == old_version
    assert after[1]["version"] == reloaded["version"] != old_version


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP reload is POSIX only")
def test_serve_command_with_token_and_sighup(exported, tiny_runs) -> None:
    port = _free_port()
    env = {**os.environ, "RECSYS_SERVE_TOKEN": "s3cret"}
    proc = subprocess.Popen([sys.executable, "-m", "recsys.commands.cli", "serve", str(exported(MODEL)), "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if call(address, "GET", "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "recsys serve did not come up"
            time.sleep(0.2)
        raw = tiny_runs.raw_valid(2)
        assert call(address, "GET", "/healthz")[0] == 200  # probes stay open
        status, body = call(address, "POST", "/v1/score", {"instances": raw})
        assert status == 401 and body["error"]["code"] == "unauthorized"
        assert call(address, "POST", "/v1/score", {"instances": raw}, headers={"authorization": "Bearer wrong"})[0] == 401
        auth = {"authorization": "Bearer s3cret"}
        assert call(address, "POST", "/v1/score", {"instances": raw}, headers=auth)[0] == 200
        assert call(address, "POST", "/admin/reload")[0] == 401

        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while 'recsys_model_reloads_total{outcome="ok"} 1.0' not in call(address, "GET", "/metrics", headers=auth)[1]:
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            time.sleep(0.2)
        assert call(address, "POST", "/v1/score", {"instances": raw}, headers=auth)[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_recommend_serves_a_next_item_export_and_refuses_bad_requests(exported, tiny_runs) -> None:
    """POST /v1/recommend on a next-item export: the top k raw items with scores, the history left out,
    unseen history items out-of-vocabulary (not errors); bad requests are 4xx that say what is wrong; the
    wrong route for the model's kind is refused on both models."""
    from recsys.serving.backends import load_export

    histories, targets = tiny_runs.raw_histories(50)
    served = load_export(exported("sasrec"))
    with running_server(create_app(ModelHolder(lambda: load_export(exported("sasrec"))), LIMITS)) as address:
        status, body = call(address, "POST", "/v1/recommend", {"instances": histories[:3], "k": 7})
        assert status == 200, body
        assert body["recommendations"] == served.recommend_records(histories[:3], 7)  # what the offline model gives
        for history, recs in zip(histories[:3], body["recommendations"]):
            assert len(recs) == 7 and not {r["item"] for r in recs} & set(history["history"])
            assert [r["score"] for r in recs] == sorted((r["score"] for r in recs), reverse=True)
        unseen = {"history": [*histories[0]["history"], "never-seen-item"]}
        status, body = call(address, "POST", "/v1/recommend", {"instances": [unseen], "k": 5})
        assert status == 200 and len(body["recommendations"][0]) == 5
        as_string = {"history": "^".join(histories[1]["history"])}  # the field's delimited-string form
        assert call(address, "POST", "/v1/recommend", {"instances": [as_string]})[1]["recommendations"] == \
            served.recommend_records(histories[1:2], 10)  # k defaults to 10
        bad = [
            ({"instances": [{"other": [1]}], "k": 5}, 422, "bad_instance", "'history' is missing"),
            ({"instances": histories[:1], "k": 0}, 422, "bad_k", "from 1 to"),
            ({"instances": histories[:1], "k": LIMITS.max_k + 1}, 422, "bad_k", "from 1 to"),
            ({"instances": histories[:1], "k": "ten"}, 422, "bad_k", "'ten'"),
            ({"instances": histories[:1], "k": True}, 422, "bad_k", "True"),
            ({"instances": [{"history": 12}], "k": 5}, 422, "bad_instance", "needs a list"),
            ({"instances": [{"history": [{"a": 1}]}], "k": 5}, 422, "bad_instance", "items must be strings or numbers"),
            ({"instances": [{"history": ["1"] * (LIMITS.max_sequence_items + 1)}]}, 422, "sequence_too_long", "items"),
            ({"k": 5}, 422, "missing_instances", "instances"),
        ]
        for request, status, code, words in bad:
            got_status, got = call(address, "POST", "/v1/recommend", request)
            assert (got_status, got["error"]["code"]) == (status, code), (request, got)
            assert words in got["error"]["message"], (request, got)
        assert call(address, "POST", "/v1/score", {"instances": histories[:1]})[1]["error"]["code"] == "wrong_model_kind"
        model = call(address, "GET", "/v1/model")[1]
        assert model["kind"] == "next_item" and model["route"] == "/v1/recommend" and model["retrieval"]["index"] == "exact"
        assert call(address, "GET", "/healthz")[0] == 200 and 'status="500"' not in call(address, "GET", "/metrics")[1]
    with running_server(create_app(ModelHolder(lambda: load_export(exported(MODEL))), LIMITS)) as address:
        status, body = call(address, "POST", "/v1/recommend", {"instances": [{"history": ["1"]}], "k": 5})
        assert status == 404 and body["error"]["code"] == "wrong_model_kind" and "/v1/score" in body["error"]["message"]
