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
  with the NPC and line id; times in ms from the start of the line's audio. Alignment messages come
  before the audio they describe, so a line's ``word``/``viseme`` events for a piece precede its audio.

**Visemes** come from the server's phoneme timings through ``PHONEME_VISEMES``, a table from Kokoro's
phoneme set (misaki's English, Japanese and Chinese output, and espeak-style IPA) to the 15 Oculus/OVR
visemes (``VISEMES``, in OVR index order, so ``index`` plugs into OVR LipSync, Unity blend shapes or
a Godot animation track):

=====  ======================================  =====  =========================================
sil    silence, pauses, punctuation            nn     n l ŋ ɲ ɳ ɴ ʎ
PP     p b m β                                 RR     ɹ r ɻ ʁ ɚ
FF     f v ʋ ɸ                                 aa     a ɑ æ ɐ ʌ
TH     θ ð                                     E      e ɛ ə ɜ ᵊ ɘ ɤ
DD     t d ɾ T ʈ ɖ ɽ                           ih     i ɪ ɨ ᵻ j
kk     k ɡ g c ɟ x ɣ χ q ɰ                     oh     o ɔ ɒ œ
CH     ʧ ʤ ʃ ʒ ʂ ʐ ɕ ʑ ʨ ʥ ꭧ ç ʝ               ou     u ʊ w ɯ ɥ y ø ᵝ
SS     s z ʦ ʣ S
=====  ======================================  =====  =========================================

Kokoro's diphthong letters are split in two halves: ``A`` (eɪ) E+ih, ``I`` (aɪ) aa+ih, ``W`` (aʊ)
aa+ou, ``O`` (oʊ) oh+ou, ``Q`` (əʊ) E+ou, ``Y`` (ɔɪ) oh+ih. ``h`` and ``ʔ`` take the viseme of the
sound after them (the mouth is already shaping it), and so do the stress marks ˈ ˌ (they stand before
the stressed vowel). Length, aspiration, palatalisation, nasalisation and tone marks (ː ʰ ʲ ̃ ↓ ↗ ↘ →)
lengthen the viseme before them. A space is ``sil`` when it lasts at least
``min_silence_ms`` (a real pause), else it lengthens the viseme before it. Unknown symbols are treated
like ``h``. Gaps (the model's leading and trailing silence, between pieces, the end of the line) are
``sil``, so a line's visemes are in order and cover its audio from 0 to ``audio_ms`` without holes.

The JSON-lines stdio bridge (``python -m gateway.integrations.npc --url ws://...`` or
``examples/npc_bridge.py``) exposes all of this to Godot/Unity without Python code; ``docs/npc.md``
describes its commands and events, with a GDScript example.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import logging
import os
import re
import sys
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson

__all__ = [
    "VISEMES",
    "PHONEME_VISEMES",
    "Viseme",
    "VisemeTrack",
    "phonemes_to_visemes",
    "NpcVoice",
    "NpcEvent",
    "LineHandle",
    "NpcHook",
    "serve_bridge",
    "main",
]

logger = logging.getLogger("voxgate.integrations.npc")

#: The Oculus/OVR viseme set, in OVR's index order.
VISEMES: tuple[str, ...] = ("sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "ih", "oh", "ou")

_COARTICULATED = None  # takes the viseme of the next sound
_MODIFIER: tuple[str, ...] = ()  # lengthens the viseme before it


def _table() -> dict[str, tuple[str, ...] | None]:
    groups = {
        "sil": ";:,.!?—…\"()“”«»'",
        "PP": "pbmβ",
        "FF": "fvʋɸ",
        "TH": "θð",
        "DD": "tdɾTʈɖɽ",
        "kk": "kɡgcɟxɣχqɰ",
        "CH": "ʧʤʃʒʂʐɕʑʨʥꭧçʝ",
        "SS": "szʦʣS",
        "nn": "nlŋɲɳɴʎ",
        "RR": "ɹrɻʁɚ",
        "aa": "aɑæɐʌ",
        "E": "eɛəɜᵊɘɤ",
        "ih": "iɪɨᵻj",
        "oh": "oɔɒœ",
        "ou": "uʊwɯɥyøᵝ",
    }
    table: dict[str, tuple[str, ...] | None] = {ch: (viseme,) for viseme, chars in groups.items() for ch in chars}
    table.update({"A": ("E", "ih"), "I": ("aa", "ih"), "W": ("aa", "ou"), "O": ("oh", "ou"), "Q": ("E", "ou"), "Y": ("oh", "ih")})
    # Stress marks stand before the stressed vowel: they belong to what follows, like h and ʔ.
    table.update({ch: _COARTICULATED for ch in "hʔˈˌ"})
    table.update({ch: _MODIFIER for ch in "ːʰʲ\u0303↓↗↘→"})
    return table


#: Phoneme character -> visemes it shows (split evenly over its duration); None: the next sound's
#: viseme (coarticulation); (): lengthens the previous viseme. Space is handled by duration.
PHONEME_VISEMES: Mapping[str, tuple[str, ...] | None] = _table()


@dataclass(frozen=True, slots=True)
class Viseme:
    """One mouth shape from ``start_ms`` to ``end_ms`` of the line's audio."""

    viseme: str
    start_ms: float
    end_ms: float

    @property
    def index(self) -> int:
        """Position in ``VISEMES`` (the OVR viseme index)."""
        return VISEMES.index(self.viseme)


class VisemeTrack:
    """Turns a line's phoneme timings, piece by piece, into contiguous visemes.

    ``feed(phonemes)`` takes the timings of one alignment message (objects or dicts with
    ``phoneme``, ``start_ms``, ``end_ms``) and returns the visemes that cover the audio from where the
    previous call ended to the end of these phonemes, except a trailing silence, which is held back
    to merge with the next call's (or ``finish``'s) silence; ``finish(audio_ms)`` returns the closing
    silence. Equal neighbours are merged; every viseme starts where the one before it ended.
    """

    def __init__(self, *, min_silence_ms: float = 80.0) -> None:
        self.min_silence_ms = min_silence_ms
        #: Where the visemes seen so far end (a trailing silence may still be held back).
        self.end_ms = 0.0
        self._held: Viseme | None = None

    def feed(self, phonemes: Iterable[Any]) -> list[Viseme]:
        segments: list[list[Any]] = []  # [viseme, start, end], in order
        # Start of sounds (h, ʔ, a leading mark) waiting for the next viseme to cover them.
        pending_start: float | None = None
        last_end = self.end_ms
        for ph in phonemes:
            symbol, start, end = _fields(ph)
            start = max(start, self.end_ms)
            if end <= start:
                continue
            last_end = max(last_end, end)
            if symbol.isspace():
                mapped: tuple[str, ...] | None = ("sil",) if end - start >= self.min_silence_ms else _MODIFIER
            else:
                mapped = PHONEME_VISEMES.get(symbol, _COARTICULATED)
            if mapped is _COARTICULATED or (not mapped and (pending_start is not None or not segments)):
                pending_start = start if pending_start is None else pending_start
                continue
            if not mapped:
                segments[-1][2] = end
                continue
            step = (end - start) / len(mapped)
            for i, viseme in enumerate(mapped):
                segments.append([viseme, start + i * step, end if i == len(mapped) - 1 else start + (i + 1) * step])
            if pending_start is not None:
                # The waiting sounds show the first shape of this one (a diphthong keeps its halves).
                segments[-len(mapped)][1], pending_start = pending_start, None
        if pending_start is not None:
            segments.append(["sil", pending_start, last_end])
        out: list[Viseme] = [self._held] if self._held is not None else []
        self._held = None
        cursor = self.end_ms
        for viseme, start, end in segments:
            if start > cursor:
                out = _append(out, "sil", cursor, start)
            out = _append(out, viseme, max(start, cursor), end)
            cursor = max(cursor, end)
        if out:
            self.end_ms = out[-1].end_ms
            if out[-1].viseme == "sil":
                # A piece usually ends in silence and the next begins with some: hold it back so the
                # two become one event (the mouth is closed meanwhile either way).
                self._held = out.pop()
        return out

    def finish(self, audio_ms: float) -> list[Viseme]:
        """The closing silence up to ``audio_ms`` (the line's length), if any is left."""
        held, self._held = self._held, None
        if audio_ms <= self.end_ms + 1e-6:
            return [] if held is None else [held]
        if held is not None:
            closing = Viseme("sil", held.start_ms, round(float(audio_ms), 1))
        else:
            closing = Viseme("sil", round(float(self.end_ms), 1), round(float(audio_ms), 1))
        self.end_ms = float(audio_ms)
        return [closing]


def _fields(ph: Any) -> tuple[str, float, float]:
    if isinstance(ph, Mapping):
        return str(ph["phoneme"]), float(ph["start_ms"]), float(ph["end_ms"])
    return str(ph.phoneme), float(ph.start_ms), float(ph.end_ms)


def _append(out: list[Viseme], viseme: str, start: float, end: float) -> list[Viseme]:
    start, end = round(start, 1), round(end, 1)
    if end <= start:
        return out
    if out and out[-1].viseme == viseme and abs(out[-1].end_ms - start) < 1e-6:
        out[-1] = Viseme(viseme, out[-1].start_ms, end)
    else:
        if out and abs(out[-1].end_ms - start) > 1e-6:
            start = out[-1].end_ms  # keep the track contiguous whatever the rounding did
        out.append(Viseme(viseme, start, end))
    return out


def phonemes_to_visemes(phonemes: Iterable[Any], *, audio_ms: float | None = None, min_silence_ms: float = 80.0) -> list[Viseme]:
    """Visemes of a whole line at once (see ``VisemeTrack``); with ``audio_ms`` they run to its end."""
    track = VisemeTrack(min_silence_ms=min_silence_ms)
    visemes = track.feed(phonemes)
    return visemes + track.finish(track.end_ms if audio_ms is None else audio_ms)


# --- the hook -------------------------------------------------------------------------------------


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
        self.sample_rate = int(getattr(speech, "sample_rate", 24_000))
        self._hook = hook
        self._chunks: list[np.ndarray] = []
        self._events: asyncio.Queue[NpcEvent | None] = asyncio.Queue()
        self._started = asyncio.Event()
        self._finished = asyncio.Event()
        self._interrupted_by = "interrupt"
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
        from gateway.client import VoxgateClientError, VoxgateConnectionError

        speech = handle.speech
        track = VisemeTrack(min_silence_ms=self.min_silence_ms)
        num_words = num_phonemes = 0
        num_samples = 0
        seq = 0
        try:
            async for chunk in speech:
                if seq == 0:
                    handle.sample_rate = chunk.sample_rate
                    latency = speech.time_to_first_audio
                    self._emit(handle, "started", {
                        "text": handle.text,
                        "sample_rate": chunk.sample_rate,
                        "latency_ms": None if latency is None else round(latency * 1000, 1),
                    })
                    handle._started.set()
                # Timings for this audio arrived before it: send them before it, for the animation.
                num_words = self._emit_words(handle, num_words)
                num_phonemes = self._emit_visemes(handle, track, num_phonemes)
                if self.keep_audio:
                    handle._chunks.append(chunk.samples)
                if self.stream_audio:
                    self._emit(handle, "audio", {
                        "seq": seq,
                        "offset_ms": round(num_samples * 1000.0 / chunk.sample_rate, 1),
                        "samples": chunk.samples,
                        "pcm": chunk.data,
                        "format": chunk.format,
                    })
                seq += 1
                num_samples += len(chunk.samples)
                handle.audio_ms = num_samples * 1000.0 / chunk.sample_rate
            if speech.cancelled:
                handle.outcome = "interrupted"
                self._emit(handle, "interrupted", {"at_ms": round(handle.audio_ms, 1), "by": handle._interrupted_by})
            else:
                self._emit_words(handle, num_words)
                self._emit_visemes(handle, track, num_phonemes)
                audio_ms = speech.done.audio_ms if speech.done is not None else handle.audio_ms
                for viseme in track.finish(max(audio_ms, handle.audio_ms)):
                    handle.visemes.append(viseme)
                    self._emit(handle, "viseme", _viseme_data(viseme))
                handle.audio_ms = max(audio_ms, handle.audio_ms)
                handle.outcome = "done"
                self._emit(handle, "done", {"audio_ms": round(handle.audio_ms, 1)})
        except (VoxgateClientError, VoxgateConnectionError) as exc:
            handle.outcome = "error"
            handle.error = exc
            self._emit(handle, "error", {"code": getattr(exc, "code", "connection_lost"), "message": str(exc)})
        except Exception as exc:  # a bug here must still end the line for the caller
            logger.error("NPC line %s failed", handle.line_id, exc_info=True)
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
            for viseme in track.feed(phonemes[num_seen:]):
                handle.visemes.append(viseme)
                self._emit(handle, "viseme", _viseme_data(viseme))
        return len(phonemes)


def _viseme_data(viseme: Viseme) -> dict[str, Any]:
    return {"viseme": viseme.viseme, "index": viseme.index, "start_ms": viseme.start_ms, "end_ms": viseme.end_ms}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:40] or "npc"


# --- the JSON-lines stdio bridge ----------------------------------------------------------------

AudioMode = Literal["stream", "wav", "none"]


async def serve_bridge(
    client: Any,
    commands: AsyncIterable[str | bytes],
    emit: Callable[[dict[str, Any]], None],
    *,
    audio: AudioMode = "stream",
    wav_dir: str | Path | None = None,
) -> None:
    """Run the bridge protocol (``docs/npc.md``) over one connected client until ``commands`` ends
    (then lines in progress finish) or a ``quit`` command (then they are interrupted).

    ``commands`` yields JSON lines; ``emit`` gets each event as a dict, ready for ``orjson.dumps``.
    ``audio``: ``"stream"`` sends ``audio`` events with base64 16-bit PCM; ``"wav"`` writes each
    finished line to ``wav_dir/<line_id>.wav`` and names the file in its ``done`` event; ``"none"``
    sends no audio (timings only).
    """
    if audio == "wav":
        wav_dir = Path(wav_dir or "npc_wav")
        wav_dir.mkdir(parents=True, exist_ok=True)

    def on_event(event: NpcEvent) -> None:
        data = event.to_dict()
        if event.kind == "audio":
            pcm = data.pop("pcm")
            samples = data.pop("samples")
            if data.pop("format") != "pcm_s16le":
                pcm = np.clip(np.round(samples * 32_767.0), -32_768, 32_767).astype("<i2").tobytes()
            data["pcm_s16le"] = base64.b64encode(pcm).decode("ascii")
        elif event.kind == "done" and audio == "wav":
            assert wav_dir is not None
            handle = hook_lines.get(event.line_id or "")
            if handle is not None:
                path = Path(wav_dir) / f"{_slug(event.line_id or 'line')}.wav"
                from gateway.client_sync import write_wav

                data["wav"] = str(write_wav(path, handle.samples(), handle.sample_rate).resolve())
        if event.kind in ("done", "interrupted", "error"):
            hook_lines.pop(event.line_id or "", None)
        emit(data)

    hook_lines: dict[str, LineHandle] = {}
    hook = NpcHook(client, on_event=on_event, stream_audio=audio == "stream", keep_audio=audio == "wav")
    emit({
        "event": "ready",
        "voices": list(client.voices),
        "langs": list(client.langs),
        "sample_rate": int(client.settings.get("sample_rate", 24_000)),
        "audio": audio,
        "visemes": list(VISEMES),
    })
    tasks: set[asyncio.Task[Any]] = set()

    def error(message: str, code: str = "bad_command", **where: Any) -> None:
        emit({"event": "error", "code": code, "message": message, **where})

    async def say(npc: str, text: str, line_id: str | None) -> None:
        try:
            handle = await hook.start(npc, text, line_id=line_id)
            hook_lines[handle.line_id] = handle
            if handle.done():  # ended before the map knew it (no audio at all)
                hook_lines.pop(handle.line_id, None)
        except ValueError as exc:
            error(str(exc), "bad_field", npc=npc, line_id=line_id)
        except Exception as exc:  # the client refused before the line existed
            error(str(exc), getattr(exc, "code", "internal_error"), npc=npc, line_id=line_id)

    def spawn(coro: Any) -> None:
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    quit_requested = False
    async for raw in commands:
        raw = raw.strip() if isinstance(raw, str) else raw.decode("utf-8", "replace").strip()
        if not raw:
            continue
        try:
            command = orjson.loads(raw)
        except orjson.JSONDecodeError:
            error("command is not valid JSON")
            continue
        if not isinstance(command, dict) or not isinstance(command.get("cmd"), str):
            error('command must be a JSON object with a "cmd" string')
            continue
        cmd = command["cmd"]
        npc = command.get("npc")
        if cmd in ("say", "interrupt", "configure") and (not isinstance(npc, str) or not npc):
            error(f'"{cmd}" needs an "npc" string')
            continue
        npc = str(npc)
        if cmd == "say":
            line = command.get("line")
            line_id = command.get("id")
            if not isinstance(line, str) or not line.strip():
                error('"say" needs a non-empty "line" string', npc=npc)
                continue
            if line_id is not None and (not isinstance(line_id, str) or not 1 <= len(line_id) <= 128):
                error('"id" must be a string of 1..128 characters', npc=npc)
                continue
            # Serialised per NPC inside the hook; the command loop goes on (an interrupt may follow).
            spawn(say(npc, line, line_id))
            await asyncio.sleep(0)  # let it take its NPC's lock before the next command
        elif cmd == "interrupt":
            spawn(hook.interrupt(npc))
            await asyncio.sleep(0)
        elif cmd == "configure":
            try:
                settings = hook.configure(
                    npc,
                    voice=command.get("voice"),
                    speed=_number(command.get("speed")),
                    lang=command.get("lang"),
                    priority=command.get("priority"),
                )
            except (ValueError, TypeError) as exc:
                error(str(exc), "bad_field", npc=npc)
                continue
            emit({"event": "configured", "npc": npc, "voice": settings.voice, "speed": settings.speed, "lang": settings.lang})
        elif cmd == "voices":
            emit({"event": "voices", "voices": list(client.voices)})
        elif cmd == "quit":
            quit_requested = True
            break
        else:
            error(f"unknown cmd {cmd!r}; expected say, interrupt, configure, voices or quit")
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    if quit_requested:
        await hook.close()
    else:
        await hook.wait_idle()
    emit({"event": "bye"})


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("speed must be a number")
    return float(value)



async def _stdin_lines() -> AsyncIterator[bytes]:
    """Lines of stdin, read on a thread (portable: Windows pipes have no asyncio reader)."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[bytes | None] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin.buffer:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, name="npc-bridge-stdin", daemon=True).start()
    while (line := await lines.get()) is not None:
        yield line


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.integrations.npc``: the JSON-lines stdio bridge."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.integrations.npc",
        description="JSON-lines stdio bridge for game NPC voices (commands on stdin, events on stdout; see docs/npc.md)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", default="ws://127.0.0.1:8765", help="a running voxgate server")
    where.add_argument("--local", action="store_true", help="run a gateway in-process instead (no server needed)")
    parser.add_argument("--config", default=None, help="TOML config for --local")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override for --local")
    parser.add_argument("--token", default=None)
    parser.add_argument("--audio", choices=("stream", "wav", "none"), default="stream", help="how audio reaches the game")
    parser.add_argument("--wav-dir", default="npc_wav", help="folder for --audio wav")
    parser.add_argument("--frame-ms", type=int, default=100, help="audio per 'audio' event (10..1000 ms)")
    parser.add_argument("--voice", default=None, help="default voice for NPCs not configured")
    parser.add_argument("--no-warmup", action="store_true", help="skip the silent warm-up line before 'ready'")
    args = parser.parse_args(argv)
    # stdout carries events only: keep a private handle on it and send every stray print (a
    # library's, a RealtimeTTS engine's) to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    write_lock = threading.Lock()

    def emit(event: dict[str, Any]) -> None:
        with write_lock:
            out.write(orjson.dumps(event) + b"\n")

    async def bridge(client: Any) -> None:
        if not args.no_warmup:
            # The first line of a fresh server pays for G2P and kernel set-up (seconds on a CPU):
            # pay it before 'ready', not on the game's first line.
            await client.speak("Ready.").read_all()
        await serve_bridge(client, _stdin_lines(), emit, audio=args.audio, wav_dir=args.wav_dir)

    async def run() -> None:
        from gateway.client import VoxgateClient

        options = dict(alignment=True, frame_ms=args.frame_ms, voice=args.voice)
        if args.local:
            from gateway.config import load_config
            from gateway.server import Gateway

            overrides: dict[str, Any] = {"server.host": "127.0.0.1", "server.port": 0}
            for item in args.set:
                key, _, value = item.partition("=")
                overrides[key.strip()] = value.strip()
            async with Gateway(load_config(args.config, overrides=overrides)) as gateway:
                async with VoxgateClient.local(gateway, **options) as client:
                    await bridge(client)
        else:
            async with VoxgateClient(args.url, token=args.token, **options) as client:
                await bridge(client)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        emit({"event": "error", "code": getattr(exc, "code", "fatal"), "message": str(exc)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
