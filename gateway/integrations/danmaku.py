"""Danmaku responder: a live stream's comment bursts, read out in one voice, never late.

The I/O half; the decisions are ``gateway.integrations.danmaku_policy`` (re-exported here, so
``from gateway.integrations.danmaku import DanmakuPolicy`` keeps working).

``DanmakuResponder`` (asyncio) does the I/O: one ``VoxgateClient`` session, one utterance in flight at
a time, started only when the audio already queued for the stream is about to run out, so contexts are
spoken one after another into one PCM stream (an ``AudioSink``: ``WavSink``, the OBS overlay of
``danmaku_live``, a player command, or several through ``FanOutSink``). ``StreamClock`` lets a recorded
log be replayed faster than real time (``replay``, ``examples/danmaku_replay.py``); ``voxgate
danmaku`` (``danmaku_live``) feeds the same responder live.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import wave
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gateway.integrations import danmaku_policy
from gateway.integrations.danmaku_policy import *  # noqa: F403 - the policy's names, re-exported
from gateway.integrations.danmaku_policy import Comment, DanmakuConfig, DanmakuPolicy, DanmakuReport, DropReason, Utterance
from gateway.pcm import to_pcm16
from gateway.protocol import SAMPLE_RATE

__all__ = [
    *danmaku_policy.__all__,
    "load_comments",
    "parse_comment_lines",
    "parse_comment_line",
    "StreamClock",
    "AudioSink",
    "FanOutSink",
    "WavSink",
    "DanmakuResponder",
    "replay",
]

logger = logging.getLogger("voxgate.integrations.danmaku")


def load_comments(path: str | Path) -> list[Comment]:
    """Read a JSON-lines comment log (see ``examples/comments.jsonl``), in timestamp order. Blank
    lines and lines starting with ``//`` are skipped."""
    with open(path, encoding="utf-8") as f:
        comments = parse_comment_lines(f, id_prefix="c", where=f"{path}:")
    comments.sort(key=lambda c: c.at)
    return comments


def parse_comment_lines(lines: Iterable[str | bytes], *, id_prefix: str, where: str = "comment ") -> list[Comment]:
    """JSON-lines records as comments (ids ``{id_prefix}{line number}`` where missing); raises
    ``ValueError`` naming the first bad line (``{where}{number}: ...``)."""
    comments: list[Comment] = []
    for number, line in enumerate(lines, 1):
        try:
            comment = parse_comment_line(line, default_id=f"{id_prefix}{number}")
        except ValueError as exc:
            raise ValueError(f"{where}{number}: {exc}") from None
        if comment is not None:
            comments.append(comment)
    return comments


def parse_comment_line(line: str | bytes, *, default_id: str) -> Comment | None:
    """One JSON-lines record as a ``Comment`` (``default_id`` when it has none); None for a blank
    line or a ``//`` comment. Raises ``ValueError`` with what is wrong."""
    import orjson

    line = line.strip()
    if not line or line.startswith(b"//" if isinstance(line, bytes) else "//"):
        return None
    try:
        comment = Comment.from_dict(orjson.loads(line))
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None
    return comment if comment.id else dataclasses.replace(comment, id=default_id)




class StreamClock:
    """Stream time: seconds since the clock was made, running ``time_scale`` times faster than the
    event loop's clock (1.0 live; 4.0 replays a log four times faster, audio included)."""

    def __init__(self, time_scale: float = 1.0, *, wall: Callable[[], float] = time.monotonic) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.time_scale = time_scale
        self._wall = wall
        self._t0 = wall()

    def __call__(self) -> float:
        return (self._wall() - self._t0) * self.time_scale

    def wall_seconds(self, stream_seconds: float) -> float:
        """How long to sleep for ``stream_seconds`` of stream time."""
        return max(0.0, stream_seconds / self.time_scale)


class AudioSink(Protocol):
    """Where the streamer's audio goes: ``write`` gets each chunk with the stream time it plays at
    (chunks of one utterance are contiguous; utterances never overlap).

    A sink may also have ``begin_utterance(utterance, start_s)`` and ``end_utterance(utterance)``
    (called around an utterance's chunks; the OBS overlay shows captions with them)."""

    def write(self, samples: np.ndarray, sample_rate: int, start_s: float) -> None: ...


