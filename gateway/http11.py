"""Plain HTTP/1.1 on the front door, parsed and framed by h11, with a deadline on every wait.

Two parts:

- ``parse_head(raw)`` (sans-I/O): the request head at the start of the bytes a connection sent so
  far, ``None`` while it is incomplete, or ``BadHead(status, message)``. h11 checks the request
  line, header syntax, ``Content-Length`` and ``Host``; on top of it this refuses what h11
  tolerates but a strict server should not: bare-LF line ends, heads over ``MAX_HEAD_BYTES``
  (431, also when the whole head came in one read), HTTP versions other than 1.0/1.1 (505), a
  repeated header that must be single (``Origin: evil`` then ``Origin: good`` is refused, never
  "last wins"), and ``Transfer-Encoding`` together with ``Content-Length``.
- ``HttpExchange``: the asyncio protocol that takes the connection over once a plain-HTTP head is
  parsed: it reads the body (``max_body_bytes``, ``body_timeout_s``), calls the handler, and writes
  the response through h11 with ``write_timeout_s`` on every write, so a client that stops reading
  is cut off and the response body is closed (for a speech stream: its session and contexts are
  cancelled). One request per connection; ``Connection: close`` on every answer.

Not here: routing and auth (the handler), which connection goes where, connection caps and
head deadlines (``gateway.http.FrontDoor``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import h11
import orjson

from gateway.logsafe import quote

__all__ = [
    "HttpRequest",
    "HttpResponse",
    "HttpHandler",
    "MAX_HEAD_BYTES",
    "SINGLE_HEADERS",
    "BadHead",
    "RequestHead",
    "ExchangeLimits",
    "HttpExchange",
    "parse_head",
    "pin_send_buffer",
    "simple_response",
]

logger = logging.getLogger("voxgate.http")

MAX_HEAD_BYTES = 16_384
#: Headers a request may carry at most once: with two, which Origin or which token counts depends
#: on who reads them (proxies and frameworks disagree), so a repeat is refused outright.
SINGLE_HEADERS = frozenset(
    {
        b"host", b"content-length", b"content-type", b"transfer-encoding", b"upgrade", b"origin",
        b"authorization", b"xi-api-key", b"sec-websocket-key", b"sec-websocket-version",
    }
)  # fmt: skip
_BARE_LF = re.compile(rb"(?<!\r)\n")
#: Bytes a client may keep sending after its request is read before we stop reading it.
_MAX_TRAILING_BYTES = 65_536
#: The kernel send buffer of an HTTP or WebSocket connection. Left to autotuning it grows to
#: tcp_wmem's maximum (4 MiB by default: 90 s of 24 kHz speech), so a client that stops reading
#: would not block a write, and meet the write deadline (HTTP) or fill the session's outbox and
#: pause it (WebSocket), for minutes. Linux doubles it: 128 KiB, ~2.7 s of 24 kHz 16-bit speech.
SEND_BUFFER_BYTES = 65_536


def pin_send_buffer(transport: asyncio.BaseTransport) -> None:
    """Pin the connection's kernel send buffer to ``SEND_BUFFER_BYTES`` (best effort).

    Left to autotuning, the kernel absorbs megabytes a client does not read, so our own bounded
    buffers (HTTP write deadlines, a WebSocket session's outbox and its pause) never see it fill.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    #: Percent-decoded: may hold any character, so quote it (``logsafe.quote``) in a log line.
    path: str
    query: dict[str, list[str]]
    #: Lower-case names; a repeated list header is joined with ", " (single ones are refused).
    headers: dict[str, str]
    body: bytes = b""


@dataclass(slots=True)
class HttpResponse:
    status: int = 200
    #: Bytes (sent with a Content-Length) or an async iterator (streamed; ``aclose()``d at the end).
    body: bytes | AsyncIterator[bytes] = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def text(cls, status: int, text: str) -> HttpResponse:
        return cls(status=status, body=(text if text.endswith("\n") else text + "\n").encode())

    @classmethod
    def json(cls, status: int, payload: Any) -> HttpResponse:
        return cls(status=status, body=orjson.dumps(payload), content_type="application/json")


HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class BadHead(Exception):
    """A request the server refuses before any handler sees it; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A parsed request head. ``conn`` is the h11 connection that parsed it and holds any body
    bytes that came with the head; ``size`` is the head's length in bytes."""

    conn: h11.Connection
    request: h11.Request
    size: int

    @property
    def is_websocket_upgrade(self) -> bool:
        if self.request.method != b"GET":
            return False
        return any(name == b"upgrade" and b"websocket" in value.lower() for name, value in self.request.headers)


def parse_head(raw: bytes) -> RequestHead | None:
    """The request head at the start of ``raw``; None while incomplete. Raises ``BadHead``."""
    end = raw.find(b"\r\n\r\n")
    head = raw if end < 0 else raw[: end + 2]
    if _BARE_LF.search(head):
        raise BadHead(400, "request head lines must end with CRLF")
    if (end < 0 and len(raw) > MAX_HEAD_BYTES) or end + 4 > MAX_HEAD_BYTES:
        raise BadHead(431, f"request head over {MAX_HEAD_BYTES} bytes")
    if end < 0:
        return None
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    conn.receive_data(raw)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise BadHead(exc.error_status_hint, "malformed request head") from None
    if event is h11.NEED_DATA:
        return None
    if not isinstance(event, h11.Request):  # pragma: no cover - h11 yields a Request first
        raise BadHead(400, "malformed request head")
    if event.http_version not in (b"1.0", b"1.1"):
        raise BadHead(505, "only HTTP/1.0 and HTTP/1.1 are served")
    names = [line.partition(b":")[0].lower() for line in head.split(b"\r\n")[1:] if line]
    for name in SINGLE_HEADERS:
        if names.count(name) > 1:
            raise BadHead(400, f"more than one {name.decode()} header")
    if b"transfer-encoding" in names and b"content-length" in names:
        raise BadHead(400, "Transfer-Encoding and Content-Length together")
    return RequestHead(conn=conn, request=event, size=end + 4)


def simple_response(status: int, text: str, *, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete small ``Connection: close`` answer, for refusals sent before any exchange exists."""
    body = (text if text.endswith("\n") else text + "\n").encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))), ("Connection", "close"), *extra]
    lines = [f"HTTP/1.1 {status} {_phrase(status)}"] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


@dataclass(frozen=True, slots=True)
class ExchangeLimits:
    max_body_bytes: int = 262_144
    #: The whole body must arrive within this many seconds of the head (408 otherwise).
    body_timeout_s: float = 30.0
    #: A write that cannot leave our buffer within this many seconds ends the connection.
    write_timeout_s: float = 15.0


class _ClientGone(Exception):
    pass


class _WriteTimedOut(Exception):
    pass


class HttpExchange(asyncio.Protocol):
    """One plain-HTTP request and its answer, on a connection whose head the front door parsed.

    The front door calls ``transport.set_protocol(exchange)``, ``exchange.connection_made(transport)``
    and then runs ``await exchange.run()`` as a task; ``run()`` always ends with the connection closed
    and a streamed response body closed (``aclose()``), whatever the client did.
    ``on_cut_off(seconds)`` is called when a client is cut off for not reading.
    """

    def __init__(
        self,
        head: RequestHead,
        handler: HttpHandler,
        limits: ExchangeLimits,
        *,
        on_cut_off: Callable[[float], None] | None = None,
    ) -> None:
        self._head = head
        self._conn = head.conn
        self._handler = handler
        self._limits = limits
        self._on_cut_off = on_cut_off
        self._transport: asyncio.Transport | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._request_read = False
        self._trailing_bytes = 0
        self.lost = False

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport subclasses, so no isinstance).
        self._transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=65_536)  # type: ignore[attr-defined]
        pin_send_buffer(transport)

    def data_received(self, data: bytes) -> None:
        if self._request_read:
            # One request per connection: anything after it is not read, only bounded.
            self._trailing_bytes += len(data)
            if self._trailing_bytes > _MAX_TRAILING_BYTES and self._transport is not None:
                self._transport.pause_reading()
            return
        self._conn.receive_data(data)
        self._readable.set()

    def eof_received(self) -> bool:
        if not self._request_read:
            self._conn.receive_data(b"")
            self._readable.set()
        return True  # keep our side open: a client may half-close after its request

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._readable.set()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # --- the exchange ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Read the request, answer it, close the connection."""
        assert self._transport is not None
        response: HttpResponse | None = None
        try:
            try:
                request = await self._read_request()
            except BadHead as exc:
                await self._send(HttpResponse.text(exc.status, exc.message), head_only=False)
                return
            response = await self._call(request)
            await self._send(response, head_only=request.method == "HEAD")
        except _ClientGone:
            pass
        except _WriteTimedOut:
            if self._on_cut_off is not None:
                self._on_cut_off(self._limits.write_timeout_s)
            self._transport.abort()
        except h11.LocalProtocolError:
            logger.error("could not frame an HTTP answer", exc_info=True)
            self._transport.abort()
        finally:
            if response is not None and not isinstance(response.body, bytes):
                aclose = getattr(response.body, "aclose", None)
                if aclose is not None:
                    await aclose()
            self._transport.close()

    async def _read_request(self) -> HttpRequest:
        event = self._head.request
        max_body = self._limits.max_body_bytes
        declared = dict(event.headers).get(b"content-length")
        if declared is not None and int(declared) > max_body:
            raise BadHead(413, f"request body over {max_body} bytes")
        if self._conn.they_are_waiting_for_100_continue:
            await self._write(self._conn.send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")) or b"")
        body = bytearray()
        try:
            async with asyncio.timeout(self._limits.body_timeout_s):
                while True:
                    try:
                        part = self._conn.next_event()
                    except h11.RemoteProtocolError:
                        raise BadHead(400, "malformed request body") from None
                    if part is h11.NEED_DATA:
                        if self.lost:
                            raise _ClientGone
                        self._readable.clear()
                        await self._readable.wait()
                    elif isinstance(part, h11.Data):
                        body += part.data
                        if len(body) > max_body:
                            raise BadHead(413, f"request body over {max_body} bytes")
                    elif isinstance(part, h11.EndOfMessage):
                        break
                    else:  # ConnectionClosed: the client went away mid-body
                        raise _ClientGone
        except TimeoutError:
            raise BadHead(408, f"request body not received within {self._limits.body_timeout_s:g} s") from None
        finally:
            self._request_read = True
        parts = urlsplit(event.target.decode("ascii"))
        headers: dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            # A header that may appear more than once is a list: RFC 9110 5.3 joins them with commas.
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        return HttpRequest(
            method=event.method.decode("ascii").upper(),
            path=unquote(parts.path),
            query=parse_qs(parts.query),
            headers=headers,
            body=bytes(body),
        )

    async def _call(self, request: HttpRequest) -> HttpResponse:
        try:
            return await self._handler(request)
        except Exception:
            logger.error("HTTP handler failed for %s %s", request.method, quote(request.path), exc_info=True)
            return HttpResponse.text(500, "internal error")

    async def _send(self, response: HttpResponse, *, head_only: bool) -> None:
        headers = [
            ("Content-Type", response.content_type),
            ("Connection", "close"),
            ("Cache-Control", "no-store"),
            *response.headers.items(),
        ]
        body = response.body
        if isinstance(body, bytes):
            headers.append(("Content-Length", str(len(body))))
        # Without a Content-Length h11 frames the body itself: chunked for HTTP/1.1 clients,
        # ended by closing the connection for HTTP/1.0 ones.
        start = h11.Response(status_code=response.status, headers=headers, reason=_phrase(response.status).encode())
        await self._write(self._conn.send(start))
        if not head_only:
            if isinstance(body, bytes):
                if body:
                    await self._write(self._conn.send(h11.Data(data=body)))
            else:
                stream: AsyncIterator[bytes] = body
                async for chunk in stream:
                    if chunk:
                        await self._write(self._conn.send(h11.Data(data=chunk)))
        await self._write(self._conn.send(h11.EndOfMessage()))

    async def _write(self, data: bytes | None) -> None:
        """Hand ``data`` to the transport, then wait (at most ``write_timeout_s``) until its buffer is
        below the high-water mark again: a client that does not read cannot pin this task."""
        assert self._transport is not None
        if self.lost:
            raise _ClientGone
        if data:
            self._transport.write(data)
        if not self._writable.is_set():
            try:
                async with asyncio.timeout(self._limits.write_timeout_s):
                    await self._writable.wait()
            except TimeoutError:
                raise _WriteTimedOut from None
        if self.lost:
            raise _ClientGone

