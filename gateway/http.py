"""One port for WebSocket and plain HTTP, and admission for every connection until its head is read.

websockets' HTTP parser accepts only ``GET`` upgrade requests (a ``POST`` fails before any hook
runs), yet the gateway also answers health checks, metrics, the demo page and an OpenAI-style
``POST``. So each accepted connection starts in a front-door connection (a websockets
``ServerConnection`` subclass, passed to ``serve(create_connection=...)``) that reads the request
head first and has ``parse_head`` (h11, strict) judge it:

- a malformed head is answered 400/431/505 and closed;
- a WebSocket upgrade continues through websockets unchanged (handshake, framing, keepalive, limits);
- anything else is handed to an ``HttpExchange`` (``gateway.http11``): one request per connection,
  body and writes under deadlines.

``FrontDoor`` owns the limits that keep one client from starving the others:

- a deadline for the request head (``server.http_head_timeout_s``): idle or slowloris connections
  are closed, 408 if they sent part of a head;
- a cap on connections still sending their head (``server.max_pending_heads``): past it the
  oldest is closed, so a flood of idle sockets can never use up the process's file descriptors
  and a new ``/healthz`` or WebSocket connection still gets in;
- a cap on plain-HTTP exchanges in progress (``server.max_http_connections``): past it, 503 (as
  uvicorn's ``limit_concurrency``).

Each kind of refusal is logged once per flood (``FloodLog``), not once per socket.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from websockets.asyncio.server import ServerConnection

from gateway.http11 import (
    BadHead,
    ExchangeLimits,
    HttpExchange,
    HttpHandler,
    HttpRequest,
    HttpResponse,
    RequestHead,
    parse_head,
    pin_send_buffer,
    simple_response,
)

if TYPE_CHECKING:
    from gateway.config import ServerConfig

__all__ = [
    "HttpRequest",
    "HttpResponse",
    "HttpHandler",
    "FrontDoor",
    "FrontDoorLimits",
    "FloodLog",
    "static_file_response",
]

logger = logging.getLogger("voxgate.http")

_TYPES = {".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8", ".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8", ".json": "application/json", ".svg": "image/svg+xml", ".png": "image/png"}
#: Longest file name most file systems allow; a longer URL segment can name no file.
MAX_SEGMENT_CHARS = 255


@dataclass(frozen=True, slots=True)
class FrontDoorLimits:
    """The front door's limits; ``from_config`` takes them from ``[server]``."""

    head_timeout_s: float = 10.0
    max_pending_heads: int = 256
    max_http_connections: int = 64
    exchange: ExchangeLimits = ExchangeLimits()

    @classmethod
    def from_config(cls, server: ServerConfig) -> FrontDoorLimits:
        return cls(
            head_timeout_s=server.http_head_timeout_s,
            max_pending_heads=server.max_pending_heads,
            max_http_connections=server.max_http_connections,
            exchange=ExchangeLimits(
                max_body_bytes=server.max_http_body_bytes,
                body_timeout_s=server.http_body_timeout_s,
                write_timeout_s=server.http_write_timeout_s,
            ),
        )


