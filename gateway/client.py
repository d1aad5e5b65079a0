"""Python client SDK for voxgate protocol v1 (``docs/protocol.md``).

Async, one session per client, many utterances multiplexed on it::

    async with VoxgateClient("ws://127.0.0.1:8765/v1/stream", voice="af_heart") as client:
        speech = client.speak("Hello there! How are you?")
        async for chunk in speech:          # AudioChunk: float32 samples, seq, offsets, flags
            play(chunk.samples)
        print(speech.done, speech.words)   # SpeechDone(audio_ms, last_seq), word timings

``speak()`` also takes an async (or plain) iterable of text fragments, e.g. tokens from an LLM;
several ``speak()`` calls may run at once on one client: one reader task routes frames by context
index and messages by ``context_id`` to their ``Speech``. ``await speech.wait_started()`` returns as
soon as the first audio frame arrived (for a game NPC that must not block on the whole line);
``await speech.cancel()`` barges in.

Errors: the server's ``error`` messages become ``VoxgateClientError(code, message, context_id)``,
raised from the ``Speech`` they concern, or, for session-level ones, from the client's next
``speak()`` / ``update()`` (they are also kept in ``client.errors``). A lost connection raises
``VoxgateConnectionError`` from every unfinished ``Speech``; ``await client.reconnect()`` resumes the
same session (see its docstring for what that guarantees).

Also here: ``VoxgateClient.local(gateway)`` runs the same client over an in-process session
(``Gateway.open_local_session``). Blocking code (``VoxgateSyncClient``) and the helpers behind
``voxgate voices`` and ``voxgate say`` live in ``gateway.client_sync``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import urlencode, urlsplit, urlunsplit

import numpy as np
import orjson

from gateway.audio import decode_samples
from gateway.protocol import FrameFlags, decode_audio_frame

if TYPE_CHECKING:
    from gateway.server import Gateway, LocalConnection

__all__ = [
    "AudioChunk",
    "SpeechDone",
    "WordTiming",
    "PhonemeTiming",
    "DroppedPiece",
    "Speech",
    "VoxgateClient",
    "VoxgateClientError",
    "VoxgateConnectionError",
]

logger = logging.getLogger("voxgate.client")

STREAM_PATH: Final = "/v1/stream"
#: Text longer than this is sent in several ``text`` messages (the server's per-message limit,
#: ``session.max_text_chars_per_message``, is 4000 by default; the client cannot see it).
DEFAULT_MAX_MESSAGE_CHARS: Final = 1_000
#: ``session.update`` keys, in the order the protocol lists them.
_SETTING_KEYS: Final = ("voice", "speed", "lang", "format", "sample_rate", "frame_ms", "alignment")


# --- errors -----------------------------------------------------------------------------------


class VoxgateClientError(Exception):
    """The server answered with an ``error`` message (``code`` is one of the protocol's codes).

    Raised from the ``Speech`` named by ``context_id``, or from the client (``connect()``,
    ``speak()``, ``update()``) when the error concerns the session. The session goes on unless the
    server also closed it (``busy``, ``slow_consumer``).
    """

    def __init__(self, code: str, message: str, context_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}" + (f" (context {context_id!r})" if context_id else ""))
        self.code = code
        self.message = message
        self.context_id = context_id


class VoxgateConnectionError(ConnectionError):
    """The connection to the server could not be opened, or was lost.

    After a loss, ``await client.reconnect()`` resumes the session within the server's
    ``session.resume_grace_s`` (30 s by default): frames after ``last_seq`` are replayed.
    """

    def __init__(
        self,
        message: str,
        *,
        close_code: int | None = None,
        close_reason: str = "",
        session_id: str | None = None,
        last_seq: int | None = None,
    ) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.close_reason = close_reason
        self.session_id = session_id
        self.last_seq = last_seq


class _TransportClosed(Exception):
    """Internal: the transport has no more messages."""


# --- values -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class AudioChunk:
    """One audio frame of a speech, decoded.

    ``samples`` are float32 in [-1, 1] at ``sample_rate``; ``data`` is the frame's payload as it
    came (in ``format``), e.g. to pass 16-bit PCM on without converting it twice.
    """

    samples: np.ndarray
    sample_rate: int
    seq: int
    sample_offset: int
    first: bool
    last: bool
    context_id: str
    data: bytes = field(default=b"", repr=False)
    format: str = "pcm_s16le"

    @property
    def duration_ms(self) -> float:
        return len(self.samples) * 1000.0 / self.sample_rate


@dataclass(frozen=True, slots=True)
class SpeechDone:
    """From ``context.done``: the speech ended normally."""

    audio_ms: float
    #: Session ``seq`` of its last frame; None if it produced no audio.
    last_seq: int | None


@dataclass(frozen=True, slots=True)
class WordTiming:
    word: str
    start_ms: float
    end_ms: float


@dataclass(frozen=True, slots=True)
class PhonemeTiming:
    phoneme: str
    start_ms: float
    end_ms: float


@dataclass(frozen=True, slots=True)
class DroppedPiece:
    """From ``context.dropped``: a piece of the text was not spoken (``ttl_ms`` passed)."""

    reason: str
    text_chars: int


@dataclass(frozen=True, slots=True)
class _Raise:
    """A queued exception for the consumer; ``terminal`` ends the iteration after it."""

    error: BaseException
    terminal: bool


_END: Final = object()


# --- transports -------------------------------------------------------------------------------


class _Transport(Protocol):
    """What the client needs from a connection: a WebSocket or an in-process ``LocalConnection``."""

    can_resume: bool

    async def send(self, message: dict[str, Any]) -> None: ...

    async def recv(self) -> str | bytes: ...

    async def close(self) -> None: ...

    def close_info(self) -> tuple[int | None, str]: ...


class _WebSocketTransport:
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
            raise _TransportClosed from None

    async def close(self) -> None:
        await self._ws.close()

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (what a network failure looks like)."""
        self._ws.transport.abort()

    def close_info(self) -> tuple[int | None, str]:
        return self._ws.close_code, self._ws.close_reason or ""


class _LocalTransport:
    can_resume = False

    def __init__(self, conn: LocalConnection, stack: contextlib.AsyncExitStack) -> None:
        self._conn = conn
        self._stack = stack
        self._events = conn.events()

    async def send(self, message: dict[str, Any]) -> None:
        if self._conn.close_code is not None:
            raise VoxgateConnectionError(f"in-process session closed (code {self._conn.close_code})")
        await self._conn.send_json(message)

    async def recv(self) -> str | bytes:
        try:
            return await anext(self._events)
        except StopAsyncIteration:
            raise _TransportClosed from None

    async def close(self) -> None:
        await self._events.aclose()  # type: ignore[attr-defined]
        await self._stack.aclose()

    def close_info(self) -> tuple[int | None, str]:
        return self._conn.close_code, ""


# --- one utterance ----------------------------------------------------------------------------


class Speech:
    """One utterance (one protocol context), returned by ``VoxgateClient.speak()``.

    Iterate it (``async for chunk in speech``) to get its ``AudioChunk``s in order; iteration ends
    after ``context.done`` (``speech.done`` is then set) or ``cancelled`` (``speech.cancelled``), and
    raises ``VoxgateClientError`` when the server reported an error for it. Alignment messages are
    collected into ``speech.words`` / ``speech.phonemes`` (session option ``alignment=True``), drops
    into ``speech.dropped``. Iterate it from one task only; ``async with speech:`` cancels it on exit
    if it is still running.
    """

    def __init__(self, client: VoxgateClient, context_id: str, *, max_buffered_chunks: int | None) -> None:
        self._client = client
        self.context_id = context_id
        #: Context index from ``context.started`` (binary frames carry it); None before.
        self.index: int | None = None
        settings = client.settings
        #: Format and rate of this speech's frames (the session's settings when its context opened).
        self.audio_format: str = settings.get("format", "pcm_s16le")
        self.sample_rate: int = int(settings.get("sample_rate", 24_000))
        self.words: list[WordTiming] = []
        self.phonemes: list[PhonemeTiming] = []
        self.dropped: list[DroppedPiece] = []
        self.done: SpeechDone | None = None
        self.cancelled = False
        #: "client" (``cancel()``), "disconnected" (the connection dropped mid-speech), "closed"
        #: (the client was closed), or the server's reason ("server" when it gave none).
        self.cancel_reason: str | None = None
        self.error: BaseException | None = None
        self.num_chunks = 0
        self.num_samples = 0
        loop = asyncio.get_running_loop()
        self.created_at = loop.time()
        #: Loop time the first frame arrived (``time_to_first_audio`` is the difference).
        self.first_audio_at: float | None = None
        self._items: collections.deque[Any] = collections.deque()
        self._max_buffered = max_buffered_chunks
        self._num_buffered = 0
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._started = asyncio.Event()
        self._finished = asyncio.Event()
        self._exhausted = False
        self._discarding = False
        self._interrupted: VoxgateConnectionError | None = None
        #: Sticky: the connection dropped while this speech was unfinished.
        self._disconnected = False
        self._sender: asyncio.Task[None] | None = None
        self._sent_any = False
        self._saw_last_frame = False
        self._end_sample = 0
        self._last_frame_seq: int | None = None

    # --- consumer side --------------------------------------------------------------------------

    def __aiter__(self) -> Speech:
        return self

    async def __anext__(self) -> AudioChunk:
        while True:
            if self._items:
                item = self._items.popleft()
                if isinstance(item, AudioChunk):
                    self._num_buffered -= 1
                    self._space.set()
                    return item
                if item is _END:
                    self._exhausted = True
                    raise StopAsyncIteration
                assert isinstance(item, _Raise)
                if item.terminal:
                    self._exhausted = True
                raise item.error
            if self._exhausted:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()

    async def __aenter__(self) -> Speech:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self.finished:
            with contextlib.suppress(VoxgateConnectionError):
                await self.cancel()

    @property
    def finished(self) -> bool:
        """True once the speech is done, cancelled or failed (buffered chunks may remain to read)."""
        return self._finished.is_set()

    @property
    def time_to_first_audio(self) -> float | None:
        """Seconds from ``speak()`` to the first frame arriving, or None before it."""
        return None if self.first_audio_at is None else self.first_audio_at - self.created_at

    async def wait_started(self, timeout: float | None = None) -> bool:
        """Return as soon as the first audio frame arrived: True. False if the speech ended without
        audio. Raises the speech's ``VoxgateClientError`` (or ``VoxgateConnectionError``) if it
        failed before any audio, and ``TimeoutError`` after ``timeout`` seconds. Iterate (or
        ``read_all()``) afterwards to get the audio."""
        async with asyncio.timeout(timeout):
            await self._started.wait()
        if self.first_audio_at is not None:
            return True
        if self.error is not None:
            raise self.error
        if self._interrupted is not None:
            raise self._interrupted
        return False

    async def read_all(self) -> np.ndarray:
        """Iterate to the end and return all samples (float32, at ``sample_rate``) in one array.
        Raises like iteration does."""
        parts = [chunk.samples async for chunk in self]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    async def cancel(self, *, timeout: float = 5.0) -> None:
        """Barge in: stop sending text, drop buffered audio, ask the server to cancel, and wait for
        its ``cancelled`` (after which the server sends no frame of this context). Iteration then
        ends without further chunks. Idempotent; a finished speech is left as it is."""
        if self.finished:
            return
        self._discard_audio()
        await self._stop_sender()
        if not self._sent_any:
            self._finish_cancelled("client")
            self._client._unregister(self)
            return
        try:
            await self._client._send({"type": "cancel", "context_id": self.context_id})
        except VoxgateConnectionError:
            # The server cancels a dropped session's contexts itself ("disconnected").
            self._finish_cancelled("client")
            return
        try:
            async with asyncio.timeout(timeout):
                await self._finished.wait()
        except TimeoutError:
            logger.warning("no 'cancelled' for context %r within %.1f s; ending it locally", self.context_id, timeout)
            self._finish_cancelled("client")

    # --- client side (called by VoxgateClient) ----------------------------------------------------

    def _start_sender(self, source: str | AsyncIterable[str] | Iterable[str], options: dict[str, Any]) -> None:
        self._sender = asyncio.get_running_loop().create_task(
            self._send_text(source, options), name=f"voxgate-speak-{self.context_id}"
        )

    async def _send_text(self, source: str | AsyncIterable[str] | Iterable[str], options: dict[str, Any]) -> None:
        client = self._client
        try:
            async for fragment in client._fragments(source):
                message: dict[str, Any] = {"type": "text", "context_id": self.context_id, "text": fragment}
                await client._pace(len(fragment))
                if not self._sent_any:
                    message.update(options)
                    # The context takes the session's settings when its first message is handled:
                    # hold off update() meanwhile, so that format and rate here are the ones used.
                    async with client._settings_lock:
                        self.audio_format = client.settings.get("format", self.audio_format)
                        self.sample_rate = int(client.settings.get("sample_rate", self.sample_rate))
                        # Set before the send: a send interrupted by cancel() may still have left.
                        self._sent_any = True
                        await client._send(message)
                else:
                    await client._send(message)
            if not self._sent_any:
                self._finish_done(SpeechDone(audio_ms=0.0, last_seq=None))
                client._unregister(self)
                return
            await client._send({"type": "flush", "context_id": self.context_id, "final": True})
        except VoxgateConnectionError:
            pass  # the reader reports the loss to every speech
        except Exception as exc:  # the caller's iterable failed: end the speech with its error
            self._fail(exc)
            if self._sent_any:
                client._request_cancel(self)
            else:
                client._unregister(self)

    async def _stop_sender(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None and not sender.done() and sender is not asyncio.current_task():
            sender.cancel()
            # wait() rather than await: the sender's CancelledError is not ours to raise or swallow.
            await asyncio.wait([sender])

    def _stop_sender_soon(self) -> None:
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()

    async def _receive_frame(self, seq: int, sample_offset: int, flags: FrameFlags, payload: bytes) -> None:
        if self.finished or self._discarding:
            return
        samples = decode_samples(payload, self.audio_format)
        chunk = AudioChunk(
            samples=samples,
            sample_rate=self.sample_rate,
            seq=seq,
            sample_offset=sample_offset,
            first=FrameFlags.FIRST in flags,
            last=FrameFlags.LAST in flags,
            context_id=self.context_id,
            data=payload,
            format=self.audio_format,
        )
        self.num_chunks += 1
        self.num_samples += len(samples)
        self._end_sample = sample_offset + len(samples)
        self._last_frame_seq = seq
        self._saw_last_frame = chunk.last
        if self.first_audio_at is None:
            self.first_audio_at = asyncio.get_running_loop().time()
            self._started.set()
        # A bounded buffer holds up the reader, hence every speech of the client: backpressure.
        while self._max_buffered is not None and self._num_buffered >= self._max_buffered and not self._discarding:
            self._space.clear()
            await self._space.wait()
        if self._discarding or self.finished:
            return
        self._items.append(chunk)
        self._num_buffered += 1
        self._ready.set()

    def _receive_alignment(self, message: dict[str, Any]) -> None:
        self.words.extend(WordTiming(w["word"], float(w["start_ms"]), float(w["end_ms"])) for w in message.get("words") or ())
        self.phonemes.extend(
            PhonemeTiming(p["phoneme"], float(p["start_ms"]), float(p["end_ms"])) for p in message.get("phonemes") or ()
        )

    def _put_control(self, item: Any) -> None:
        self._items.append(item)
        self._ready.set()

    def _discard_audio(self) -> None:
        self._discarding = True
        self._items = collections.deque(item for item in self._items if not isinstance(item, AudioChunk))
        self._num_buffered = 0
        self._space.set()

    def _finish(self) -> None:
        self._finished.set()
        self._started.set()
        self._space.set()

    def _finish_done(self, done: SpeechDone) -> None:
        if self.finished:
            return
        self.done = done
        self._put_control(_END)
        self._finish()

    def _finish_cancelled(self, reason: str) -> None:
        if self.finished:
            return
        self.cancelled = True
        self.cancel_reason = reason
        self._put_control(_END)
        self._finish()

    def _receive_cancelled(self, message: dict[str, Any]) -> None:
        if self._saw_last_frame and not self._discarding:
            # Its last frame came (replayed after a reconnect) but ``context.done`` was lost with
            # the old connection: the speech is complete.
            self._finish_done(SpeechDone(self._end_sample * 1000.0 / self.sample_rate, self._last_frame_seq))
            return
        reason = message.get("reason")
        if not isinstance(reason, str):
            reason = "client" if self._discarding else ("disconnected" if self._disconnected else "server")
        self._finish_cancelled(reason)

    def _fail(self, error: BaseException) -> None:
        if self.finished:
            return
        self.error = error
        self._put_control(_Raise(error, terminal=True))
        self._finish()

    def _interrupt(self, error: VoxgateConnectionError) -> None:
        """The connection dropped: raise ``error`` once from iteration; the speech may still end
        normally (or as cancelled) after ``reconnect()``."""
        if self.finished:
            return
        self._interrupted = error
        self._disconnected = True
        self._put_control(_Raise(error, terminal=False))
        self._started.set()

    def _resumed(self) -> None:
        self._interrupted = None
        if self.first_audio_at is None and not self.finished:
            self._started.clear()


# --- the client -------------------------------------------------------------------------------


class VoxgateClient:
    """One voxgate session over a WebSocket (or, via ``VoxgateClient.local``, in-process).

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
        sample_rate: int = 24_000,
        frame_ms: int | None = None,
        alignment: bool = False,
        max_buffered_chunks: int | None = None,
        max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS,
        max_chars_per_s: float | None = None,
        open_timeout: float = 10.0,
    ) -> None:
        self.url = _stream_url(url) if url else ""
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
        self._gateway: Gateway | None = None
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
        self._transport: _Transport | None = None
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
        self._pacer = _Pacer(max_chars_per_s) if max_chars_per_s else None
        self._background: set[asyncio.Task[Any]] = set()

    @classmethod
    def local(cls, gateway: Gateway, **options: Any) -> VoxgateClient:
        """A client over an in-process session of a started ``Gateway`` (same scheduler, limits
        and code path as a WebSocket session). Same options as the constructor, without url and
        token; it cannot ``reconnect()``."""
        client = cls("", **options)
        client._gateway = gateway
        return client

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
        if isinstance(transport, _WebSocketTransport):
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

    async def _open_transport(self, query: dict[str, Any] | None) -> _Transport:
        if self._gateway is not None:
            stack = contextlib.AsyncExitStack()
            conn = await stack.enter_async_context(self._gateway.open_local_session())
            return _LocalTransport(conn, stack)
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidHandshake, InvalidStatus

        url = self.url
        if query:
            url += ("&" if urlsplit(url).query else "?") + urlencode(query)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            ws = await connect(url, additional_headers=headers, max_size=2**24, open_timeout=self.open_timeout)
        except InvalidStatus as exc:
            status = exc.response.status_code
            body = (exc.response.body or b"").decode("utf-8", "replace").strip()
            raise VoxgateConnectionError(f"server refused the session: HTTP {status} {body}".strip()) from exc
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise VoxgateConnectionError(f"cannot connect to {self.url}: {exc}") from exc
        return _WebSocketTransport(ws)

    async def _handshake(self, transport: _Transport, *, resuming: bool = False) -> dict[str, Any]:
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
        except _TransportClosed:
            code, reason = transport.close_info()
            raise VoxgateConnectionError(
                f"server closed the connection before the session started (code {code} {reason})".strip(),
                close_code=code,
                close_reason=reason,
            ) from None
        except TimeoutError:
            raise VoxgateConnectionError(f"no session.created within {self.open_timeout:g} s") from None

    def _start_session(self, transport: _Transport, hello: dict[str, Any]) -> None:
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

    async def _read_loop(self, transport: _Transport) -> None:
        failure: BaseException | None = None
        try:
            while True:
                await self._dispatch(await transport.recv())
        except _TransportClosed:
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

    def _on_connection_lost(self, transport: _Transport, failure: BaseException | None) -> None:
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
            for part in _split_text(source, self.max_message_chars):
                yield part
            return
        if isinstance(source, AsyncIterable):
            async for fragment in source:
                for part in _split_text(_check_fragment(fragment), self.max_message_chars):
                    yield part
            return
        for fragment in source:
            for part in _split_text(_check_fragment(fragment), self.max_message_chars):
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


class _Pacer:
    """Token bucket mirroring the server's per-session character limit (one second of burst)."""

    def __init__(self, rate: float) -> None:
        # A margin below the server's rate: its bucket refills from its own (later) arrival times.
        self.rate = 0.9 * rate
        self.tokens = self.rate
        self.stamp: float | None = None

    async def take(self, amount: float) -> None:
        loop = asyncio.get_running_loop()
        amount = min(amount, self.rate)
        while True:
            now = loop.time()
            if self.stamp is not None:
                self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= amount:
                self.tokens -= amount
                return
            await asyncio.sleep((amount - self.tokens) / self.rate)


def _check_fragment(fragment: Any) -> str:
    if not isinstance(fragment, str):
        raise TypeError(f"speak() fragments must be str, not {type(fragment).__name__}")
    return fragment


def _split_text(text: str, limit: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``limit`` characters, at whitespace where possible.
    Pieces concatenate back to ``text`` exactly (the server's segmenter joins fragments); empty
    fragments are left out (the server refuses them)."""
    pieces: list[str] = []
    while len(text) > limit:
        cut = max(text.rfind(" ", limit // 2, limit), text.rfind("\n", limit // 2, limit))
        cut = cut + 1 if cut > 0 else limit
        pieces.append(text[:cut])
        text = text[cut:]
    if text:
        pieces.append(text)
    return pieces


def _stream_url(url: str) -> str:
    """``ws://host:port`` (or ``http://``) to ``ws://host:port/v1/stream``; a given path is kept."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"expected a ws:// or wss:// URL, got {url!r}")
    path = parts.path if parts.path not in ("", "/") else STREAM_PATH
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))
