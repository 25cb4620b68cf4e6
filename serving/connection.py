"""The connection layer under the endpoint: uvicorn on httptools, with deadlines on reading a request.

uvicorn closes an idle keep-alive connection after `timeout_keep_alive`, and answers 503 past
`limit_concurrency`, but it sets no deadline on a request being read: a client that opens a connection and
sends nothing, half a header, or the headers of a POST and then nothing, holds its connection (and, in the
last case, a handler waiting on the body) forever. `timed_protocol` adds two deadlines, measured from the
request's first byte (or the connection's opening) to the end of its headers, and from there to the end of
its body. Past either, the client gets `408 Request Timeout` (when no answer has started) and the
connection is closed; a handler waiting on the body sees the client gone. A timer per request costs one
`call_later` and one `cancel` on the event loop.
"""

from __future__ import annotations

import asyncio
import http
from collections.abc import Callable
from typing import Any

TIMEOUT_BODY = b'{"error": {"code": "request_timeout", "message": "the request did not arrive in time"}}'
TIMEOUT_RESPONSE = (
    f"HTTP/1.1 {http.HTTPStatus.REQUEST_TIMEOUT.value} Request Timeout\r\ncontent-type: application/json\r\n"
    f"content-length: {len(TIMEOUT_BODY)}\r\nconnection: close\r\n\r\n"
).encode() + TIMEOUT_BODY


def timed_protocol(header_timeout: float, body_timeout: float,
                   on_answer: Callable[[int, str], None] = lambda status, code: None) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with the two deadlines. `on_answer(status, code)` is told of every
    408 sent here and every 503 uvicorn sends for being over its connection limit (for /metrics)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class TimedHttpToolsProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._timed_out)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _timed_out(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                if cycle.response_started:  # a handler already answers (before reading the body): just close
                    self.transport.close()
                    return
                cycle.disconnected = True  # the handler's receive() sees the client gone; its send() is dropped
                cycle.message_event.set()
            on_answer(408, "request_timeout")
            self.transport.write(TIMEOUT_RESPONSE)
            self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(header_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)  # cancels uvicorn's keep-alive timer
            idle = self.cycle is None or self.cycle.response_complete
            if self._deadline is None and idle and not self.transport.is_closing():
                self._arm(header_timeout)  # bytes that begin no request (blank lines) get no more time than headers

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm(header_timeout)

        def on_headers_complete(self) -> None:
            limit = self.limit_concurrency
            if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
                on_answer(503, "over_capacity")  # uvicorn answers it in super(), by the same test
            super().on_headers_complete()
            self._arm(body_timeout)

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

    return TimedHttpToolsProtocol


def server_config(app: Any, *, host: str = "127.0.0.1", port: int = 8000, loop: str = "auto", log_level: str = "warning") -> Any:
    """The uvicorn.Config `recsys serve` runs (and the tests serve with) for an app of `serving.app.create_app`:
    httptools with the deadlines of the app's limits, their keep-alive timeout and connection cap, and the
    connection layer's answers counted in the app's metrics."""
    import uvicorn

    limits, metrics = app.state.limits, app.state.metrics
    return uvicorn.Config(
        app, host=host, port=port, loop=loop, log_level=log_level, access_log=False,
        http=timed_protocol(limits.header_timeout, limits.body_timeout, lambda status, code: metrics.answered("connection", status, code)),
        timeout_keep_alive=limits.keep_alive_timeout,  # type: ignore[arg-type] # a float works (loop.call_later)
        limit_concurrency=limits.max_connections, timeout_graceful_shutdown=10,
    )
