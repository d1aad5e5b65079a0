"""One client session as a sans-I/O state machine.

The hub (``gateway.hub``) feeds it (``receive_text``, ``receive_binary``, ``receive_timeout``,
``receive_audio``, ``receive_failure``, ``receive_dropped``) and drains it (``pieces_to_schedule``,
``contexts_to_cancel``, ``contexts_finished``, ``next_outgoing``). It never touches a socket, a thread
or a clock: ``now`` is always passed in.

Guarantees, testable without a socket:

- audio of a session only ever enters this session's outbox (pieces carry a reference to their
  context, and contexts to their session);
- ``seq`` is stamped when a frame leaves the outbox, so it is gap-free whatever is dropped before;
- after ``cancelled`` is sent no frame of that context follows: cancel purges the context's frames
  from the outbox and every later result for it is ignored;
- a context's pieces are delivered in speaking order, whatever order the engine finishes them in.
"""

from __future__ import annotations

import collections
import hmac
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from enum import IntEnum
from typing import Any

import numpy as np

from gateway.alignment import piece_alignment
from gateway.audio import ULAW_RATE, ContextEncoder
from gateway.audio_join import PauseLengths, with_pause
from gateway.codecs import check_packet_format
from gateway.config import SegmenterConfig, SessionConfig
from gateway.context import Context, ContextState, PieceRequest, Settings, _OutFrame, _OutMessage
from gateway.engine_cost import EngineCost
from gateway.engines.base import SAMPLE_RATE, Head, SynthesisResult
from gateway.errors import CloseCode, InvalidState, LimitExceeded, ProtocolError, VoxgateError
from gateway.guard import ReplayBuffer, Verdict, ViolationGuard
from gateway.ratelimit import TokenBucket
from gateway.protocol import (
    AUDIO_FORMATS,
    PROTOCOL_VERSION,
    CancelMessage,
    ClientMessage,
    FlushMessage,
    FrameFlags,
    SessionUpdate,
    TextMessage,
    context_id_of,
    dumps,
    encode_audio_frame,
    parse_client_message,
)
from gateway.text.pacing import make_segmenter

__all__ = ["SessionState", "ContextState", "Settings", "Context", "PieceRequest", "Session"]

logger = logging.getLogger("voxgate.session")


class SessionState(IntEnum):
    OPEN = 0
    DETACHED = 1  # the socket is gone; waiting for a resume within the grace period
    CLOSED = 2


