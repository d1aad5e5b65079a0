"""How the client SDK reaches a session: the ``Transport`` interface and its WebSocket transport.

The SDK imports no server code: an in-process session is a transport the server side provides
(``gateway.local.LocalTransport``, via ``Gateway.open_transport``) and the caller injects.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson

from gateway.client.values import VoxgateConnectionError
from gateway.protocol import STREAM_PATH

__all__ = ["STREAM_PATH", "Transport", "TransportClosed", "WebSocketTransport", "open_websocket", "stream_url"]



class TransportClosed(Exception):
    """The transport has no more messages (raised by ``Transport.recv``)."""


class Transport(Protocol):
    """What the client needs from a connection. ``WebSocketTransport`` is the SDK's own; the server
    side provides others (``gateway.local.LocalTransport``: an in-process session), injected with
    ``VoxgateClient(transport_factory=...)``. ``recv()`` raises ``TransportClosed`` at the end;
    ``send()`` raises ``VoxgateConnectionError`` on a closed connection."""

    can_resume: bool

    async def send(self, message: dict[str, Any]) -> None: ...

    async def recv(self) -> str | bytes: ...

    async def close(self) -> None: ...

    def close_info(self) -> tuple[int | None, str]: ...


class WebSocketTransport:
    can_resume = True

    def __init__(self, ws: Any) -> None:
        self._ws = ws

    async def send(self, message: dict[str, Any]) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await self._ws.send(orjson.dumps(message).decode())
        except ConnectionClosed as exc:
            raise VoxgateConnectionError(f"connection closed while sending ({exc})") from exc

    async def recv(self) -> str | bytes:
        from websockets.exceptions import ConnectionClosed

        try:
            return await self._ws.recv()
        except ConnectionClosed:
            raise TransportClosed from None

    async def close(self) -> None:
        await self._ws.close()

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (what a network failure looks like)."""
        self._ws.transport.abort()

    def close_info(self) -> tuple[int | None, str]:
        return self._ws.close_code, self._ws.close_reason or ""


async def open_websocket(
    url: str, *, token: str | None, query: dict[str, Any] | None, open_timeout: float
) -> WebSocketTransport:
    """Connect to ``url`` (plus ``query``) with the bearer ``token``; ``VoxgateConnectionError``
    when the server cannot be reached or refuses."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake, InvalidStatus

    full = url
    if query:
        full += ("&" if urlsplit(full).query else "?") + urlencode(query)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        ws = await connect(full, additional_headers=headers, max_size=2**24, open_timeout=open_timeout)
    except InvalidStatus as exc:
        status = exc.response.status_code
        body = (exc.response.body or b"").decode("utf-8", "replace").strip()
        raise VoxgateConnectionError(f"server refused the session: HTTP {status} {body}".strip()) from exc
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise VoxgateConnectionError(f"cannot connect to {url}: {exc}") from exc
    return WebSocketTransport(ws)


def stream_url(url: str) -> str:
    """``ws://host:port`` (or ``http://``) to ``ws://host:port/v1/stream``; a given path is kept."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"expected a ws:// or wss:// URL, got {url!r}")
    path = parts.path if parts.path not in ("", "/") else STREAM_PATH
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))