class FanOutSink:
    """Several sinks as one (a WAV and the overlay, say); the utterance hooks go to those that have them."""

    def __init__(self, *sinks: AudioSink) -> None:
        self.sinks = sinks

    def write(self, samples: np.ndarray, sample_rate: int, start_s: float) -> None:
        for sink in self.sinks:
            sink.write(samples, sample_rate, start_s)

    def begin_utterance(self, utterance: Utterance, start_s: float) -> None:
        _call_hook(self.sinks, "begin_utterance", utterance, start_s)

    def end_utterance(self, utterance: Utterance) -> None:
        _call_hook(self.sinks, "end_utterance", utterance)


def _call_hook(sinks: Iterable[AudioSink], name: str, *args: Any) -> None:
    for sink in sinks:
        hook = getattr(sink, name, None)
        if hook is not None:
            hook(*args)


class WavSink:
    """Collects the stream's audio on a timeline and writes one 16-bit mono WAV on ``close()``:
    silence where nobody was spoken to, so the file sounds like the stream did."""

    def __init__(self, path: str | Path, *, keep_gaps: bool = True) -> None:
        self.path = Path(path)
        self.keep_gaps = keep_gaps
        self.sample_rate: int | None = None
        self._parts: list[tuple[int, np.ndarray]] = []
        self._end = 0

    def write(self, samples: np.ndarray, sample_rate: int, start_s: float) -> None:
        if self.sample_rate is None:
            self.sample_rate = sample_rate
        elif sample_rate != self.sample_rate:
            raise ValueError(f"sample rate changed from {self.sample_rate} to {sample_rate}")
        start = max(self._end, round(start_s * sample_rate)) if self.keep_gaps else self._end
        self._parts.append((start, np.asarray(samples, dtype=np.float32)))
        self._end = start + len(samples)

    @property
    def duration_s(self) -> float:
        return 0.0 if not self.sample_rate else self._end / self.sample_rate

    def close(self) -> Path:
        """Write the file (24 kHz unless the session asked for another rate); returns its path."""
        rate = self.sample_rate or SAMPLE_RATE
        audio = np.zeros(self._end, dtype=np.float32)
        for start, samples in self._parts:
            audio[start : start + len(samples)] = samples
        pcm = to_pcm16(audio)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(self.path), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(rate)
            wav.writeframes(pcm.tobytes())
        return self.path


