"""In-process sessions on the hub: one small API for every front door inside the server process.

The OpenAI endpoint, ``voxgate say --local``, the vendor adapters and the benchmarks' warm-up open
their sessions here (``Gateway.open_local_session()``) instead of going through the client SDK:
the session is a normal hub session (same G2P, segmenter, scheduler, limits and isolation as one on
``/v1/stream``), carried by a ``LocalConnection`` instead of a socket.

- ``LocalConnection``: the server's side, a WebSocket's surface (``send``, ``close``, ``async for``).
- ``LocalSession``: the caller's side: ``send_json(dict)``, ``events()`` (``str`` JSON or ``bytes``
  frames, as a WebSocket client receives them), and on top ``start()``, ``update(**settings)``,
  ``speak(text) -> LocalSpeech`` (the audio payloads of one context).
- ``LocalTransport``: a ``LocalSession`` as a ``gateway.client.Transport``, so that clients by design
  (danmaku ``--local``, the NPC bridge, tests) run ``VoxgateClient`` in-process
  (``VoxgateClient(transport_factory=gateway.open_transport)``): the SDK itself knows no server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.client.pacing import Pacer
from gateway.client.transport import TransportClosed
from gateway.client.values import VoxgateConnectionError
from gateway.errors import CloseCode
from gateway.protocol import decode_audio_frame, dumps, split_text

__all__ = ["LocalConnection", "LocalSession", "LocalSessionClosed", "LocalSessionError", "LocalSpeech", "LocalTransport"]

#: Text per ``text`` message of ``LocalSession.speak`` (under ``session.max_text_chars_per_message``).
DEFAULT_MAX_MESSAGE_CHARS = 1_000


class LocalSessionError(Exception):
    """The session answered with an ``error`` message (``code`` is one of the protocol's codes)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class LocalSessionClosed(Exception):
    """The session ended (closed by the server, or refused) before the answer came."""

    def __init__(self, close_code: int | None) -> None:
        super().__init__(f"in-process session closed (code {close_code})")
        self.close_code = close_code


class LocalConnection:
    """An in-process session connection with a WebSocket's surface: the server side calls ``send``,
    ``close`` and iterates it for client messages; ``LocalSession`` is the client side."""

    def __init__(self, *, max_queue: int = 256) -> None:
        self.request = None
        self.close_code: int | None = None
        self._to_client: asyncio.Queue[str | bytes | None] = asyncio.Queue(maxsize=max_queue)
        self._to_server: asyncio.Queue[str | bytes | None] = asyncio.Queue()

    # server side: what the gateway calls (as on a websockets ServerConnection)
    async def send(self, message: str | bytes) -> None:
        await self._to_client.put(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.close_code is None:
            self.close_code = code
            self._to_server.put_nowait(None)
            await self._to_client.put(None)

    def __aiter__(self) -> LocalConnection:
        return self

    async def __anext__(self) -> str | bytes:
        item = await self._to_server.get()
        if item is None:
            raise StopAsyncIteration
        return item

    # client side
    async def send_json(self, message: dict[str, Any]) -> None:
        await self._to_server.put(dumps(message))

    def close_input(self) -> None:
        # The client is done: a clean close, so the session ends instead of waiting for a resume.
        if self.close_code is None:
            self.close_code = CloseCode.NORMAL
        self._to_server.put_nowait(None)

    async def events(self) -> AsyncIterator[str | bytes]:
        while (item := await self._to_client.get()) is not None:
            yield item

    async def received(self) -> str | bytes | None:
        """The next message for the client, waiting for it (None: the end, which stays visible to
        the next reader)."""
        item = await self._to_client.get()
        if item is None:
            self._to_client.put_nowait(None)
        return item

    def received_nowait(self) -> str | bytes | None:
        """The next message already queued for the client, without waiting (None: none, or the end)."""
        try:
            item = self._to_client.get_nowait()
        except asyncio.QueueEmpty:
            return None
        if item is None:
            self._to_client.put_nowait(None)  # the end stays visible to the next reader
        return item


class LocalSession:
    """The caller's side of one in-process session (what ``Gateway.open_local_session`` yields).

    Raw: ``await send_json(message)``, ``async for item in events()``. On top, for callers that just
    want speech: ``await start()`` (the ``session.created`` message), ``await update(**settings)``,
    ``speak(text, ...)``. Not for use from two tasks at once.
    """

    def __init__(self, conn: LocalConnection) -> None:
        self.conn = conn
        self.created: dict[str, Any] = {}
        self._ids = itertools.count(1)

    @property
    def close_code(self) -> int | None:
        return self.conn.close_code

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.conn.send_json(message)

    def events(self) -> AsyncIterator[str | bytes]:
        return self.conn.events()

    def close_input(self) -> None:
        self.conn.close_input()

    async def recv(self) -> str | bytes:
        """The next message of the session; ``LocalSessionClosed`` at its end."""
        item = await self.conn.received()
        if item is None:
            raise LocalSessionClosed(self.conn.close_code)
        return item

    async def start(self) -> dict[str, Any]:
        """Wait for ``session.created``; ``LocalSessionError`` when refused (``busy``)."""
        self.created = await self._reply("session.created")
        return self.created

    @property
    def voices(self) -> list[str]:
        return list(self.created.get("voices") or [])

    async def update(self, **settings: Any) -> dict[str, Any]:
        """Send a ``session.update``; returns the effective settings (``LocalSessionError`` if refused)."""
        await self.send_json({"type": "session.update", **settings})
        return dict((await self._reply("session.updated")).get("settings") or {})

    def speak(
        self,
        text: str,
        *,
        voice: str | None = None,
        speed: float | None = None,
        lang: str | None = None,
        max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS,
        max_chars_per_s: float | None = None,
    ) -> LocalSpeech:
        """Speak ``text`` as one context; iterate the result for its audio payloads."""
        options = {k: v for k, v in {"voice": voice, "speed": speed, "lang": lang}.items() if v is not None}
        return LocalSpeech(self, f"local-{next(self._ids)}", text, options, max_message_chars, max_chars_per_s)

    async def _reply(self, kind: str) -> dict[str, Any]:
        """The next message of type ``kind``, skipping others; an ``error`` raises ``LocalSessionError``."""
        while True:
            message = await self._recv_json()
            if message.get("type") == kind:
                return message
            if message.get("type") == "error":
                raise LocalSessionError(str(message.get("code")), str(message.get("message")))

    async def _recv_json(self) -> dict[str, Any]:
        while isinstance(raw := await self.recv(), bytes):
            pass
        message = orjson.loads(raw)
        return message if isinstance(message, dict) else {}


class LocalSpeech:
    """One context of a ``LocalSession``: ``async for payload in speech`` gives its audio frames'
    payloads (in the session's format) until ``context.done``; an ``error`` for it or for the
    session raises ``LocalSessionError``, the session's end ``LocalSessionClosed``. Its text is sent
    from a task of its own (paced below ``max_chars_per_s``) while the audio is read."""

    def __init__(
        self,
        session: LocalSession,
        context_id: str,
        text: str,
        options: dict[str, Any],
        max_message_chars: int,
        max_chars_per_s: float | None,
    ) -> None:
        self.session = session
        self.context_id = context_id
        self.done = False
        self.num_chunks = 0
        self._index: int | None = None
        self._ready: list[bytes] = []
        self._pacer = Pacer(max_chars_per_s) if max_chars_per_s else None
        self._sender = asyncio.get_running_loop().create_task(self._send(text, options, max(1, max_message_chars)))

    async def _send(self, text: str, options: dict[str, Any], limit: int) -> None:
        for part in split_text(text, limit):
            if self._pacer is not None:
                await self._pacer.take(len(part))
            await self.session.send_json({"type": "text", "context_id": self.context_id, "text": part, **options})
        await self.session.send_json({"type": "flush", "context_id": self.context_id, "final": True})

    def __aiter__(self) -> LocalSpeech:
        return self

    async def __anext__(self) -> bytes:
        while not self._ready:
            if self.done:
                raise StopAsyncIteration
            self._take(await self.session.recv())
        self.num_chunks += 1
        return self._ready.pop(0)

    def take_ready(self) -> bool:
        """Take in what the session already sent, without waiting; True when that completes the
        speech (all its audio can then be read without waiting)."""
        while not self.done and (raw := self.session.conn.received_nowait()) is not None:
            self._take(raw)
        return self.done

    def _take(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            header, payload = decode_audio_frame(raw)
            if header.context_index == self._index:
                self._ready.append(payload)
            return
        message = orjson.loads(raw)
        kind = message.get("type")
        mine = message.get("context_id") == self.context_id
        if kind == "context.started" and mine:
            self._index = int(message["index"])
        elif kind in ("context.done", "cancelled") and mine:
            self.done = True
        elif kind == "error" and (mine or message.get("context_id") is None):
            self.done = True
            raise LocalSessionError(str(message.get("code")), str(message.get("message")))

    async def aclose(self) -> None:
        """Stop sending; the context ends with its session (``LocalSession.close_input``)."""
        self._sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, LocalSessionClosed):
            await self._sender


class LocalTransport:
    """A ``LocalSession`` as a ``gateway.client`` transport (what ``Gateway.open_transport`` gives)."""

    can_resume = False

    def __init__(self, session: LocalSession, stack: contextlib.AsyncExitStack) -> None:
        self._session = session
        self._stack = stack

    async def send(self, message: dict[str, Any]) -> None:
        if self._session.close_code is not None:
            raise VoxgateConnectionError(f"in-process session closed (code {self._session.close_code})")
        await self._session.send_json(message)

    async def recv(self) -> str | bytes:
        try:
            return await self._session.recv()
        except LocalSessionClosed:
            raise TransportClosed from None

    async def close(self) -> None:
        await self._stack.aclose()

    def close_info(self) -> tuple[int | None, str]:
        return self._session.close_code, ""