class FloodLog:
    """One warning per kind of event per ``interval_s`` instead of one per socket.

    The first event of a kind is logged at once; later ones within the interval are counted, and
    the count is logged when the interval ends (one more line), so a flood of 10,000 sockets costs
    two log lines a minute, and a single event is still seen immediately.
    """

    def __init__(self, log: logging.Logger, *, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._messages: dict[str, str] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def note(self, kind: str, message: str) -> None:
        """Record one event; ``message`` is fixed text (nothing client-controlled)."""
        now = self._clock()
        last = self._last.get(kind)
        if last is None or now - last >= self._interval_s:
            self._last[kind] = now
            self._log.warning("%s", message)
            return
        self._messages[kind] = message
        self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
        if kind not in self._timers:
            delay = max(0.0, last + self._interval_s - now)
            self._timers[kind] = asyncio.get_running_loop().call_later(delay, self.flush, kind)

    def flush(self, kind: str) -> None:
        """Log the events of ``kind`` counted since its last line (the interval's timer does this)."""
        self._timers.pop(kind, None)
        count = self._suppressed.pop(kind, 0)
        if count:
            self._last[kind] = self._clock()
            self._log.warning("%s (%d more times in the last %g s)", self._messages[kind], count, self._interval_s)

    def close(self) -> None:
        for kind in list(self._timers):
            self._timers.pop(kind).cancel()
            self.flush(kind)


class FrontDoor:
    """Admission for every accepted connection until its request head is read, and the count of
    plain-HTTP exchanges in progress.

    Use ``serve(..., create_connection=door.connection_class)``; ``close()`` at shutdown closes the
    connections still sending a head. Not its job: routing (``handler``), WebSocket sessions.
    """

    def __init__(self, handler: HttpHandler, limits: FrontDoorLimits) -> None:
        self.handler = handler
        self.limits = limits
        self.flood = FloodLog(logger)
        #: Connections still sending their head, oldest first, with their deadline timers.
        self._pending: dict[_FrontDoorConnection, asyncio.TimerHandle] = {}
        self._exchanges: set[asyncio.Task[None]] = set()
        self.connection_class: type[ServerConnection] = type("FrontDoorConnection", (_FrontDoorConnection,), {"door": self})
        _warn_if_few_file_descriptors(limits)

    @property
    def num_pending_heads(self) -> int:
        return len(self._pending)

    @property
    def num_exchanges(self) -> int:
        return len(self._exchanges)

    def admit(self, connection: _FrontDoorConnection) -> None:
        """A new connection: start its head deadline, closing the oldest pending one past the cap."""
        if len(self._pending) >= self.limits.max_pending_heads:
            oldest = next(iter(self._pending))
            self.flood.note(
                "evicted",
                f"{self.limits.max_pending_heads} connections are sending no complete request head: closing the oldest",
            )
            self._expire(oldest)
        loop = asyncio.get_running_loop()
        self._pending[connection] = loop.call_later(self.limits.head_timeout_s, self._on_head_timeout, connection)

    def release(self, connection: _FrontDoorConnection) -> None:
        """The connection's head is complete, refused or gone: stop its deadline. Idempotent."""
        timer = self._pending.pop(connection, None)
        if timer is not None:
            timer.cancel()

    def _on_head_timeout(self, connection: _FrontDoorConnection) -> None:
        if connection in self._pending:
            self.flood.note(
                "head_timeout",
                f"closed a connection that sent no complete request head within {self.limits.head_timeout_s:g} s",
            )
            self._expire(connection)

    def _expire(self, connection: _FrontDoorConnection) -> None:
        self.release(connection)
        connection.abandon()

    def refuse(self, transport: asyncio.Transport, status: int, message: str) -> None:
        """Answer a refused request with a small fixed response, then close."""
        if not transport.is_closing():
            transport.write(simple_response(status, message))
        transport.close()

    def serve_http(self, head: RequestHead, transport: asyncio.Transport) -> None:
        """Hand the connection to an ``HttpExchange`` (or answer 503 past the cap)."""
        if len(self._exchanges) >= self.limits.max_http_connections:
            self.flood.note("http_busy", f"{self.limits.max_http_connections} HTTP requests in progress: answering 503")
            self.refuse(transport, 503, "too many HTTP connections; try again later")
            return
        exchange = HttpExchange(head, self.handler, self.limits.exchange, on_cut_off=self._on_cut_off)
        transport.set_protocol(exchange)
        exchange.connection_made(transport)
        task = asyncio.get_running_loop().create_task(exchange.run(), name="voxgate-http")
        self._exchanges.add(task)
        task.add_done_callback(self._exchanges.discard)

    def _on_cut_off(self, seconds: float) -> None:
        self.flood.note("write_timeout", f"cut off an HTTP client that read nothing for {seconds:g} s")

    def close(self) -> None:
        """Close every connection still sending its head; exchanges in progress finish on their own
        (each is bounded by its deadlines)."""
        for connection in list(self._pending):
            self._expire(connection)
        self.flood.close()


def _warn_if_few_file_descriptors(limits: FrontDoorLimits) -> None:
    """The caps protect /healthz and WebSocket clients only if they fit in the process's file
    descriptors with room to spare: say so at start when they do not."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # pragma: no cover - not on Unix
        return
    needed = limits.max_pending_heads + limits.max_http_connections + 128
    if soft != resource.RLIM_INFINITY and soft < needed:
        logger.warning(
            "file descriptor limit %d is below server.max_pending_heads + server.max_http_connections + 128 = %d: "
            "raise it (ulimit -n) or lower those caps, or a flood of idle sockets can still starve new clients",
            soft,
            needed,
        )


class _FrontDoorConnection(ServerConnection):
    """Reads the request head, then hands the connection on (see the module docstring).

    While the door owns it, websockets' own ``connection_made`` (which starts its handshake task)
    has not run; it runs only for an upgrade.
    """

    door: ClassVar[FrontDoor]
    _at_door = True
    _raw = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport subclasses, so no isinstance).
        self._front_transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.door.admit(self)

    def data_received(self, data: bytes) -> None:
        if not self._at_door:
            super().data_received(data)
            return
        self._raw += data
        try:
            head = parse_head(self._raw)
        except BadHead as exc:
            self.door.release(self)
            self.door.refuse(self._front_transport, exc.status, exc.message)
            return
        if head is None:
            return
        self.door.release(self)
        transport = self._front_transport
        if head.is_websocket_upgrade:
            self._at_door = False
            # A session's outbox, its pause and the slow-consumer close must see a client that does
            # not read: not megabytes of it absorbed by the kernel (``http11.SEND_BUFFER_BYTES``).
            pin_send_buffer(transport)
            super().connection_made(transport)
            super().data_received(self._raw)
        else:
            self.door.serve_http(head, transport)
        self._raw = b""

    def abandon(self) -> None:
        """Close a connection that sent no complete head in time: 408 if it sent part of one."""
        transport = self._front_transport
        if self._raw and not transport.is_closing():
            transport.write(simple_response(408, "request head not received in time"))
        transport.close()

    def eof_received(self) -> bool | None:
        if self._at_door:
            return None
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._at_door:
            self.door.release(self)
            return
        super().connection_lost(exc)


def static_file_response(root: Path, path: str) -> HttpResponse | None:
    """The file under ``root`` for a URL path, or None; never escapes ``root``, never raises for a
    strange path (over-long segments, NUL, control characters: None)."""
    relative = path.lstrip("/") or "index.html"
    segments = relative.split("/")
    if any(len(s) > MAX_SEGMENT_CHARS or any(ord(c) < 0x20 or c == "\x7f" for c in s) for s in segments):
        return None
    try:
        target = (root / relative).resolve()
        target.relative_to(root.resolve())
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            return None
        body = target.read_bytes()
    except (ValueError, OSError):
        return None
    content_type = _TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    return HttpResponse(status=200, body=body, content_type=content_type)