class DanmakuResponder:
    """Speaks the policy's choices into one audio stream through one voxgate session.

    Responsibilities: ask the policy for the next utterance when the stream is about to run out of
    audio (``lookahead_s`` before the end of what is queued), send it as one context with its
    priority, language and remaining TTL, place its audio right after the previous utterance's in
    the sink, and tell the policy how it went. One utterance is in flight at a time, so contexts
    never interleave. Not its job: choosing (``DanmakuPolicy``), connecting (pass a connected
    ``VoxgateClient``).

    Use: ``task = asyncio.create_task(responder.run())``; ``responder.submit(comment)`` as comments
    arrive; ``await responder.drain()`` to let the queue empty; ``await responder.close()``.
    """

    def __init__(
        self,
        client: Any,
        policy: DanmakuPolicy,
        sink: AudioSink,
        *,
        clock: StreamClock | None = None,
        lookahead_s: float = 1.0,
        max_late_s: float = 0.5,
        voice: str | None = None,
        speed: float | None = None,
    ) -> None:
        self.client = client
        self.policy = policy
        self.sink = sink
        self.clock = clock or StreamClock()
        self.lookahead_s = lookahead_s
        #: Audio whose first chunk arrives this long after its deadline is cancelled, not played.
        self.max_late_s = max_late_s
        self.voice = voice
        self.speed = speed
        #: Stream time when the audio written so far ends.
        self.playback_end = 0.0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._in_flight: asyncio.Task[None] | None = None

    def submit(self, comment: Comment) -> Admission:
        """Hand over one comment now (its TTL starts now). Returns the policy's decision."""
        admission = self.policy.add(comment)
        if admission.outcome == "queued":
            self._idle.clear()
        self._wake.set()
        return admission

    async def drain(self) -> None:
        """Wait until every queued comment is spoken or dropped and its audio is in the sink."""
        await self._idle.wait()

    async def close(self) -> None:
        """Stop after the utterance in flight; queued comments stay in the policy (not reported)."""
        self._closing = True
        self._wake.set()
        if self._in_flight is not None:
            with contextlib.suppress(Exception):
                await self._in_flight

    async def run(self) -> None:
        """The loop; returns after ``close()``. Run it as a task."""
        while not self._closing:
            now = self.clock()
            if self._in_flight is None and self.playback_end - now <= self.lookahead_s:
                utterance = self.policy.next_utterance(start_at=max(now, self.playback_end))
                if utterance is not None:
                    self._in_flight = asyncio.create_task(self._speak(utterance), name=f"danmaku-{utterance.id}")
                    self._in_flight.add_done_callback(self._on_spoken)
                    continue
            else:
                # Busy: still report what goes stale meanwhile, when it goes stale.
                self.policy.expire()
            if self._in_flight is None and self.policy.num_queued == 0:
                self._idle.set()
            await self._sleep(now)

    async def _sleep(self, now: float) -> None:
        waits: list[float] = []
        if self._in_flight is None and self.policy.num_queued:
            waits.append(self.playback_end - self.lookahead_s - now)
            ready_at = self.policy.next_ready_at()
            if ready_at is not None:
                waits.append(ready_at - now)
        deadline = self.policy.next_deadline()
        if deadline is not None:
            waits.append(deadline - now)
        timeout = None if not waits else self.clock.wall_seconds(min(waits)) + 0.001
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def _on_spoken(self, task: asyncio.Task[None]) -> None:
        self._in_flight = None
        if not task.cancelled() and task.exception() is not None:
            logger.error("speaking an utterance failed", exc_info=task.exception())
        self._wake.set()

    async def _speak(self, utterance: Utterance) -> None:
        from gateway.client import VoxgateClientError

        clock = self.clock
        sent_at = clock()
        ttl_ms = utterance.ttl_ms(sent_at, margin_s=self.policy.config.start_margin_s, time_scale=clock.time_scale)
        speech = self.client.speak(
            utterance.speech,
            context_id=utterance.id,
            voice=self.voice,
            speed=self.speed,
            lang=utterance.lang,
            priority=utterance.priority,
            ttl_ms=ttl_ms,
        )
        start_s: float | None = None
        num_samples = 0
        sample_rate = SAMPLE_RATE
        try:
            async for chunk in speech:
                if start_s is None:
                    start_s = max(clock(), self.playback_end)
                    if start_s > utterance.deadline + self.max_late_s:
                        # The engine started in time but the audio came too late to be relevant.
                        await speech.cancel()
                        self.policy.mark_dropped(utterance.id, "ttl_expired", by="local")
                        return
                    _call_hook([self.sink], "begin_utterance", utterance, start_s)
                sample_rate = chunk.sample_rate
                self.sink.write(chunk.samples, sample_rate, start_s + num_samples / sample_rate)
                num_samples += len(chunk.samples)
                self.playback_end = start_s + num_samples / sample_rate
        except VoxgateClientError as exc:
            logger.warning("utterance %s failed: %s", utterance.id, exc.code)
            if start_s is None:
                self.policy.mark_dropped(utterance.id, "engine_failed", by="server")
                return
        if start_s is not None:
            _call_hook([self.sink], "end_utterance", utterance)
        if start_s is None:
            reason: DropReason = "ttl_expired" if speech.dropped or speech.done is not None else "engine_failed"
            self.policy.mark_dropped(utterance.id, reason, by="server")
            return
        self.policy.mark_spoken(utterance.id, start_s=round(start_s, 3), audio_ms=round(num_samples * 1000.0 / sample_rate, 1))


async def replay(
    comments: Iterable[Comment],
    client: Any,
    sink: AudioSink,
    *,
    config: DanmakuConfig | None = None,
    time_scale: float = 1.0,
    lookahead_s: float = 1.0,
    voice: str | None = None,
) -> DanmakuReport:
    """Replay a comment log against a connected ``VoxgateClient``: each comment is submitted at its
    timestamp (``time_scale`` times faster), then the queue drains. Returns the report; call
    ``sink.close()`` afterwards to write the audio."""
    comments = sorted(comments, key=lambda c: c.at)
    clock = StreamClock(time_scale)
    langs = [lang for lang in client.langs if lang in ("en", "zh", "ja")] or ["en"]
    policy = DanmakuPolicy(config, langs=langs, clock=clock)
    responder = DanmakuResponder(client, policy, sink, clock=clock, lookahead_s=lookahead_s, voice=voice)
    runner = asyncio.create_task(responder.run(), name="danmaku-responder")
    t0 = comments[0].at if comments else 0.0
    try:
        for comment in comments:
            delay = clock.wall_seconds(comment.at - t0 - clock())
            if delay > 0:
                await asyncio.sleep(delay)
            responder.submit(comment)
        await responder.drain()
    finally:
        await responder.close()
        await runner
    logger.info("replay done: %s", policy.report.summary().splitlines()[0])
    return policy.report
