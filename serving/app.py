"""The scoring endpoint: Starlette on uvicorn, scoring on ONNX Runtime (or PyTorch eager, to compare).

    POST /v1/score      {"instances": [{field: raw value, ...}, ...], "context": {...}?}
                        -> {"scores": [...], "model": ..., "version": ...}          (a CTR export)
    POST /v1/recommend  {"instances": [{history field: raw items, ...}, ...], "k": 10, "context": {...}?}
                        -> {"recommendations": [[{"item": ..., "score": ...}, ...], ...], ...}
                                                                                   (a next-item export)
    GET  /v1/model      metadata, the expected input fields, the limits
    GET  /healthz       the process answers
    GET  /readyz        a model is loaded
    GET  /metrics       Prometheus text format
    POST /admin/reload  load the model folder again and swap (SIGHUP does the same)

Every bad input gets a 4xx with {"error": {"code": ..., "message": ...}}; nothing a client sends can
raise past a handler. With a bearer token set, every route except /healthz and /readyz requires it.
A request must arrive within its deadlines (headers, then body) or its connection is answered 408 and
closed; at most `max_connections` connections are served at once, beyond them 503 (docs/serving.md).
"""

from __future__ import annotations

import asyncio
import codecs
import hmac
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from recsys.features import FeatureError
from recsys.features.records import SequenceTooLong
from recsys.serving.backends import LoadedModel, NonFiniteScores
from recsys.serving.connection import server_config

log = logging.getLogger(__name__)
Handler = Callable[[Request], Awaitable[Response]]
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class Limits:
    max_instances: int = 1000
    max_body_bytes: int = 1 << 20
    # A raw sequence longer than this is refused (422); up to it, the model's most recent max_len
    # items are kept, as in training.
    max_sequence_items: int = 1000
    # A body over max_body_bytes is still read, and dropped, up to this many bytes before the 413 goes out:
    # a client that sends its whole body before reading (urllib, most) would otherwise see the connection
    # reset instead of its 413. Past it, the 413 is sent and the connection closed.
    max_drain_bytes: int = 64 << 20
    # Seconds from a request's first byte (or the connection's opening) to the end of its headers, and
    # from there to the end of its body; past either, 408 and the connection is closed.
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    # Seconds an idle keep-alive connection is kept open between requests.
    keep_alive_timeout: float = 5.0
    # Connections (or requests in progress) served at once; a request beyond them is answered 503.
    max_connections: int = 1000
    # The most items one recommendation may ask for (`k` of POST /v1/recommend).
    max_k: int = 1000


class BadRequest(Exception):
    def __init__(self, status: int, code: str, message: str, *, close: bool = False):
        super().__init__(message)
        self.status, self.code, self.message, self.close = status, code, message, close


