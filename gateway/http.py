"""One port for WebSocket and plain HTTP.

websockets' HTTP parser accepts only ``GET`` upgrade requests (a ``POST`` fails before any hook
runs), yet the gateway also answers health checks, metrics, the demo page and an OpenAI-style
``POST``. So each accepted connection starts in a ``FrontDoorConnection`` (a websockets
``ServerConnection`` subclass, passed to ``serve(create_connection=...)``) that reads the request
head first:

- a WebSocket upgrade continues through websockets unchanged (handshake, framing, keepalive, limits);
- anything else is handed to a small HTTP/1.1 handler: one request per connection, a
  ``Content-Length`` body, a fixed or chunked (streaming) response.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from websockets.asyncio.server import ServerConnection

__all__ = ["HttpRequest", "HttpResponse", "HttpHandler", "make_front_door", "static_file_response"]

logger = logging.getLogger("voxgate.http")

MAX_HEAD_BYTES = 16_384
_TYPES = {".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8", ".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8", ".json": "application/json", ".svg": "image/svg+xml", ".png": "image/png"}


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes = b""


@dataclass(slots=True)
class HttpResponse:
    status: int = 200
    body: bytes | AsyncIterator[bytes] = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def text(cls, status: int, text: str) -> HttpResponse:
        return cls(status=status, body=(text if text.endswith("\n") else text + "\n").encode())

    @classmethod
    def json(cls, status: int, payload: Any) -> HttpResponse:
        import orjson

        return cls(status=status, body=orjson.dumps(payload), content_type="application/json")


HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]


def _is_websocket_upgrade(head: bytes) -> bool:
    lines = head.split(b"\r\n")
    if not lines or not lines[0].startswith(b"GET "):
        return False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade" and b"websocket" in value.lower():
            return True
    return False


def make_front_door(handler: HttpHandler, *, max_body_bytes: int) -> type[ServerConnection]:
    """A ``ServerConnection`` class that serves plain HTTP with ``handler`` and upgrades with websockets."""
    tasks: set[asyncio.Task[None]] = set()

    class FrontDoorConnection(ServerConnection):
        _sniffing = True
        _head = b""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            # Defer websockets' own connection_made (which starts its handshake task) until the head
            # shows an upgrade.
            self._front_transport = transport

        def data_received(self, data: bytes) -> None:
            if not self._sniffing:
                super().data_received(data)
                return
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > MAX_HEAD_BYTES:
                    self._front_transport.close()
                return
            self._sniffing = False
            transport = self._front_transport
            if _is_websocket_upgrade(self._head[:end]):
                super().connection_made(transport)
                super().data_received(self._head)
                return
            reader = asyncio.StreamReader(limit=MAX_HEAD_BYTES)
            protocol = asyncio.StreamReaderProtocol(reader)
            transport.set_protocol(protocol)
            protocol.connection_made(transport)
            reader.feed_data(self._head)
            writer = asyncio.StreamWriter(transport, protocol, reader, asyncio.get_running_loop())  # type: ignore[arg-type]
            task = asyncio.get_running_loop().create_task(_serve_one(reader, writer, handler, max_body_bytes))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        def eof_received(self) -> bool | None:
            if self._sniffing:
                return None
            return super().eof_received()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._sniffing:
                return
            super().connection_lost(exc)

    return FrontDoorConnection


async def _serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: HttpHandler, max_body: int) -> None:
    try:
        try:
            request = await _read_request(reader, max_body)
        except _BadRequest as exc:
            await _write_response(writer, HttpResponse.text(exc.status, exc.message), head_only=False)
            return
        try:
            response = await handler(request)
        except Exception:
            logger.error("HTTP handler failed for %s %s", request.method, request.path, exc_info=True)
            response = HttpResponse.text(500, "internal error")
        await _write_response(writer, response, head_only=request.method == "HEAD")
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


async def _read_request(reader: asyncio.StreamReader, max_body: int) -> HttpRequest:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _version = lines[0].split(" ", 2)
    except ValueError:
        raise _BadRequest(400, "malformed request line") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadRequest(400, "malformed header line")
        headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise _BadRequest(411, "send a Content-Length body; chunked requests are not accepted")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise _BadRequest(400, "bad Content-Length") from None
    if length < 0 or length > max_body:
        raise _BadRequest(413, f"request body over {max_body} bytes")
    body = await reader.readexactly(length) if length else b""
    parts = urlsplit(target)
    return HttpRequest(method=method.upper(), path=unquote(parts.path), query=parse_qs(parts.query), headers=headers, body=body)


async def _write_response(writer: asyncio.StreamWriter, response: HttpResponse, *, head_only: bool) -> None:
    reason = HTTPStatus(response.status).phrase if response.status in HTTPStatus._value2member_map_ else ""
    headers = {"Content-Type": response.content_type, "Connection": "close", "Cache-Control": "no-store", **response.headers}
    streaming = not isinstance(response.body, bytes)
    if streaming:
        headers["Transfer-Encoding"] = "chunked"
    else:
        headers["Content-Length"] = str(len(response.body))  # type: ignore[arg-type]
    head = f"HTTP/1.1 {response.status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    writer.write(head.encode("latin-1"))
    if head_only:
        await writer.drain()
        return
    if not streaming:
        writer.write(response.body)  # type: ignore[arg-type]
        await writer.drain()
        return
    body: AsyncIterator[bytes] = response.body  # type: ignore[assignment]
    try:
        async for chunk in body:
            if chunk:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
    finally:
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()


def static_file_response(root: Path, path: str) -> HttpResponse | None:
    """The file under ``root`` for a URL path, or None; never escapes ``root``."""
    relative = path.lstrip("/") or "index.html"
    try:
        target = (root / relative).resolve()
        target.relative_to(root.resolve())
    except (ValueError, OSError):
        return None
    if target.is_dir():
        target = target / "index.html"
    if not target.is_file():
        return None
    content_type = _TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    return HttpResponse(status=200, body=target.read_bytes(), content_type=content_type)
