"""Game NPC voices: per-NPC voice and speed, interruptible lines, viseme and word events.

``NpcHook`` drives one voxgate session (a ``VoxgateClient`` with alignment on) for every NPC of a game:

- ``configure(npc, voice=..., speed=...)`` sets an NPC's voice; each line is its own context with its
  NPC's settings, so NPCs speak at once without touching each other's audio.
- ``handle = await say(npc, line)`` returns as soon as the line's first audio arrived (not when it is
  all synthesized), with a ``LineHandle``: ``done()``, ``await wait()``, ``await cancel()``, its events.
- **interrupt**: a new line for an NPC cuts the one it is speaking: the old line is cancelled (the
  server drops its queued work and sends no more of its audio), reports ``interrupted``, and only
  then does the new one start. ``await interrupt(npc)`` does the same without a new line.
- **events**: ``started``, ``word``, ``viseme``, ``audio``, ``done``, ``interrupted``, ``error``, each
  with the NPC and line id; times in ms from the start of the line's audio. ``started`` is always a
  line's first event (``latency_ms`` None when it ended before any audio). Alignment messages come
  before the audio they describe, so a line's ``word``/``viseme`` events for a piece precede its
  audio, and silence visemes for audio no phoneme describes go out before that audio too.

Visemes come from ``gateway.integrations.npc.visemes``; the JSON-lines bridge for game engines is
``gateway.integrations.npc.bridge``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from gateway.integrations.npc.visemes import Viseme, VisemeTrack
from gateway.protocol import SAMPLE_RATE

__all__ = ["NpcVoice", "NpcEvent", "LineHandle", "NpcHook", "EventKind"]

logger = logging.getLogger("voxgate.integrations.npc")


@dataclass(slots=True)
class NpcVoice:
    """An NPC's settings; None keeps the session's."""

    voice: str | None = None
    speed: float | None = None
    lang: str | None = None
    priority: int | None = None


EventKind = Literal["started", "word", "viseme", "audio", "done", "interrupted", "error"]


@dataclass(frozen=True, slots=True)
class NpcEvent:
    """Something that happened to a line. ``to_dict()`` is its bridge form."""

    kind: EventKind
    npc: str
    line_id: str | None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.kind, "npc": self.npc, "line_id": self.line_id, **self.data}


class LineHandle:
    """One line an NPC speaks (one voxgate context).

    ``done()`` is True once it finished, was interrupted or failed (``outcome`` says which);
    ``await wait()`` returns the outcome; ``await cancel()`` interrupts it (idempotent). ``async for
    event in handle`` yields its ``NpcEvent``s until the last one. ``visemes``, ``words``,
    ``audio_ms`` grow as it plays; ``samples()`` is its audio so far (when the hook keeps audio).
    """

    def __init__(self, hook: NpcHook, npc: str, line_id: str, text: str, speech: Any) -> None:
        self.npc = npc
        self.line_id = line_id
        self.text = text
        self.speech = speech
        self.outcome: Literal["done", "interrupted", "error"] | None = None
        self.error: BaseException | None = None
        self.visemes: list[Viseme] = []
        self.words: list[dict[str, Any]] = []
        self.audio_ms = 0.0
        self.sample_rate = int(getattr(speech, "sample_rate", SAMPLE_RATE))
        self._hook = hook
        self._chunks: list[np.ndarray] = []
        self._events: asyncio.Queue[NpcEvent | None] = asyncio.Queue()
        self._started = asyncio.Event()
        self._finished = asyncio.Event()
        self._interrupted_by = "interrupt"
        self._announced = False
        self._task: asyncio.Task[None] | None = None

    def done(self) -> bool:
        return self._finished.is_set()

    @property
    def started(self) -> bool:
        return self.speech.first_audio_at is not None

    async def wait_started(self) -> bool:
        """Until its first audio arrived (True) or it ended without audio (False)."""
        await self._started.wait()
        return self.started

    async def wait(self) -> str:
        """Until it ends; returns ``"done"``, ``"interrupted"`` or ``"error"``."""
        await self._finished.wait()
        assert self.outcome is not None
        return self.outcome

    async def cancel(self, *, reason: str = "interrupt") -> None:
        """Interrupt it: no audio of it follows; its ``interrupted`` event is out when this returns."""
        if self.done():
            return
        self._interrupted_by = reason
        await self.speech.cancel()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)

    def samples(self) -> np.ndarray:
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.float32)

    def __aiter__(self) -> AsyncIterator[NpcEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[NpcEvent]:
        while (event := await self._events.get()) is not None:
            yield event


class NpcHook:
    """Speaks NPC lines over one connected ``VoxgateClient`` (made with ``alignment=True``).

    Responsibilities: NPC settings, one current line per NPC (a new line or ``interrupt`` cancels it),
    turning each line's audio and alignment into ``NpcEvent``s (to ``on_event`` and to the line's
    handle). Not its job: playing audio, connecting (pass a connected client; ``close()`` does not
    close it).

    ``keep_audio`` keeps each line's samples on its handle (``handle.samples()``), for WAV files or
    for callers that play whole lines; ``stream_audio`` adds an ``audio`` event per chunk carrying the
    chunk's float32 ``samples`` and raw ``pcm`` bytes (the session's format, 16-bit PCM by default).
    """

    def __init__(
        self,
        client: Any,
        *,
        on_event: Callable[[NpcEvent], Any] | None = None,
        stream_audio: bool = False,
        keep_audio: bool = False,
        min_silence_ms: float = 80.0,
    ) -> None:
        self.client = client
        self.on_event = on_event
        self.stream_audio = stream_audio
        self.keep_audio = keep_audio
        self.min_silence_ms = min_silence_ms
        self.voices: dict[str, NpcVoice] = {}
        self._current: dict[str, LineHandle] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._ids = itertools.count(1)
        self._lines: set[LineHandle] = set()

    def configure(
        self,
        npc: str,
        *,
        voice: str | None = None,
        speed: float | None = None,
        lang: str | None = None,
        priority: int | None = None,
    ) -> NpcVoice:
        """Set an NPC's voice, speed, language or priority for its next lines (None: unchanged).
        Raises ``ValueError`` for a voice the server does not offer or a speed outside 0.5..2.0."""
        settings = self.voices.setdefault(npc, NpcVoice())
        if voice is not None:
            if self.client.voices and voice not in self.client.voices:
                raise ValueError(f"unknown voice {voice!r}; the server offers {', '.join(self.client.voices[:8])}...")
            settings.voice = voice
        if speed is not None:
            if not 0.5 <= speed <= 2.0:
                raise ValueError("speed must be in 0.5..2.0")
            settings.speed = float(speed)
        if lang is not None:
            settings.lang = lang
        if priority is not None:
            settings.priority = priority
        return settings

    async def say(self, npc: str, line: str | AsyncIterable[str], *, line_id: str | None = None) -> LineHandle:
        """Speak ``line`` as ``npc``, interrupting its current line; returns once audio started (or
        the line ended without audio). Raises ``VoxgateClientError`` when the server refused it."""
        handle = await self.start(npc, line, line_id=line_id)
        await handle.wait_started()
        if handle.outcome == "error" and handle.error is not None:
            raise handle.error
        return handle

    async def start(self, npc: str, line: str | AsyncIterable[str], *, line_id: str | None = None) -> LineHandle:
        """Like ``say`` but returns as soon as the line is sent (after the interrupted line, if any,
        has reported ``interrupted``)."""
        lock = self._locks.setdefault(npc, asyncio.Lock())
        async with lock:
            current = self._current.get(npc)
            if current is not None and not current.done():
                await current.cancel(reason="new_line")
            settings = self.voices.get(npc, NpcVoice())
            line_id = line_id or f"{_slug(npc)}-{next(self._ids)}"
            speech = self.client.speak(
                line,
                context_id=line_id,
                voice=settings.voice,
                speed=settings.speed,
                lang=settings.lang,
                priority=settings.priority,
            )
            handle = LineHandle(self, npc, line_id, line if isinstance(line, str) else "", speech)
            self._current[npc] = handle
            self._lines.add(handle)
            handle._task = asyncio.create_task(self._pump(handle), name=f"npc-{line_id}")
            return handle

    async def interrupt(self, npc: str) -> bool:
        """Cut the NPC's current line. Returns False when it was not speaking."""
        lock = self._locks.setdefault(npc, asyncio.Lock())
        async with lock:
            current = self._current.get(npc)
            if current is None or current.done():
                return False
            await current.cancel(reason="interrupt")
            return True

    def current(self, npc: str) -> LineHandle | None:
        """The NPC's line in progress, if any."""
        handle = self._current.get(npc)
        return handle if handle is not None and not handle.done() else None

    async def wait_idle(self) -> None:
        """Until every line started so far has ended."""
        for handle in list(self._lines):
            await handle.wait()

    async def close(self) -> None:
        """Interrupt every line in progress (reason ``close``)."""
        for handle in list(self._lines):
            await handle.cancel(reason="close")

    # --- internals ------------------------------------------------------------------------------

    def _emit(self, handle: LineHandle, kind: EventKind, data: dict[str, Any]) -> None:
        event = NpcEvent(kind, handle.npc, handle.line_id, data)
        handle._events.put_nowait(event)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                logger.error("NPC event callback failed", exc_info=True)

    async def _pump(self, handle: LineHandle) -> None:
        """The line's events, in the documented order: ``started`` first (also for a line that ends
        before any audio), each piece's ``word``/``viseme`` events before its audio, visemes
        covering every chunk before the chunk goes out, then one of ``done``/``interrupted``/``error``."""
        from gateway.client import VoxgateClientError, VoxgateConnectionError

        speech = handle.speech
        track = VisemeTrack(min_silence_ms=self.min_silence_ms)
        num_words = num_phonemes = 0
        num_samples = 0
        seq = 0
        try:
            async for chunk in speech:
                if seq == 0:
                    self._announce(handle, chunk.sample_rate, speech.time_to_first_audio)
                # Timings for this audio arrived before it: send them before it, for the animation;
                # then silence for whatever of this chunk no phoneme described.
                num_words = self._emit_words(handle, num_words)
                num_phonemes = self._emit_visemes(handle, track, num_phonemes)
                self._send_visemes(handle, track.cover((num_samples + len(chunk.samples)) * 1000.0 / chunk.sample_rate))
                if self.keep_audio:
                    handle._chunks.append(chunk.samples)
                if self.stream_audio:
                    self._emit(handle, "audio", {
                        "seq": seq,
                        "offset_ms": round(num_samples * 1000.0 / chunk.sample_rate, 1),
                        "offset_samples": num_samples,
                        "samples": chunk.samples,
                        "pcm": chunk.data,
                        "format": chunk.format,
                    })
                seq += 1
                num_samples += len(chunk.samples)
                handle.audio_ms = num_samples * 1000.0 / chunk.sample_rate
            self._announce(handle, speech.sample_rate, None)
            if speech.cancelled:
                handle.outcome = "interrupted"
                # Delivered, not played: the game drops what it queued of this line past its playhead.
                self._emit(handle, "interrupted", {
                    "at_ms": round(handle.audio_ms, 1),
                    "at_sample": num_samples,
                    "last_seq": seq - 1 if seq else None,
                    "by": handle._interrupted_by,
                })
            else:
                self._emit_words(handle, num_words)
                self._emit_visemes(handle, track, num_phonemes)
                audio_ms = speech.done.audio_ms if speech.done is not None else handle.audio_ms
                self._send_visemes(handle, track.finish(max(audio_ms, handle.audio_ms)))
                handle.audio_ms = max(audio_ms, handle.audio_ms)
                handle.outcome = "done"
                self._emit(handle, "done", {"audio_ms": round(handle.audio_ms, 1)})
        except (VoxgateClientError, VoxgateConnectionError) as exc:
            self._announce(handle, speech.sample_rate, None)
            handle.outcome = "error"
            handle.error = exc
            self._emit(handle, "error", {"code": getattr(exc, "code", "connection_lost"), "message": str(exc)})
        except Exception as exc:  # a bug here must still end the line for the caller
            logger.error("NPC line %r failed", handle.line_id, exc_info=True)
            self._announce(handle, speech.sample_rate, None)
            handle.outcome = "error"
            handle.error = exc
            self._emit(handle, "error", {"code": "internal_error", "message": "line failed"})
        finally:
            handle._started.set()
            handle._finished.set()
            handle._events.put_nowait(None)
            self._lines.discard(handle)
            if self._current.get(handle.npc) is handle:
                del self._current[handle.npc]

    def _announce(self, handle: LineHandle, sample_rate: int, latency_s: float | None) -> None:
        """The line's ``started`` event, once; ``latency_ms`` is None for a line without audio."""
        if handle._announced:
            return
        handle._announced = True
        handle.sample_rate = sample_rate
        self._emit(handle, "started", {
            "text": handle.text,
            "sample_rate": sample_rate,
            "latency_ms": None if latency_s is None else round(latency_s * 1000, 1),
        })
        handle._started.set()

    def _emit_words(self, handle: LineHandle, num_seen: int) -> int:
        words = handle.speech.words
        for word in words[num_seen:]:
            data = {"word": word.word, "start_ms": word.start_ms, "end_ms": word.end_ms}
            handle.words.append(data)
            self._emit(handle, "word", data)
        return len(words)

    def _emit_visemes(self, handle: LineHandle, track: VisemeTrack, num_seen: int) -> int:
        phonemes = handle.speech.phonemes
        if len(phonemes) > num_seen:
            self._send_visemes(handle, track.feed(phonemes[num_seen:]))
        return len(phonemes)

    def _send_visemes(self, handle: LineHandle, visemes: list[Viseme]) -> None:
        for viseme in visemes:
            handle.visemes.append(viseme)
            self._emit(handle, "viseme", _viseme_data(viseme))


def _viseme_data(viseme: Viseme) -> dict[str, Any]:
    return {"viseme": viseme.viseme, "index": viseme.index, "start_ms": viseme.start_ms, "end_ms": viseme.end_ms}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:40] or "npc"