class ModelHolder:
    """The one reference to the current LoadedModel. A reload builds the new model completely, then
    replaces the reference in one assignment; requests already running hold the old object and finish
    on it, and the old model is freed when the last of them lets go."""

    def __init__(self, loader: Callable[[], LoadedModel]):
        self._loader = loader
        self._lock = threading.Lock()  # one reload at a time
        self.current: LoadedModel = loader()

    def reload(self) -> tuple[LoadedModel, LoadedModel]:
        with self._lock:
            new = self._loader()
            old, self.current = self.current, new
            return old, new


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("recsys_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry)
        self.latency = Histogram("recsys_request_latency_seconds", "Request latency, body read to response built", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.errors = Counter("recsys_request_errors", "Requests answered with an error, by code", ["route", "code"], registry=self.registry)
        self.instances = Counter("recsys_instances_scored", "Instances scored", registry=self.registry)
        self.reloads = Counter("recsys_model_reloads", "Model reloads by outcome", ["outcome"], registry=self.registry)
        self.model_info = Gauge("recsys_model_info", "The model being served (value 1)", ["model", "version", "backend"], registry=self.registry)

    def answered(self, route: str, status: int, code: str | None = None) -> None:
        """A request answered outside a route's handler: unknown routes and methods, and the connection
        layer's 408 and 503 (route "connection")."""
        self.requests.labels(route, str(status)).inc()
        if code is not None:
            self.errors.labels(route, code).inc()

    def serving(self, model: LoadedModel) -> None:
        self.model_info.clear()
        self.model_info.labels(model.name, model.version, model.backend).set(1)


def error_response(status: int, code: str, message: str, *, close: bool = False) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers={"connection": "close"} if close else None)


# Set on a request's scope once its handler has started reading the body; the route wrapper reads and
# drops a body nobody read (a 401, a route that takes none), so that the client still receives the answer.
BODY_TAKEN = "recsys.body_taken"


def create_app(holder: ModelHolder, limits: Limits = Limits(), token: str | None = None) -> Starlette:
    metrics = Metrics()
    metrics.serving(holder.current)
    expected_auth = f"Bearer {token}".encode() if token else None

    def route(path: str, name: str, handler: Handler, methods: list[str], *, guarded: bool = True) -> Route:
        async def endpoint(request: Request) -> Response:
            start = time.perf_counter()
            try:
                if guarded and expected_auth is not None:
                    given = request.headers.get("authorization", "").encode()
                    if not hmac.compare_digest(given, expected_auth):
                        raise BadRequest(401, "unauthorized", "this route needs the header 'Authorization: Bearer <token>'")
                response = await handler(request)
            except BadRequest as err:
                metrics.errors.labels(name, err.code).inc()
                response = error_response(err.status, err.code, err.message, close=err.close)
            except NonFiniteScores as err:  # the model's fault, not the input's (inputs are finite and in range)
                log.error("%s: %s", path, err)
                metrics.errors.labels(name, "non_finite_score").inc()
                response = error_response(500, "non_finite_score", str(err))
            except Exception:  # a bug, not bad input: answer 500 and keep the worker alive
                log.exception("%s failed", path)
                metrics.errors.labels(name, "internal").inc()
                response = error_response(500, "internal", "internal error; the server log has the traceback")
            if request.method in ("POST", "PUT", "PATCH") and BODY_TAKEN not in request.scope:
                if not await drain(request.stream()):
                    response.headers["connection"] = "close"
            metrics.latency.labels(name).observe(time.perf_counter() - start)
            metrics.requests.labels(name, str(response.status_code)).inc()
            return response

        return Route(path, endpoint, methods=methods, name=name)

    async def drain(stream: Any) -> bool:
        """Read and drop the rest of a body, up to max_drain_bytes; False if it did not all come."""
        seen = 0
        try:
            async for chunk in stream:
                seen += len(chunk)
                if seen > limits.max_drain_bytes:
                    return False
        except ClientDisconnect:
            return False
        return True

    async def read_json(request: Request) -> Any:
        request.scope[BODY_TAKEN] = True
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limits.max_body_bytes):
            message = f"the body is {length} bytes; the limit is {limits.max_body_bytes}"
            if request.headers.get("expect", "").lower() == "100-continue":
                raise BadRequest(413, "body_too_large", message, close=True)  # the client waits: nothing to drain
            raise BadRequest(413, "body_too_large", message, close=not await drain(request.stream()))
        chunks, size = [], 0
        stream = request.stream()
        try:
            async for chunk in stream:
                size += len(chunk)
                if size > limits.max_body_bytes:
                    complete = await drain(stream)
                    raise BadRequest(413, "body_too_large", f"the body is over the limit of {limits.max_body_bytes} bytes",
                                     close=not complete)
                chunks.append(chunk)
        except ClientDisconnect:
            raise BadRequest(400, "client_disconnected", "the client went away before sending the whole body") from None
        body = b"".join(chunks)
        if body[:3] == codecs.BOM_UTF8:  # RFC 8259 lets a parser ignore a UTF-8 byte order mark
            body = body[3:]
        try:
            # Decoded as UTF-8 here: json.loads(bytes) would guess UTF-16 and UTF-32 too (RFC 8259: JSON is UTF-8).
            return json.loads(body.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise BadRequest(400, "malformed_json", f"the body is not UTF-8 (JSON is UTF-8, RFC 8259): {err}") from None
        except RecursionError:
            raise BadRequest(400, "nested_too_deep", "the body nests arrays or objects too deeply to parse") from None
        except ValueError as err:  # JSONDecodeError, and an integer of more digits than Python converts
            raise BadRequest(400, "malformed_json", f"the body is not valid JSON: {err}") from None

    def instances_of(payload: Any) -> list[dict[str, Any]]:
        if not isinstance(payload, dict) or "instances" not in payload:
            raise BadRequest(422, "missing_instances", 'the body must be an object with "instances": [{field: value, ...}, ...]')
        instances, context = payload["instances"], payload.get("context")
        if not isinstance(instances, list) or not instances:
            raise BadRequest(422, "bad_instances", '"instances" must be a non-empty list of objects')
        if len(instances) > limits.max_instances:
            raise BadRequest(422, "too_many_instances", f"{len(instances)} instances; at most {limits.max_instances} per request")
        if context is None:
            return instances
        if not isinstance(context, dict):
            raise BadRequest(422, "bad_context", '"context" must be an object of field values shared by every instance')
        for i, instance in enumerate(instances):
            if not isinstance(instance, dict):
                raise BadRequest(422, "bad_instance", f"instance {i} is a {type(instance).__name__}, not an object")
        # One user with many candidates: the user's fields (history included) are sent once.
        return [{**context, **instance} for instance in instances]

    async def off_the_loop(encode_and_run: Callable[..., Any], *args: Any) -> Any:
        """Encoding and inference in a worker thread, so the event loop never waits on ONNX Runtime (which
        releases the GIL while it runs); an instance the encoder refuses is a 422 naming it."""
        try:
            return await anyio.to_thread.run_sync(encode_and_run, *args)
        except SequenceTooLong as err:
            raise BadRequest(422, "sequence_too_long", str(err)) from None
        except FeatureError as err:
            raise BadRequest(422, "bad_instance", str(err)) from None

    def serving_kind(model: LoadedModel, kind: str) -> None:
        if model.kind != kind:
            other = "/v1/recommend" if model.kind == "next_item" else "/v1/score"
            what = "recommends next items" if model.kind == "next_item" else "scores (user, item) pairs"
            raise BadRequest(404, "wrong_model_kind", f"the model being served ({model.name}) {what}: use POST {other}")

    async def score(request: Request) -> Response:
        model = holder.current  # this request's model, whatever a reload does meanwhile
        serving_kind(model, "score")
        instances = instances_of(await read_json(request))
        scores = await off_the_loop(model.score_records, instances, limits.max_sequence_items)
        try:
            response = JSONResponse({"scores": scores, "model": model.name, "version": model.version})
        except ValueError:  # JSON has no NaN or infinity (rendered with allow_nan=False): no check on the happy path
            bad = [i for i, x in enumerate(scores) if not math.isfinite(x)]
            raise NonFiniteScores(f"model {model.name} {model.version} scored {scores[bad[0]]} for instance {bad[0]} "
                                  f"({len(bad)} of {len(scores)} instances not finite)") from None
        metrics.instances.inc(len(scores))
        return response

    async def recommend(request: Request) -> Response:
        model = holder.current
        serving_kind(model, "next_item")
        payload = await read_json(request)
        instances = instances_of(payload)
        k = payload.get("k", 10)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limits.max_k:
            raise BadRequest(422, "bad_k", f'"k" must be an integer from 1 to {limits.max_k}, got {k!r}')
        found = await off_the_loop(model.recommend_records, instances, k, limits.max_sequence_items)
        metrics.instances.inc(len(found))
        return JSONResponse({"recommendations": found, "model": model.name, "version": model.version})

    async def describe(request: Request) -> Response:
        return JSONResponse({**holder.current.describe(), "limits": asdict(limits)})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        model = holder.current
        return JSONResponse({"status": "ready", "model": model.name, "version": model.version})

    async def export_metrics(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def reload_now() -> dict[str, str]:
        try:
            old, new = holder.reload()
        except Exception as err:
            metrics.reloads.labels("failed").inc()
            log.exception("reload failed; still serving %s", holder.current.version)
            raise BadRequest(503, "reload_failed", f"reload failed, still serving {holder.current.version}: {err}") from None
        metrics.reloads.labels("ok").inc()
        metrics.serving(new)
        log.info("reloaded: %s -> %s", old.version, new.version)
        return {"model": new.name, "version": new.version, "previous_version": old.version}

    async def reload(request: Request) -> Response:
        return JSONResponse(await anyio.to_thread.run_sync(reload_now))

    def on_sighup() -> None:
        async def run() -> None:
            try:
                await anyio.to_thread.run_sync(reload_now)
            except BadRequest:
                pass  # logged and counted by reload_now
        asyncio.get_running_loop().create_task(run())

    async def http_error(request: Request, exc: Exception) -> Response:
        """Unknown routes (404) and methods (405), answered by the router before any handler runs."""
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        route = request.scope.get("route")  # set by the router when the path matched but the method did not
        metrics.answered(getattr(route, "name", None) or "unmatched", exc.status_code, code)
        return error_response(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}",
                              close=request.method in ("POST", "PUT", "PATCH") and not await drain(request.stream()))

    @asynccontextmanager
    async def lifespan(app: Starlette):  # noqa: ANN202
        loop = asyncio.get_running_loop()
        if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
            loop.add_signal_handler(signal.SIGHUP, on_sighup)
        yield

    routes = [
        route("/v1/score", "score", score, ["POST"]),
        route("/v1/recommend", "recommend", recommend, ["POST"]),
        route("/v1/model", "model", describe, ["GET"]),
        route("/healthz", "healthz", healthz, ["GET"], guarded=False),
        route("/readyz", "readyz", readyz, ["GET"], guarded=False),
        route("/metrics", "metrics", export_metrics, ["GET"]),
        route("/admin/reload", "reload", reload, ["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    # The connection layer (connection.server_config) reads its deadlines and cap from the same limits,
    # and counts its 408 and 503 answers in the same metrics.
    app.state.limits, app.state.metrics = limits, metrics
    return app


def within_open_files(limits: Limits) -> Limits:
    """`limits` with max_connections lowered to what the process may open (ulimit -n, less room for the
    model's and the process's own files): past it, accept() fails instead of a clean 503."""
    try:
        import resource

        files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, ValueError, OSError):  # no resource module (Windows)
        return limits
    room = files - 64
    if files == resource.RLIM_INFINITY or limits.max_connections <= room:
        return limits
    log.warning("max_connections %d lowered to %d: the process may open %d files (ulimit -n)", limits.max_connections,
                max(room, 1), files)
    return replace(limits, max_connections=max(room, 1))


def serve(source: str, *, backend: str = "onnx", host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          limits: Limits = Limits(), threads: int = 1) -> None:
    """Load `source` (an export folder, or a run folder for the torch backend) and serve it until
    SIGINT/SIGTERM."""
    import uvicorn

    from recsys.serving.backends import load_export, load_torch_run

    loaders = {"onnx": load_export, "torch": load_torch_run}
    if backend not in loaders:
        raise ValueError(f"unknown backend {backend!r}; expected one of {sorted(loaders)}")
    limits = within_open_files(limits)
    holder = ModelHolder(lambda: loaders[backend](source, threads=threads))
    app = create_app(holder, limits, token)
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    model = holder.current
    print(f"serving {model.name} {model.version} ({model.backend} on {model.device}) at http://{host}:{port}", flush=True)
    uvicorn.Server(server_config(app, host=host, port=port, loop=loop)).run()
