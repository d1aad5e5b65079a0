"""``VoxgateClient``: one voxgate session, its connection, and the routing of what it receives."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Final

import orjson

from gateway.client.pacing import Pacer
from gateway.client.speech import Speech
from gateway.client.transport import (
    Transport,
    TransportClosed,
    WebSocketTransport,
    open_websocket,
    stream_url,
)
from gateway.client.values import (
    DroppedPiece,
    SpeechDone,
    VoxgateClientError,
    VoxgateConnectionError,
)
from gateway.protocol import SAMPLE_RATE, decode_audio_frame, split_text

__all__ = ["DEFAULT_MAX_MESSAGE_CHARS", "VoxgateClient"]

logger = logging.getLogger("voxgate.client")

#: Text longer than this is sent in several ``text`` messages (the server's per-message limit,
#: ``session.max_text_chars_per_message``, is 4000 by default; the client cannot see it).
DEFAULT_MAX_MESSAGE_CHARS: Final = 1_000
#: ``session.update`` keys, in the order the protocol lists them.
_SETTING_KEYS: Final = ("voice", "speed", "lang", "format", "sample_rate", "frame_ms", "alignment")


class VoxgateClient:
    """One voxgate session over a WebSocket, or over a transport the caller injects
    (``transport_factory``: e.g. ``gateway.server.Gateway.open_transport``, an in-process session).

    Use ``async with VoxgateClient(url, ...) as client:`` (or ``await client.connect()`` and
    ``await client.close()``). After connecting, ``session_id``, ``voices``, ``langs`` and
    ``settings`` (the effective session settings) are set. Session options left as None keep the
    server's defaults; the others are sent in one ``session.update`` when they differ.

    ``max_buffered_chunks`` bounds each speech's unread chunks: the reader then waits for the
    consumer (backpressure reaches the server, which pauses the session and eventually closes a
    client that never reads). Unbounded by default, because one unread speech would hold up the
    others of the client. ``max_chars_per_s`` paces outgoing text below the server's
    ``session.max_chars_per_s`` so that long texts are not refused with ``rate_limited``.

    Not thread-safe: use it from one event loop (``VoxgateSyncClient`` for blocking code).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        voice: str | None = None,
        speed: float | None = None,
        lang: str | None = None,
        format: str = "pcm_s16le",
        sample_rate: int = SAMPLE_RATE,
        frame_ms: int | None = None,
        alignment: bool = False,
        max_buffered_chunks: int | None = None,
        max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS,
        max_chars_per_s: float | None = None,
        open_timeout: float = 10.0,
        transport_factory: Callable[[], Awaitable[Transport]] | None = None,
    ) -> None:
        self.url = stream_url(url) if url else ""
        self.token = token
        self._wanted: dict[str, Any] = {
            "voice": voice,
            "speed": speed,
            "lang": lang,
            "format": format,
            "sample_rate": sample_rate,
            "frame_ms": frame_ms,
            "alignment": alignment,
        }
        self.max_buffered_chunks = max_buffered_chunks
        self.max_message_chars = max(1, max_message_chars)
        self.open_timeout = open_timeout
        self._transport_factory = transport_factory
        self.session_id: str | None = None
        self._resume_token = ""
        self.voices: list[str] = []
        self.langs: list[str] = []
        self.settings: dict[str, Any] = {}
        #: Session-level errors received (also raised from the next ``speak()`` / ``update()``).
        self.errors: list[VoxgateClientError] = []
        #: Session ``seq`` of the last frame received (None before any).
        self.last_seq: int | None = None
        #: Frames missing from the ``seq`` sequence (0 on a healthy session).
        self.seq_gaps = 0
        self._transport: Transport | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connected = False
        self._closed = False
        self._lost: VoxgateConnectionError | None = None
        self._by_id: dict[str, Speech] = {}
        self._by_index: dict[int, Speech] = {}
        self._pending_errors: collections.deque[VoxgateClientError] = collections.deque()
        self._update_waiter: asyncio.Future[dict[str, Any]] | None = None
        self._settings_lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._pacer = Pacer(max_chars_per_s) if max_chars_per_s else None
        self._background: set[asyncio.Task[Any]] = set()

    @classmethod
    def local(cls, gateway: Any, **options: Any) -> VoxgateClient:
        """A client over an in-process session: ``gateway`` is anything with an ``open_transport()``
        coroutine giving a ``Transport`` (a started ``gateway.server.Gateway``: same hub, limits and
        code path as a WebSocket session). Same options as the constructor, without url and token;
        it cannot ``reconnect()``. The SDK imports nothing of the server: the transport is injected."""
        return cls("", transport_factory=gateway.open_transport, **options)

    @property
    def connected(self) -> bool:
        return self._connected

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> VoxgateClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the session: read ``session.created``, apply the options. Raises
        ``VoxgateConnectionError`` (cannot connect, refused) or ``VoxgateClientError`` (``busy``, a
        bad option such as an unknown voice)."""
        if self._connected or self._closed:
            raise RuntimeError("connect() once per client")
        transport = await self._open_transport(None)
        try:
            hello = await self._handshake(transport)
            if hello["type"] != "session.created":
                raise VoxgateConnectionError(f"unexpected first message {hello['type']!r}")
            self._start_session(transport, hello)
            await self._apply_options()
        except BaseException:
            await self._shutdown_transport()
            with contextlib.suppress(Exception):
                await transport.close()
            raise

    async def close(self) -> None:
        """Close the session. Unfinished speeches end as cancelled (reason ``"closed"``)."""
        if self._closed:
            return
        self._closed = True
        self._connected = False
        for speech in list(self._by_id.values()):
            await speech._stop_sender()
            speech._finish_cancelled("closed")
        self._by_id.clear()
        self._by_index.clear()
        await self._shutdown_transport()
        for task in list(self._background):
            task.cancel()

    async def _shutdown_transport(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            await asyncio.wait([reader])
        transport, self._transport = self._transport, None
        if transport is not None:
            with contextlib.suppress(Exception):
                await transport.close()

    async def reconnect(self, *, timeout: float = 5.0) -> bool:
        """Resume this session on a new connection (``?session_id=<id>&resume_token=<t>&last_seq=<n>``).

        Returns True when resumed. Guarantees then: the same ``session_id``; every frame after the
        last one received is replayed, in order, so ``seq`` stays gap-free and speeches that had
        finished on the server get all their audio and their ``done``; speeches still in progress
        when the connection dropped were cancelled by the server and end with ``cancelled``
        (``cancel_reason == "disconnected"``): speak them again. Session settings are kept.

        The server must have noticed the loss first and still hold the frames (``resume_grace_s``,
        ``replay_buffer_frames``); attempts are retried for ``timeout`` seconds. Returns False when
        it could not resume: the client is then on a fresh session (new ``session_id``, options
        re-applied) and every unfinished speech has raised ``VoxgateConnectionError``. Raises
        ``VoxgateConnectionError`` when no connection could be opened at all.
        """
        if self._closed:
            raise RuntimeError("the client is closed")
        if self._transport is not None and not self._transport.can_resume:
            raise VoxgateConnectionError("an in-process session cannot be resumed; open a new client")
        if self._connected:
            await self._drop_connection()
        if self._transport is not None:
            with contextlib.suppress(Exception):
                await self._transport.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.05
        while True:
            query = {
                "session_id": self.session_id or "",
                "resume_token": self._resume_token,
                "last_seq": -1 if self.last_seq is None else self.last_seq,
            }
            try:
                transport = await self._open_transport(query)
            except VoxgateConnectionError:
                if loop.time() + delay >= deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            try:
                hello = await self._handshake(transport, resuming=True)
            except BaseException:
                with contextlib.suppress(Exception):
                    await transport.close()
                raise
            if hello["type"] == "session.resumed":
                logger.info("session %s resumed (%s frames replayed)", self.session_id, hello.get("replayed"))
                self._start_session(transport, hello)
                for speech in list(self._by_id.values()):
                    speech._resumed()
                    # Contexts the server already ended are answered at once; this settles the
                    # ones whose text never reached it. Their last frames come before the answer.
                    self._request_cancel(speech)
                return True
            if loop.time() + delay < deadline:
                # Maybe the server has not noticed that the old connection is gone: try again.
                with contextlib.suppress(Exception):
                    await transport.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            logger.warning("session %s could not be resumed; continuing on a new session", self.session_id)
            error = VoxgateConnectionError(
                f"session {self.session_id} could not be resumed; its unfinished speeches are lost",
                session_id=self.session_id,
                last_seq=self.last_seq,
            )
            for speech in list(self._by_id.values()):
                speech._fail(error)
            self._by_id.clear()
            self._by_index.clear()
            self.last_seq = None
            self._start_session(transport, hello)
            await self._apply_options()
            return False

    async def _drop_connection(self) -> None:
        transport = self._transport
        if isinstance(transport, WebSocketTransport):
            # Not a clean close: the server ends a cleanly closed session instead of keeping it.
            transport.abort()
        if self._reader is not None:
            await asyncio.wait([self._reader])

    # --- speaking -------------------------------------------------------------------------------

    def speak(
        self,
        text: str | AsyncIterable[str] | Iterable[str],
        *,
        context_id: str | None = None,
        voice: str | None = None,
        speed: float | None = None,
        lang: str | None = None,
        priority: int | None = None,
        ttl_ms: int | None = None,
    ) -> Speech:
        """Start speaking ``text`` (a string, or an async or plain iterable of fragments such as LLM
        tokens, streamed as they come) in a new context; returns its ``Speech`` at once, to
        iterate. ``voice``, ``speed``, ``lang``, ``priority`` and ``ttl_ms`` apply to this speech
        only. ``context_id`` defaults to a fresh one; an id still in use raises ``ValueError``.
        Raises a pending session-level ``VoxgateClientError``, or ``VoxgateConnectionError`` when
        not connected."""
        self._check_usable()
        if isinstance(text, str) and not text:
            raise ValueError("text must not be empty")
        if context_id is None:
            context_id = f"s{next(self._ids)}"
            while context_id in self._by_id:
                context_id = f"s{next(self._ids)}"
        elif context_id in self._by_id:
            raise ValueError(f"context_id {context_id!r} is still in use by an unfinished speech")
        options = {"voice": voice, "speed": speed, "lang": lang, "priority": priority, "ttl_ms": ttl_ms}
        speech = Speech(self, context_id, max_buffered_chunks=self.max_buffered_chunks)
        self._by_id[context_id] = speech
        speech._start_sender(text, {k: v for k, v in options.items() if v is not None})
        return speech

    async def update(self, **settings: Any) -> dict[str, Any]:
        """Change session settings (``voice``, ``speed``, ``lang``, ``format``, ``sample_rate``,
        ``frame_ms``, ``alignment``) for speeches started afterwards; returns the effective settings
        once the server confirmed them. Raises ``VoxgateClientError`` if it refused them."""
        unknown = set(settings) - set(_SETTING_KEYS)
        if unknown:
            raise TypeError(f"unknown session settings: {', '.join(sorted(unknown))}")
        self._check_usable()
        async with self._settings_lock:
            waiter = asyncio.get_running_loop().create_future()
            self._update_waiter = waiter
            try:
                await self._send({"type": "session.update", **settings})
                async with asyncio.timeout(self.open_timeout):
                    return await waiter
            finally:
                self._update_waiter = None

    async def cancel_all(self) -> None:
        """Cancel every unfinished speech of this client."""
        await asyncio.gather(*(speech.cancel() for speech in list(self._by_id.values())))

    # --- internals: connection ------------------------------------------------------------------

    async def _open_transport(self, query: dict[str, Any] | None) -> Transport:
        if self._transport_factory is not None:
            return await self._transport_factory()
        return await open_websocket(self.url, token=self.token, query=query, open_timeout=self.open_timeout)

    async def _handshake(self, transport: Transport, *, resuming: bool = False) -> dict[str, Any]:
        """Read until ``session.created`` or ``session.resumed``; returns that message."""
        try:
            async with asyncio.timeout(self.open_timeout):
                while True:
                    raw = await transport.recv()
                    if isinstance(raw, bytes):
                        continue  # cannot happen before the first message
                    message = orjson.loads(raw)
                    kind = message.get("type")
                    if kind in ("session.created", "session.resumed"):
                        return message
                    if kind == "error":
                        if resuming and message.get("code") == "resume_failed":
                            continue  # a fresh session.created follows
                        raise VoxgateClientError(str(message.get("code")), str(message.get("message")))
        except TransportClosed:
            code, reason = transport.close_info()
            raise VoxgateConnectionError(
                f"server closed the connection before the session started (code {code} {reason})".strip(),
                close_code=code,
                close_reason=reason,
            ) from None
        except TimeoutError:
            raise VoxgateConnectionError(f"no session.created within {self.open_timeout:g} s") from None

    def _start_session(self, transport: Transport, hello: dict[str, Any]) -> None:
        if hello["type"] == "session.created":
            self.session_id = hello["session_id"]
            # The secret that resumes this session (the id alone does not); never logged.
            self._resume_token = str(hello.get("resume_token") or "")
            self.voices = list(hello.get("voices") or [])
            self.langs = list(hello.get("langs") or [])
            self.settings = dict(hello.get("settings") or {})
        self._transport = transport
        self._connected = True
        self._lost = None
        self._reader = asyncio.get_running_loop().create_task(self._read_loop(transport), name="voxgate-client-reader")

    async def _apply_options(self) -> None:
        changes = {k: v for k, v in self._wanted.items() if v is not None and self.settings.get(k) != v}
        if changes.get("format", self.settings.get("format")) == "ulaw":
            changes.pop("sample_rate", None)  # ulaw is always 8000 Hz
        if changes:
            await self.update(**changes)

    async def _read_loop(self, transport: Transport) -> None:
        failure: BaseException | None = None
        try:
            while True:
                await self._dispatch(await transport.recv())
        except TransportClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.error("voxgate client: reading from the server failed", exc_info=True)
            failure = exc
            with contextlib.suppress(Exception):
                await transport.close()
        if transport is self._transport:
            self._on_connection_lost(transport, failure)

    def _on_connection_lost(self, transport: Transport, failure: BaseException | None) -> None:
        if self._closed:
            return
        self._connected = False
        code, reason = transport.close_info()
        if transport.can_resume:
            hint = (
                f"; `await client.reconnect()` resumes session {self.session_id} from seq {self.last_seq}"
                f" within the server's resume grace (session.resume_grace_s)"
            )
        else:
            hint = ""
        error = VoxgateConnectionError(
            f"connection to voxgate lost (close code {code}{' ' + reason if reason else ''}){hint}",
            close_code=code,
            close_reason=reason,
            session_id=self.session_id,
            last_seq=self.last_seq,
        )
        if failure is not None:
            error.__cause__ = failure
        self._lost = error
        logger.warning("%s", error)
        for speech in list(self._by_id.values()):
            speech._stop_sender_soon()
            speech._interrupt(error)
        if self._update_waiter is not None and not self._update_waiter.done():
            self._update_waiter.set_exception(error)

    def _check_usable(self) -> None:
        if self._closed:
            raise RuntimeError("the client is closed")
        if self._pending_errors:
            raise self._pending_errors.popleft()
        if not self._connected:
            raise self._lost or VoxgateConnectionError("not connected; call connect() first")

    async def _send(self, message: dict[str, Any]) -> None:
        if not self._connected or self._transport is None:
            raise self._lost or VoxgateConnectionError("not connected")
        await self._transport.send(message)

    async def _pace(self, num_chars: int) -> None:
        if self._pacer is not None:
            await self._pacer.take(num_chars)

    async def _fragments(self, source: str | AsyncIterable[str] | Iterable[str]) -> AsyncIterator[str]:
        if isinstance(source, str):
            for part in split_text(source, self.max_message_chars):
                yield part
            return
        if isinstance(source, AsyncIterable):
            async for fragment in source:
                for part in split_text(_check_fragment(fragment), self.max_message_chars):
                    yield part
            return
        for fragment in source:
            for part in split_text(_check_fragment(fragment), self.max_message_chars):
                yield part

    # --- internals: routing ---------------------------------------------------------------------

    async def _dispatch(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            await self._on_frame(raw)
            return
        message = orjson.loads(raw)
        kind = message.get("type")
        context_id = message.get("context_id")
        speech = self._by_id.get(context_id) if isinstance(context_id, str) else None
        if kind == "context.started":
            if speech is not None:
                speech.index = int(message["index"])
                self._by_index[speech.index] = speech
        elif kind == "alignment":
            if speech is not None and not speech.finished:
                speech._receive_alignment(message)
        elif kind == "context.done":
            if speech is not None:
                speech._finish_done(SpeechDone(float(message.get("audio_ms") or 0.0), message.get("last_seq")))
                self._unregister(speech)
        elif kind == "cancelled":
            if speech is not None:
                speech._receive_cancelled(message)
                self._unregister(speech)
        elif kind == "context.dropped":
            if speech is not None:
                speech.dropped.append(DroppedPiece(str(message.get("reason")), int(message.get("text_chars") or 0)))
        elif kind == "error":
            self._on_error(message, speech)
        elif kind == "session.updated":
            self.settings = dict(message.get("settings") or {})
            if self._update_waiter is not None and not self._update_waiter.done():
                self._update_waiter.set_result(self.settings)
        else:
            logger.debug("ignoring server message %r", kind)

    async def _on_frame(self, data: bytes) -> None:
        header, payload = decode_audio_frame(data)
        expected = 0 if self.last_seq is None else self.last_seq + 1
        if header.seq < expected:
            logger.debug("dropping duplicate frame seq %d (expected %d)", header.seq, expected)
            return
        if header.seq > expected:
            self.seq_gaps += header.seq - expected
            logger.warning("session %s: frames %d..%d missing", self.session_id, expected, header.seq - 1)
        self.last_seq = header.seq
        speech = self._by_index.get(header.context_index)
        if speech is None:
            logger.debug("frame seq %d for context index %d with no speech", header.seq, header.context_index)
            return
        await speech._receive_frame(header.seq, header.sample_offset, header.flags, payload)

    def _on_error(self, message: dict[str, Any], speech: Speech | None) -> None:
        context_id = message.get("context_id")
        error = VoxgateClientError(str(message.get("code")), str(message.get("message")), context_id)
        if speech is not None:
            if not speech.finished:
                speech._stop_sender_soon()
                speech._fail(error)
                # The context may live on server-side (a refused fragment does not end it): cancel it
                # so that it stops using the engine; the answer unregisters the speech.
                self._request_cancel(speech)
            return
        if context_id is not None:
            logger.info("error for unknown context %r: %s", context_id, error)
            return
        if self._update_waiter is not None and not self._update_waiter.done():
            self._update_waiter.set_exception(error)
            return
        logger.warning("session %s: %s", self.session_id, error)
        self.errors.append(error)
        self._pending_errors.append(error)

    def _request_cancel(self, speech: Speech) -> None:
        async def send() -> None:
            try:
                await self._send({"type": "cancel", "context_id": speech.context_id})
            except VoxgateConnectionError:
                pass

        task = asyncio.get_running_loop().create_task(send())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _unregister(self, speech: Speech) -> None:
        if self._by_id.get(speech.context_id) is speech:
            del self._by_id[speech.context_id]
        if speech.index is not None and self._by_index.get(speech.index) is speech:
            del self._by_index[speech.index]


def _check_fragment(fragment: Any) -> str:
    if not isinstance(fragment, str):
        raise TypeError(f"speak() fragments must be str, not {type(fragment).__name__}")
    return fragment
