"""One utterance of a ``VoxgateClient``: the ``Speech`` a caller iterates for its audio."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from gateway.audio import decode_samples
from gateway.client.values import (
    AudioChunk,
    DroppedPiece,
    PhonemeTiming,
    SpeechDone,
    VoxgateConnectionError,
    WordTiming,
)
from gateway.protocol import SAMPLE_RATE, FrameFlags

if TYPE_CHECKING:
    from gateway.client.session import VoxgateClient

__all__ = ["Speech"]

logger = logging.getLogger("voxgate.client")


@dataclass(frozen=True, slots=True)
class _Raise:
    """A queued exception for the consumer; ``terminal`` ends the iteration after it."""

    error: BaseException
    terminal: bool


_END: Final = object()


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
        self.sample_rate: int = int(settings.get("sample_rate", SAMPLE_RATE))
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