class Session:
    """Protocol state of one client. Not thread-safe: the event loop owns it.

    Responsibilities: validate and apply client messages, cut text into pieces, put results back in
    order, frame and encode audio, number frames, enforce per-session limits. Not its job: sockets,
    timers, G2P, the engine.
    """

    def __init__(
        self,
        session_id: str,
        *,
        config: SessionConfig,
        segmenter_config: SegmenterConfig,
        voices: Sequence[str],
        langs: Sequence[str],
        now: float,
        resume_token: str = "",
        pace: Callable[[], EngineCost] | None = None,
    ) -> None:
        if not voices:
            raise ValueError("a session needs at least one voice")
        self.session_id = session_id
        #: The secret a client must present to resume (empty: this session cannot be resumed).
        self.resume_token = resume_token
        #: What log lines call this session: a prefix of the id, not a credential.
        self.log_tag = session_id[:8]
        self.config = config
        self.segmenter_config = segmenter_config
        #: The engine's measured speed (unmeasured until known): sizes pieces.
        self._pace = pace or EngineCost
        self._pauses = PauseLengths(0.0, segmenter_config.pause_clause_ms, segmenter_config.pause_sentence_ms)
        self.voices = list(voices)
        self.langs = list(langs)
        self.state = SessionState.OPEN
        default_format = config.default_format
        self.settings = Settings(
            voice=config.default_voice if config.default_voice in self.voices else self.voices[0],
            speed=1.0,
            lang=config.default_lang if config.default_lang in self.langs else self.langs[0],
            format=default_format,
            sample_rate=ULAW_RATE if default_format == "ulaw" else config.default_sample_rate,
            frame_ms=config.default_frame_ms,
            alignment=False,
        )
        self.contexts: dict[str, Context] = {}
        self._num_contexts_created = 0
        self._outbox: collections.deque[_OutFrame | _OutMessage] = collections.deque()
        self._queued_audio_ms = 0.0
        #: Encoded audio bytes and control/error messages waiting in the outbox (both bounded).
        self._queued_audio_bytes = 0
        self._num_queued_messages = 0
        self._next_seq = 0
        self._pieces: list[PieceRequest] = []
        self._to_cancel: list[Context] = []
        self._finished: list[Context] = []
        self._ttfa: list[float] = []
        self.paused = False
        #: The server is shutting down: no new text; open contexts are being finished.
        self.draining = False
        self._pause_changed = False
        self._paused_since: float | None = None
        self.close_code: CloseCode | None = None
        self.close_reason = ""
        self.last_activity = now
        self._buckets = {
            "messages": TokenBucket(config.max_messages_per_s, now),
            "chars": TokenBucket(config.max_chars_per_s, now),
        }
        #: Recently sent frames for ``resume``: (seq, bytes), bounded in frames and bytes.
        self._replay = ReplayBuffer(max_frames=config.replay_buffer_frames, max_bytes=config.replay_buffer_bytes)
        self._guard = ViolationGuard(
            max_violations=config.max_violations, window_s=config.violation_window_s, max_replies=config.max_error_replies
        )
        self._enqueue_message(None, self._created_message)

    # --- input from the client ------------------------------------------------------------------

    def receive_text(self, raw: str | bytes, now: float) -> None:
        """Handle one text frame. Errors are answered in the outbox; the session goes on."""
        self._require_open()
        self.last_activity = now
        try:
            try:
                self._check_rate("messages", 1, now)
            except LimitExceeded as exc:
                exc.context_id = context_id_of(raw)
                raise
            message = parse_client_message(raw)
            self._apply(message, now)
        except VoxgateError as exc:
            self.reject(exc, now)

    def receive_binary(self, now: float) -> None:
        self._require_open()
        self.last_activity = now
        try:
            self._check_rate("messages", 1, now)
            raise ProtocolError("binary messages are not accepted; send JSON text frames", code="binary_not_allowed")
        except VoxgateError as exc:
            self.reject(exc, now)

    def reject(self, error: VoxgateError, now: float) -> None:
        """Answer a client's violation, within the session's allowance: past ``max_replies`` in a
        window errors are counted but not answered (nor logged); past ``max_violations`` the session
        is closed with 1008."""
        verdict = self._guard.record(now, log_tag=self.log_tag, code=error.code)
        if verdict is Verdict.CLOSE:
            if self.close_code is None:
                closing = LimitExceeded(
                    f"over {self.config.max_violations} rejected messages within {self.config.violation_window_s:g} s",
                    code="too_many_violations",
                )
                closing.close_code = CloseCode.POLICY_VIOLATION
                self.send_error(closing)
        elif verdict is Verdict.REPLY:
            self.send_error(error)

    def receive_timeout(self, now: float) -> None:
        """Run what is due at ``now``: speak text waiting longer than ``max_buffer_ms``, close a slow
        consumer or an idle session. Call it at ``next_deadline()``."""
        if self.state is not SessionState.OPEN or self.close_code is not None:
            return
        for context in list(self.contexts.values()):
            if (
                context.state is ContextState.OPEN
                and context.segmenter.has_pending
                and now >= context.last_text_at + self.config.max_buffer_ms / 1000
            ):
                self._cut(context, context.segmenter.flush(), now)
        if self._paused_since is not None and now >= self._paused_since + self.config.slow_consumer_timeout_s:
            self._close_slow_consumer()
        elif not self._busy() and now >= self.last_activity + self.config.idle_timeout_s:
            self.close_code, self.close_reason = CloseCode.NORMAL, "idle timeout"

    def next_deadline(self) -> float | None:
        """When ``receive_timeout`` has something to do, if nothing else happens first."""
        if self.close_code is not None:
            return None  # closing: nothing is due any more (a past deadline would fire forever)
        deadlines = [
            c.last_text_at + self.config.max_buffer_ms / 1000
            for c in self.contexts.values()
            if c.state is ContextState.OPEN and c.segmenter.has_pending
        ]
        if self._paused_since is not None:
            deadlines.append(self._paused_since + self.config.slow_consumer_timeout_s)
        if not self._busy():
            deadlines.append(self.last_activity + self.config.idle_timeout_s)
        return min(deadlines) if deadlines else None

    # --- input from the engine side -------------------------------------------------------------

    def set_parts(self, request: PieceRequest, num_parts: int, now: float) -> None:
        """Tell how many engine pieces a text piece became after G2P (0: it had nothing to say)."""
        context = request.context
        request.num_parts = num_parts
        if context.state.is_finished():
            return
        context.parts[request.ordinal] = num_parts
        self._drain_results(context, now)

    def receive_audio(
        self, request: PieceRequest, part: int, result: SynthesisResult, now: float, words: Sequence[Any] = ()
    ) -> None:
        """Audio for part ``part`` of a piece; ignored when the context is cancelled or finished."""
        context = request.context
        if context.session is not self:
            raise InvalidState("audio routed to a session that does not own the context")
        if context.state.is_finished():
            return
        context.results[(request.ordinal, part)] = result
        if words:
            result.extra["words"] = words
        self._drain_results(context, now)

    def receive_head(self, request: PieceRequest, part: int, head: Head, now: float, words: Sequence[Any] = ()) -> bool:
        """The start of a part's audio, ahead of its result (``Engine.synthesize_with_heads``): sent
        at once, with the part's alignment (its timings are final already), when the part is next in
        speaking order; else it waits for its result as usual. Returns whether it was sent."""
        context = request.context
        if context.session is not self:
            raise InvalidState("audio routed to a session that does not own the context")
        key = (request.ordinal, part)
        if context.state.is_finished() or key in context.head_samples or key in context.results:
            return False
        if (context.next_ordinal, context.next_part) != key or request.ordinal not in context.parts:
            return False
        context.head_samples[key] = len(head.audio)
        if context.settings.alignment:
            self._enqueue_alignment(context, words, head.phonemes, head.durations)
        for frame in context.encoder.push(head.audio):
            self._enqueue_frame(context, frame, now)
        return True

    def receive_dropped(self, request: PieceRequest, part: int, reason: str, now: float) -> None:
        """A part was dropped unspoken (TTL): tell the client, continue with the next part."""
        context = request.context
        if context.state.is_finished():
            return
        self._enqueue_message(
            context,
            lambda: {
                "type": "context.dropped",
                "context_id": context.context_id,
                "reason": reason,
                "text_chars": len(request.text),
            },
        )
        context.results[(request.ordinal, part)] = None
        self._drain_results(context, now)

    def receive_failure(self, request: PieceRequest, error: VoxgateError, now: float) -> None:
        """Synthesis failed: the context ends with an error; the session and its other contexts go on."""
        context = request.context
        if context.state.is_finished():
            return
        self._finish_context(context, ContextState.FAILED, now)
        error.context_id = context.context_id
        self.send_error(error)

    # --- output ---------------------------------------------------------------------------------

    def pieces_to_schedule(self) -> list[PieceRequest]:
        pieces, self._pieces = self._pieces, []
        return pieces

    def contexts_to_cancel(self) -> list[Context]:
        """Contexts whose queued and running pieces the scheduler must drop."""
        contexts, self._to_cancel = self._to_cancel, []
        return contexts

    def contexts_finished(self) -> list[Context]:
        """Contexts that ended with all their audio delivered (the scheduler may forget them)."""
        contexts, self._finished = self._finished, []
        return contexts

    def take_ttfa(self) -> list[float]:
        """Seconds from a context's first speakable piece to its first frame leaving, per context."""
        samples, self._ttfa = self._ttfa, []
        return samples

    def take_pause_change(self) -> bool | None:
        """None if backpressure did not change since the last call, else the new paused state."""
        if not self._pause_changed:
            return None
        self._pause_changed = False
        return self.paused

    @property
    def has_outgoing(self) -> bool:
        return bool(self._outbox)

    @property
    def queued_audio_ms(self) -> float:
        return self._queued_audio_ms

    def next_outgoing(self, now: float) -> str | bytes | None:
        """Pop the next message to send: ``str`` for a text frame, ``bytes`` for audio. Frames get
        their ``seq`` here, so numbering is gap-free whatever was purged before."""
        if not self._outbox:
            return None
        item = self._outbox.popleft()
        if isinstance(item, _OutMessage):
            self._num_queued_messages -= 1
            return dumps(item.render())
        self._queued_audio_ms -= item.duration_ms
        self._queued_audio_bytes -= len(item.payload)
        self._update_pause(now)
        seq = self._next_seq
        self._next_seq += 1
        context = item.context
        context.last_seq = seq
        if not context.first_frame_sent:
            context.first_frame_sent = True
            context.first_frame_at = now
            if context.first_piece_at is not None:
                self._ttfa.append(max(0.0, now - context.first_piece_at))
        data = encode_audio_frame(seq, context.index, item.sample_offset, item.flags, item.payload)
        self._replay.append(seq, data)
        return data

    def send_error(self, error: VoxgateError) -> None:
        message: dict[str, Any] = {"type": "error", "code": error.code, "message": str(error)}
        if error.context_id is not None:
            message["context_id"] = error.context_id
        logger.info("session %s: error %s: %s", self.log_tag, error.code, error)
        self._enqueue_message(None, lambda: message)
        if error.close_code is not None:
            self.close_code, self.close_reason = error.close_code, error.code

    # --- lifecycle ------------------------------------------------------------------------------

    def detach(self, now: float) -> None:
        """The socket closed. Work in progress is dropped at once (nothing more is synthesized for a
        client that is gone; drain ``contexts_to_cancel``). With resume enabled the session then waits
        ``resume_grace_s`` for the client to come back with its last ``seq``; otherwise it closes."""
        for context in [c for c in self.contexts.values() if not c.state.is_finished()]:
            self._finish_context(context, ContextState.CANCELLED, now)
            self._enqueue_message(
                None,
                lambda c=context: {"type": "cancelled", "context_id": c.context_id, "last_seq": self._last_seq(), "reason": "disconnected"},
            )
        if self.config.resume_grace_s > 0 and self.state is SessionState.OPEN and self.close_code is None:
            self.state = SessionState.DETACHED
            self.last_activity = now
        else:
            self.close()

    def drain(self, now: float) -> None:
        """The server is shutting down: refuse new text and finish every open context as if its
        final flush had arrived, so that all its text is spoken and ``context.done`` sent."""
        self.draining = True
        for context in list(self.contexts.values()):
            if context.state is ContextState.OPEN:
                self._cut(context, context.segmenter.flush(), now)
                context.state = ContextState.CLOSING
                self._drain_results(context, now)

    def close(self) -> list[Context]:
        """End the session: every open context is cancelled; returns them for the scheduler."""
        dropped = [c for c in self.contexts.values() if not c.state.is_finished()]
        for context in dropped:
            context.state = ContextState.CANCELLED
        self.contexts.clear()
        self._clear_outbox()
        self.state = SessionState.CLOSED
        return dropped

    def resume(self, last_seq: int, now: float, *, token: str) -> list[bytes] | None:
        """A client reconnected: frames after ``last_seq`` to send again, or None when ``token`` is
        not this session's resume token or the replay buffer no longer holds them (the caller answers
        ``resume_failed``, the same answer either way)."""
        if self.state is not SessionState.DETACHED:
            return None
        # Constant time: the token is the credential (the session id travels in logs and URLs).
        if not self.resume_token or not hmac.compare_digest(token.encode(), self.resume_token.encode()):
            return None
        if last_seq + 1 < self._next_seq and (not self._replay or self._replay[0][0] > last_seq + 1):
            return None
        self.state = SessionState.OPEN
        self.last_activity = now
        return [data for seq, data in self._replay if seq > last_seq]

    # --- internals ------------------------------------------------------------------------------

    def _created_message(self) -> dict[str, Any]:
        return {
            "type": "session.created",
            "session_id": self.session_id,
            "protocol": PROTOCOL_VERSION,
            "audio": {"format": self.settings.format, "sample_rate": self.settings.sample_rate, "channels": 1},
            "voices": self.voices,
            "langs": self.langs,
            "formats": list(AUDIO_FORMATS),
            "settings": self.settings.as_dict(),
        } | ({"resume_token": self.resume_token} if self.resume_token else {})

    def _require_open(self) -> None:
        if self.state is not SessionState.OPEN:
            raise InvalidState(f"session {self.session_id} is {self.state.name}")

    def _apply(self, message: ClientMessage, now: float) -> None:
        if isinstance(message, TextMessage):
            self._apply_text(message, now)
        elif isinstance(message, FlushMessage):
            self._apply_flush(message, now)
        elif isinstance(message, CancelMessage):
            self._apply_cancel(message, now)
        elif isinstance(message, SessionUpdate):
            self._apply_update(message)

    def _check_voice_lang(self, voice: str | None, lang: str | None, context_id: str | None = None) -> None:
        if voice is not None and voice not in self.voices:
            raise ProtocolError(
                f"unknown voice {voice[:64]!r}; this server offers {', '.join(self.voices)}",
                code="unknown_voice",
                context_id=context_id,
            )
        if lang is not None and lang not in self.langs:
            raise ProtocolError(
                f"unknown lang {lang[:16]!r}; this server speaks {', '.join(self.langs)}",
                code="unknown_lang",
                context_id=context_id,
            )

    def _apply_update(self, message: SessionUpdate) -> None:
        self._check_voice_lang(message.voice, message.lang)
        changes = {k: getattr(message, k) for k in Settings.__dataclass_fields__ if getattr(message, k) is not None}
        settings = replace(self.settings, **changes)
        if settings.format == "ulaw":
            settings = replace(settings, sample_rate=ULAW_RATE)
        problem = check_packet_format(settings.format, settings.sample_rate, settings.frame_ms)
        if problem is not None:
            raise ProtocolError(problem, code="bad_field")
        self.settings = settings
        self._enqueue_message(None, lambda: {"type": "session.updated", "settings": settings.as_dict()})

    def _apply_text(self, message: TextMessage, now: float) -> None:
        cid = message.context_id
        if self.draining:
            raise VoxgateError("server shutting down; no new text accepted", code="shutting_down", context_id=cid)
        if not message.text:
            raise ProtocolError("text must not be empty", code="empty_text", context_id=cid)
        if len(message.text) > self.config.max_text_chars_per_message:
            raise ProtocolError(
                f"text over {self.config.max_text_chars_per_message} characters in one message",
                code="text_too_long",
                context_id=cid,
            )
        self._check_rate("chars", len(message.text), now, context_id=cid)
        context = self.contexts.get(cid)
        if context is None:
            context = self._open_context(message, now)
        elif context.state is not ContextState.OPEN:
            raise ProtocolError(f"context {cid!r} was ended by a final flush", code="bad_field", context_id=cid)
        if context.text_chars + len(message.text) > self.config.max_text_chars_per_context:
            raise ProtocolError(
                f"context text over {self.config.max_text_chars_per_context} characters",
                code="text_too_long",
                context_id=cid,
            )
        context.text_chars += len(message.text)
        context.last_text_at = now
        self._cut(context, context.segmenter.feed(message.text), now)

    def _open_context(self, message: TextMessage, now: float) -> Context:
        open_contexts = sum(1 for c in self.contexts.values() if not c.state.is_finished())
        if open_contexts >= self.config.max_contexts:
            raise LimitExceeded(
                f"over {self.config.max_contexts} open contexts; finish or cancel one first",
                code="too_many_contexts",
                context_id=message.context_id,
            )
        self._check_voice_lang(message.voice, message.lang, message.context_id)
        settings = replace(
            self.settings,
            voice=message.voice or self.settings.voice,
            speed=message.speed if message.speed is not None else self.settings.speed,
            lang=message.lang or self.settings.lang,
        )
        seg = self.segmenter_config
        context = Context(
            session=self,
            context_id=message.context_id,
            index=self._num_contexts_created,
            settings=settings,
            priority=message.priority or 0,
            ttl_ms=message.ttl_ms,
            segmenter=make_segmenter(seg, self._pace(), settings.speed, settings.lang),
            encoder=ContextEncoder(
                audio_format=settings.format,
                sample_rate=settings.sample_rate,
                frame_ms=settings.frame_ms,
                source_rate=SAMPLE_RATE,
            ),
            created_at=now,
        )
        self._num_contexts_created += 1
        self.contexts[context.context_id] = context
        self._enqueue_message(
            context, lambda: {"type": "context.started", "context_id": context.context_id, "index": context.index}
        )
        return context

    def _apply_flush(self, message: FlushMessage, now: float) -> None:
        context = self.contexts.get(message.context_id)
        if context is None:
            raise ProtocolError(f"no open context {message.context_id!r}", code="unknown_context", context_id=message.context_id)
        if context.state is ContextState.OPEN:
            self._cut(context, context.segmenter.flush(), now)
            if message.final:
                context.state = ContextState.CLOSING
                self._drain_results(context, now)

    def _apply_cancel(self, message: CancelMessage, now: float) -> None:
        if message.context_id is None:
            targets = [c for c in self.contexts.values() if not c.state.is_finished()]
            if not targets:
                self._enqueue_message(None, lambda: {"type": "cancelled", "context_id": None, "last_seq": self._last_seq()})
        else:
            context = self.contexts.get(message.context_id)
            targets = [context] if context is not None else []
            if context is None:
                cid = message.context_id
                self._enqueue_message(None, lambda: {"type": "cancelled", "context_id": cid, "last_seq": self._last_seq()})
        for context in targets:
            self._finish_context(context, ContextState.CANCELLED, now)
            self._enqueue_message(
                None, lambda c=context: {"type": "cancelled", "context_id": c.context_id, "last_seq": self._last_seq()}
            )

    def _last_seq(self) -> int | None:
        return self._next_seq - 1 if self._next_seq else None

    def _cut(self, context: Context, texts: list[str], now: float) -> None:
        for text in texts:
            if not text.strip():
                continue
            request = PieceRequest(
                context=context,
                ordinal=context.num_pieces,
                text=text,
                is_first=context.num_pieces == 0,
                created_at=now,
            )
            if context.first_piece_at is None:
                context.first_piece_at = now
            context.num_pieces += 1
            self._pieces.append(request)

    def _drain_results(self, context: Context, now: float) -> None:
        """Emit every result that is next in speaking order; end the context when all are out."""
        while context.next_ordinal in context.parts:
            num_parts = context.parts[context.next_ordinal]
            key = (context.next_ordinal, context.next_part)
            if context.next_part < num_parts:
                if key not in context.results:
                    return
                result = context.results.pop(key)
                if result is not None:
                    self._emit_audio(context, result, now, head=context.head_samples.pop(key, None))
                context.next_part += 1
                continue
            del context.parts[context.next_ordinal]
            context.next_ordinal += 1
            context.next_part = 0
        if context.state is ContextState.CLOSING and not context.has_unresolved_pieces:
            self._finish_context(context, ContextState.DONE, now)

    def _emit_audio(self, context: Context, result: SynthesisResult, now: float, *, head: int | None = None) -> None:
        """A part's result, in speaking order: its alignment, then its audio; when a head of it went
        out before (``receive_head``: ``head`` samples, with the alignment), only the rest."""
        result = with_pause(result, self._pauses)
        if context.settings.alignment and head is None:
            self._enqueue_alignment(context, result.extra.get("words", ()), result.phonemes, result.durations)
        context.source_samples += len(result.audio)
        for frame in context.encoder.push(result.audio[head or 0 :]):
            self._enqueue_frame(context, frame, now)

    def _enqueue_alignment(self, context: Context, words: Sequence[Any], phonemes: str, durations: np.ndarray) -> None:
        """The word and phoneme timings of the part whose audio goes out next."""
        offset_ms = context.source_samples * 1000.0 / SAMPLE_RATE
        aligned_words, phoneme_times = piece_alignment(words, phonemes, durations, offset_ms)
        self._enqueue_message(
            context,
            lambda: {
                "type": "alignment",
                "context_id": context.context_id,
                "words": aligned_words,
                "phonemes": phoneme_times,
            },
            purge_on_cancel=True,
        )

    def _enqueue_frame(self, context: Context, samples: np.ndarray, now: float) -> None:
        flags = FrameFlags.FIRST if context.samples_out == 0 and context.last_frame is None else FrameFlags.NONE
        frame = _OutFrame(
            context=context,
            payload=context.encoder.encode(samples),
            sample_offset=context.samples_out,
            flags=flags,
            duration_ms=len(samples) * 1000.0 / context.settings.sample_rate,
        )
        context.samples_out += len(samples)
        context.last_frame = frame
        self._outbox.append(frame)
        self._queued_audio_ms += frame.duration_ms
        self._queued_audio_bytes += len(frame.payload)
        self._update_pause(now)

    def _finish_context(self, context: Context, state: ContextState, now: float) -> None:
        if context.state.is_finished():
            return
        if state is ContextState.DONE:
            for frame in context.encoder.finish():
                self._enqueue_frame(context, frame, now)
            last = context.last_frame
            if last is not None and last in self._outbox:
                last.flags |= FrameFlags.LAST
            elif last is not None:
                # The last frame already left: a zero-length frame carries the end-of-context flag.
                self._enqueue_frame(context, np.zeros(0, dtype=np.float32), now)
                assert context.last_frame is not None
                context.last_frame.flags = FrameFlags.LAST
            self._enqueue_message(
                None,
                lambda: {
                    "type": "context.done",
                    "context_id": context.context_id,
                    "last_seq": context.last_seq,
                    "audio_ms": round(context.samples_out * 1000.0 / context.settings.sample_rate, 3),
                },
            )
            self._finished.append(context)
        else:
            self._purge(context, now)
            self._to_cancel.append(context)
        context.state = state
        context.results.clear()
        if self.contexts.get(context.context_id) is context:
            del self.contexts[context.context_id]

    def _purge(self, context: Context, now: float) -> None:
        kept: collections.deque[_OutFrame | _OutMessage] = collections.deque()
        for item in self._outbox:
            if item.context is context and (isinstance(item, _OutFrame) or item.purge_on_cancel):
                if isinstance(item, _OutFrame):
                    self._queued_audio_ms -= item.duration_ms
                    self._queued_audio_bytes -= len(item.payload)
                else:
                    self._num_queued_messages -= 1
                continue
            kept.append(item)
        self._outbox = kept
        self._update_pause(now)

    def _enqueue_message(self, context: Context | None, render: Callable[[], dict[str, Any]], *, purge_on_cancel: bool = False) -> None:
        if self._num_queued_messages >= self.config.max_queued_messages:
            # Control and error messages count toward the outbox bound too: a client that never
            # reads them is closed (one last error past the bound says why), not buffered forever.
            if self.close_code is not None:
                return
            logger.warning("session %s: %d messages unread; closing it", self.log_tag, self._num_queued_messages)
            self.close_code, self.close_reason = CloseCode.POLICY_VIOLATION, "outbox_full"
            render = lambda: {"type": "error", "code": "outbox_full", "message": "too many unread messages"}
            context, purge_on_cancel = None, False
        self._outbox.append(_OutMessage(context, render, purge_on_cancel))
        self._num_queued_messages += 1

    def _update_pause(self, now: float) -> None:
        high_bytes = self.config.output_high_water_bytes
        if not self.paused and (self._queued_audio_ms > self.config.output_high_water_ms or self._queued_audio_bytes > high_bytes):
            self.paused, self._pause_changed = True, True
            self._paused_since = now
        elif self.paused and self._queued_audio_ms <= self.config.output_low_water_ms and self._queued_audio_bytes <= high_bytes // 2:
            self.paused, self._pause_changed = False, True
            self._paused_since = None

    def _clear_outbox(self) -> None:
        self._outbox.clear()
        self._queued_audio_ms = 0.0
        self._queued_audio_bytes = 0
        self._num_queued_messages = 0

    def _close_slow_consumer(self) -> None:
        self._clear_outbox()
        # Not paused any more as far as deadlines go: the close is due once, not on every loop turn.
        self._paused_since = None
        error = VoxgateError(
            f"client did not read its audio for {self.config.slow_consumer_timeout_s:g} s",
            code="slow_consumer",
        )
        error.close_code = CloseCode.POLICY_VIOLATION
        self.send_error(error)

    def _busy(self) -> bool:
        return bool(self._outbox) or any(not c.state.is_finished() for c in self.contexts.values())

    def _check_rate(self, bucket: str, amount: float, now: float, *, context_id: str | None = None) -> None:
        if not self._buckets[bucket].take(amount, now):
            raise LimitExceeded(f"over the session's {bucket} rate limit; slow down", code="rate_limited", context_id=context_id)
