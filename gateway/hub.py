"""The hub: every session of a gateway, its detached sessions and the scheduler, as one sans-I/O
object that decides and never waits.

Like python-websockets' ``Protocol`` under its asyncio ``Connection``: no socket, no thread, no event
loop, no clock (``now`` comes in with every input). The I/O layer (``gateway.server``) feeds it
events and carries out what it asks, in any order it likes between two inputs::

    entry = hub.open(headers=..., query=..., now=now)   # a connection arrived (or ``Refusal``)
    hub.receive(entry, raw, now)                         # each message it sends
    hub.connection_lost(entry, close_code, now)          # its socket is gone: detach or end
    hub.timeout(entry, now)                              # at ``deadline_of(entry)``
    hub.phonemes_ready(job, parts_or_error, now)         # a G2P job finished
    job = hub.next_batch(now)                            # the engine is idle: what to run
    hub.batch_done(job, results, now) / hub.batch_failed(job, now)
    hub.drain(now) ... hub.stop()                        # SIGTERM

and after each input drains the outputs: ``phonemize_to_run()`` / ``phonemize_to_cancel()`` (work
for the G2P thread), ``timers_to_arm()``, ``sessions_to_write()`` (then ``next_outgoing(entry,
now)`` until None), ``connections_to_close()``, ``sessions_ended()``, ``take_scheduler_wake()``.

Decided here, not in the I/O layer: admission (origin, token, ``max_sessions`` counting detached
sessions), oversized and binary messages, resume (token in constant time, bound to the auth token
the session was opened with, expiry, replay from ``last_seq``), detach vs end on a lost
connection, pieces and their deadlines, expired and failed pieces, the drain on shutdown.
"""

from __future__ import annotations

import collections
import hmac
import logging
import math
import secrets
import uuid
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from gateway.access import authenticated, check_access, credential_digest
from gateway.config import Config
from gateway.engines.base import Head, ScheduleHints, SynthesisItem
from gateway.errors import CloseCode, EngineFailed, ProtocolError, SessionRefused
from gateway.metrics import Metrics
from gateway.protocol import SAMPLE_RATE, STREAM_PATH, context_id_of, dumps
from gateway.scheduler import FINISHED_REASONS, Batch, Piece, PieceStatus, Scheduler
from gateway.session import Context, PieceRequest, Session, SessionState
from gateway.text.g2p import G2PTooSlow

__all__ = [
    "SECONDS_PER_PHONEME",
    "STREAM_PATH",
    "BatchJob",
    "Hub",
    "PhonemizeJob",
    "Refusal",
    "SessionEntry",
    "schedule_hints",
]

logger = logging.getLogger("voxgate.hub")

#: Kokoro speaks ~12-14 phonemes per second at speed 1: an estimate for playback deadlines.
SECONDS_PER_PHONEME = 0.075
#: Close codes that mean "the client is done": its session ends instead of waiting for a resume.
_CLEAN_CLOSES = (CloseCode.NORMAL, CloseCode.GOING_AWAY)


@dataclass(eq=False)
class SessionEntry:
    """What the hub keeps per session beside the sans-I/O ``Session``."""

    session: Session
    #: Digest of the auth token the session was opened with: a resume must present the same one.
    auth_digest: bytes
    #: A connection carries the session; False: detached, waiting for a resume until ``expires_at``.
    attached: bool = True
    expires_at: float | None = None
    #: What must leave before the session's outbox: a resume's answer and the replayed frames.
    preamble: collections.deque[str | bytes] = field(default_factory=collections.deque)
    #: The connection was asked to close (asked once per connection).
    closing: bool = False

    @property
    def session_id(self) -> str:
        return self.session.session_id

    @property
    def close_request(self) -> tuple[int, str] | None:
        """(code, reason) once the session wants its connection closed (after its outbox is sent)."""
        code = self.session.close_code
        return None if code is None else (int(code), self.session.close_reason)


@dataclass(frozen=True, slots=True)
class Refusal:
    """An ``open`` refused: send ``messages``, then close with ``close_code``."""

    messages: list[str]
    close_code: int
    reason: str


@dataclass(frozen=True, slots=True, eq=False)
class PhonemizeJob:
    """Text the G2P thread must turn into phonemes; hand the result to ``Hub.phonemes_ready``."""

    entry: SessionEntry
    request: PieceRequest

    @property
    def text(self) -> str:
        return self.request.text

    @property
    def lang(self) -> str:
        return self.request.context.settings.lang


@dataclass(frozen=True, slots=True, eq=False)
class BatchJob:
    """A batch for the engine thread: run ``items``, hand the results to ``Hub.batch_done``."""

    batch: Batch
    items: list[SynthesisItem]


class Hub:
    """Owns the sessions (attached and detached) and the scheduler. Not thread-safe: one event
    loop (or one test) calls it.

    Not its job: sockets, tasks, timers, threads, G2P, the engine: the caller runs those and reports
    back through the inputs. Metrics are counted here (they are plain counters, not I/O).
    """

    def __init__(
        self,
        config: Config,
        *,
        voices: Sequence[str],
        langs: Sequence[str],
        engine_preferred_batch: int = 1,
        engine_max_batch: int = 1,
        schedules_remotely: bool = False,
        metrics: Metrics | None = None,
        new_session_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        new_resume_token: Callable[[], str] = lambda: secrets.token_urlsafe(32),
    ) -> None:
        self.config = config
        self.voices = list(voices)
        self.langs = list(langs)
        self.metrics = metrics or Metrics()
        self.scheduler = Scheduler(
            config.scheduler, engine_preferred_batch=engine_preferred_batch, engine_max_batch=engine_max_batch
        )
        self.schedules_remotely = schedules_remotely
        self._new_session_id = new_session_id
        self._new_resume_token = new_resume_token
        #: Every session by id, attached or detached (detached ones count toward ``max_sessions``).
        self.sessions: dict[str, SessionEntry] = {}
        #: Shutting down: no new connection is admitted; open contexts are being finished.
        self.draining = False
        self._to_phonemize: list[PhonemizeJob] = []
        self._g2p_cancels: list[Hashable] = []
        self._g2p_owner_cancels: list[Hashable] = []
        self._timers: dict[SessionEntry, float | None] = {}
        self._to_write: dict[SessionEntry, None] = {}
        self._to_close: list[tuple[SessionEntry, int, str]] = []
        self._ended: list[SessionEntry] = []
        self._wake_scheduler = False

    # --- admission ------------------------------------------------------------------------------

    def check_handshake(
        self, path: str, headers: Mapping[str, str], query: Mapping[str, list[str]], *, adapter: Any = None
    ) -> tuple[int, str] | None:
        """(status, text) when a WebSocket handshake to ``path`` must be refused; None: go on.
        ``adapter``: the vendor adapter serving ``path`` (``gateway.adapters.find_adapter``)."""
        if path != STREAM_PATH and adapter is None:
            return 404, f"WebSocket endpoint is {STREAM_PATH}"
        refusal = self.check_access(headers, query, adapter=adapter)
        if refusal is not None:
            self.metrics.sessions_refused.labels(reason=str(refusal[0])).inc()
            return refusal
        if self.draining:
            return 503, "server shutting down"
        return None

    def check_access(
        self, headers: Mapping[str, str], query: Mapping[str, list[str]], *, adapter: Any = None
    ) -> tuple[int, str] | None:
        return check_access(self.config.server, headers, query, adapter=adapter)

    def authenticated(self, headers: Mapping[str, str], query: Mapping[str, list[str]]) -> bool:
        return authenticated(self.config.server, headers, query)

    # --- inputs: connections --------------------------------------------------------------------

    def open(self, *, headers: Mapping[str, str], query: str, now: float) -> SessionEntry | Refusal:
        """A connection arrived (its handshake passed ``check_handshake``): resume the session it
        names or open a new one, within ``max_sessions`` (detached sessions count: they hold their
        replay buffers). A failed resume is answered with ``resume_failed`` and a new session."""
        auth_digest = credential_digest(headers, query)
        params = parse_qs(query)
        failed: list[str] = []
        if (params.get("session_id") or [""])[0]:
            entry = self._resume(params, auth_digest, now)
            if entry is not None:
                self.metrics.active_sessions.inc()
                self._pump(entry)
                return entry
            failed.append(
                dumps(
                    {
                        "type": "error",
                        "code": "resume_failed",
                        "message": "session unknown, expired or frames no longer buffered; starting a new session",
                    }
                )
            )
        limit = self.config.server.max_sessions
        if len(self.sessions) >= limit:
            self.metrics.sessions_refused.labels(reason="busy").inc()
            error = SessionRefused(f"server at its limit of {limit} sessions; try again later")
            busy = dumps({"type": "error", "code": error.code, "message": str(error)})
            return Refusal([*failed, busy], CloseCode.TRY_AGAIN_LATER, "busy")
        session = Session(
            self._new_session_id(),
            config=self.config.session,
            segmenter_config=self.config.segmenter,
            voices=self.voices,
            langs=self.langs,
            now=now,
            resume_token=self._new_resume_token() if self.config.session.resume_grace_s > 0 else "",
            pace=lambda: self.scheduler.cost,
        )
        entry = SessionEntry(session=session, auth_digest=auth_digest, preamble=collections.deque(failed))
        self.sessions[session.session_id] = entry
        self.metrics.active_sessions.inc()
        self._pump(entry)
        return entry

    def _resume(self, params: Mapping[str, list[str]], auth_digest: bytes, now: float) -> SessionEntry | None:
        """Reattach the detached session named in ``?session_id=...&resume_token=...&last_seq=N``.
        The resume token is the credential: compared in constant time (in ``Session.resume``), only
        with the auth token the session was opened with, and never logged."""
        entry = self.sessions.get(params["session_id"][0])
        token = (params.get("resume_token") or [""])[0]
        try:
            last_seq = int((params.get("last_seq") or ["-1"])[0])
        except ValueError:
            return None
        if entry is None or entry.attached or last_seq < -1 or not hmac.compare_digest(entry.auth_digest, auth_digest):
            return None
        replay = entry.session.resume(last_seq, now, token=token)
        if replay is None:
            return None
        entry.attached, entry.expires_at, entry.closing = True, None, False
        resumed = {"type": "session.resumed", "session_id": entry.session_id, "replayed": len(replay)}
        entry.preamble = collections.deque([dumps(resumed), *replay])
        return entry

    def receive(self, entry: SessionEntry, raw: str | bytes, now: float) -> bool:
        """One message from the session's connection. False: stop reading it (the session is no
        longer open). A session that is closing reads and discards its input until the close."""
        session = entry.session
        if session.state is not SessionState.OPEN:
            return False
        if session.close_code is not None:
            self._request_close(entry)
            return True
        if isinstance(raw, bytes):
            session.receive_binary(now)
        elif len(raw) > self.config.server.max_message_bytes:
            limit = self.config.server.max_message_bytes
            error = ProtocolError(f"message over {limit} bytes", code="message_too_big", context_id=context_id_of(raw))
            session.reject(error, now)
        else:
            session.receive_text(raw, now)
        self._pump(entry)
        return True

    def connection_lost(self, entry: SessionEntry, close_code: int | None, now: float) -> None:
        """The session's connection ended with ``close_code`` (None: no closing handshake). A clean
        close from the client (1000, 1001) ends the session; a lost connection detaches it for
        ``session.resume_grace_s`` (0: it ends too). Work in progress is dropped either way."""
        self.metrics.active_sessions.dec()
        session = entry.session
        if session.state is SessionState.OPEN:
            if close_code in _CLEAN_CLOSES:
                for context in session.close():
                    self._cancel_context(context)
            else:
                session.detach(now)
        entry.attached = False
        entry.preamble.clear()
        self._to_write.pop(entry, None)
        if session.state is SessionState.DETACHED:
            entry.expires_at = now + self.config.session.resume_grace_s
            self._pump(entry)
        else:
            self._pump(entry)
            self._drop(entry)

    def timeout(self, entry: SessionEntry, now: float) -> None:
        """``deadline_of(entry)`` passed: run the session's timeouts, or end a detached session whose
        resume grace is over."""
        if entry.session_id not in self.sessions:
            return
        if not entry.attached:
            if entry.expires_at is not None and now >= entry.expires_at:
                self._drop(entry)
            return
        if entry.session.state is not SessionState.OPEN:
            return
        entry.session.receive_timeout(now)
        self._pump(entry)

    def deadline_of(self, entry: SessionEntry) -> float | None:
        """When ``timeout(entry, ...)`` has something to do, if nothing else happens first."""
        return entry.session.next_deadline() if entry.attached else entry.expires_at

    def next_deadline(self) -> float | None:
        """The earliest session deadline (for a caller that keeps one timer, such as a test)."""
        deadlines = [d for e in self.sessions.values() if (d := self.deadline_of(e)) is not None]
        return min(deadlines) if deadlines else None

    # --- inputs: G2P and engine -----------------------------------------------------------------

    def phonemes_ready(self, job: PhonemizeJob, result: Sequence[Any] | BaseException, now: float) -> None:
        """A G2P job finished with its phoneme pieces, or failed with an exception. Its pieces go to
        the scheduler, each with its deadline: a context's first piece is due at once, a later one
        when the audio before it will have played."""
        entry, request = job.entry, job.request
        context = request.context
        if context.state.is_finished():
            return
        session = entry.session
        if isinstance(result, G2PTooSlow):
            logger.info("session %s: G2P over its budget on a %d-character piece", session.log_tag, len(request.text))
            session.receive_failure(request, ProtocolError(str(result), code="text_too_slow"), now)
            self.metrics.errors.labels(code="text_too_slow").inc()
            self._pump(entry)
            return
        if isinstance(result, BaseException):
            logger.error("G2P failed", exc_info=result)
            session.receive_failure(request, EngineFailed("could not turn this text into phonemes"), now)
            self.metrics.errors.labels(code="engine_failed").inc()
            self._pump(entry)
            return
        parts = [p for p in result if p.phonemes]
        session.set_parts(request, len(parts), now)
        ttl = context.ttl_ms
        for index, part in enumerate(parts):
            first = request.is_first and index == 0
            # Until playback starts a later piece is not urgent at all: guessing an early start made
            # waiting turns jump ahead of turns already playing.
            deadline: float | Callable[[], float] = now if first else _playback_deadline(context, context.estimated_audio_s)
            context.estimated_audio_s += len(part.phonemes) * SECONDS_PER_PHONEME / context.settings.speed
            self.scheduler.add(
                Piece(
                    session_key=session,
                    context_key=context,
                    phonemes=part.phonemes,
                    voice=context.settings.voice,
                    speed=context.settings.speed,
                    arrival=now,
                    priority=context.priority,
                    is_first=first,
                    start_deadline=None if ttl is None else request.created_at + ttl / 1000,
                    deadline=deadline,
                    payload=(entry, request, index, part),
                    text=part.text,
                    left_context=part.left_context,
                    right_context=part.right_context,
                )
            )
        self._update_queue_depth()
        self._pump(entry)
        self._wake_scheduler = True

    def next_batch(self, now: float) -> BatchJob | None:
        """What the engine runs next, or None (then wait until ``next_batch_deadline(now)`` or an
        input that wakes the scheduler). Reports pieces dropped unspoken (TTL) on the way."""
        batch = self.scheduler.schedule(now)
        self._report_expired(self.scheduler.take_expired(), now)
        if batch is None:
            return None
        self._update_queue_depth()
        self.metrics.batch_size.observe(len(batch.pieces))
        # Only an engine that schedules remotely (Ray Serve replicas) needs the ordering facts.
        remote = self.schedules_remotely
        trim = self.config.segmenter.trim_edges
        items = [
            SynthesisItem(
                phonemes=p.phonemes,
                voice=p.voice,
                speed=p.speed,
                seed=p.seed,
                text=p.text,
                hints=schedule_hints(p, now) if remote else None,
                trim_start=trim,
                trim_end=trim,
                left_context=p.left_context,
                right_context=p.right_context,
                # A context's first piece is sent as soon as its start is made (an engine's head).
                stream_head=p.is_first,
            )
            for p in batch.pieces
        ]
        return BatchJob(batch, items)

    def piece_head(self, job: BatchJob, index: int, head: Head, now: float) -> None:
        """The engine made the start of item ``index`` of the running ``job`` ahead of the rest (a
        head): to its session, unless the piece was cancelled meanwhile."""
        if not 0 <= index < len(job.batch.pieces):
            raise IndexError(f"head for item {index} of a batch of {len(job.batch.pieces)}")
        piece = job.batch.pieces[index]
        if piece.status is not PieceStatus.RUNNING:
            return
        entry, request, part, phoneme_piece = piece.payload
        if entry.session.receive_head(request, part, head, now, words=phoneme_piece.words):
            self.metrics.piece_heads.inc()
        self._pump(entry)

    def next_batch_deadline(self, now: float) -> float | None:
        return self.scheduler.next_deadline(now)

    def batch_done(self, job: BatchJob, results: Sequence[Any], now: float) -> None:
        """The engine finished ``job``: one ``SynthesisResult`` or ``EngineFailed`` per item. A
        failure fails only the contexts it concerns; results of pieces cancelled meanwhile are dropped."""
        touched: dict[int, SessionEntry] = {}
        try:
            delivered = self.scheduler.complete(job.batch, results, now=now)
            self.metrics.engine_cost_fixed.set(self.scheduler.cost.fixed_s)
            self.metrics.engine_cost_per_token.set(self.scheduler.cost.per_token_s)
            for piece, result in delivered:
                entry, request, part, phoneme_piece = piece.payload
                touched[id(entry)] = entry
                if isinstance(result, EngineFailed):
                    self.metrics.pieces.labels(outcome="failed").inc()
                    self.metrics.errors.labels(code="engine_failed").inc()
                    entry.session.receive_failure(request, result, now)
                else:
                    self.metrics.pieces.labels(outcome="done").inc()
                    self.metrics.audio_seconds.inc(len(result.audio) / SAMPLE_RATE)
                    entry.session.receive_audio(request, part, result, now, words=phoneme_piece.words)
        except Exception:
            logger.error("delivering a batch failed; failing its contexts", exc_info=True)
            touched.update(self._fail_batch(job.batch, now))
        for entry in touched.values():
            self._pump(entry)

    def batch_failed(self, job: BatchJob, now: float) -> None:
        """The engine thread itself failed on ``job``: every piece of it fails."""
        self.batch_done(job, [EngineFailed("synthesis failed") for _ in job.items], now)

    # --- inputs: shutdown -----------------------------------------------------------------------

    def drain(self, now: float) -> None:
        """Shutting down: admit nothing new, refuse new text, finish open contexts as if flushed
        (all their text is spoken). Then wait while ``has_pending_work``, then ``stop()``."""
        self.draining = True
        for entry in list(self.sessions.values()):
            if entry.attached and entry.session.state is SessionState.OPEN:
                entry.session.drain(now)
                self._pump(entry)

    @property
    def has_pending_work(self) -> bool:
        """Whether an attached session still has contexts to speak or output to send."""
        return any(e.session.contexts or e.session.has_outgoing for e in self.sessions.values() if e.attached)

    def attached(self) -> list[SessionEntry]:
        return [e for e in self.sessions.values() if e.attached]

    def stop(self) -> None:
        """End every session (after the drain's grace): their work is cancelled, they are forgotten."""
        for entry in list(self.sessions.values()):
            self._drop(entry)

    # --- outputs --------------------------------------------------------------------------------

    def phonemize_to_run(self) -> list[PhonemizeJob]:
        jobs, self._to_phonemize = self._to_phonemize, []
        return jobs

    def phonemize_to_cancel(self) -> tuple[list[Hashable], list[Hashable]]:
        """(tags, owners) whose queued G2P jobs are not wanted any more: cancelled contexts, ended
        sessions (``G2PWorker.cancel`` / ``cancel_owner``)."""
        tags, owners = self._g2p_cancels, self._g2p_owner_cancels
        self._g2p_cancels, self._g2p_owner_cancels = [], []
        return tags, owners

    def timers_to_arm(self) -> list[tuple[SessionEntry, float | None]]:
        """Sessions whose deadline may have moved, with ``deadline_of`` (None: no timer)."""
        timers, self._timers = self._timers, {}
        return list(timers.items())

    def sessions_to_write(self) -> list[SessionEntry]:
        """Attached sessions with something to send (call ``next_outgoing`` until None)."""
        entries, self._to_write = self._to_write, {}
        return [e for e in entries if e.attached]

    def next_outgoing(self, entry: SessionEntry, now: float) -> str | bytes | None:
        """The next message for the session's connection: ``str`` text, ``bytes`` audio frame."""
        if entry.preamble:
            return entry.preamble.popleft()
        session = entry.session
        message = session.next_outgoing(now)
        if message is not None:
            for seconds in session.take_ttfa():
                self.metrics.ttfa.observe(seconds)
            paused = session.take_pause_change()
            if paused is not None:
                self.scheduler.set_paused(session, paused)
                self._wake_scheduler = True
        return message

    def connections_to_close(self) -> list[tuple[SessionEntry, int, str]]:
        """(entry, close code, reason): close these connections once what is queued is sent (a
        client that does not read is closed anyway)."""
        out, self._to_close = self._to_close, []
        return out

    def sessions_ended(self) -> list[SessionEntry]:
        """Sessions the hub forgot: release what the I/O layer holds for them (timers, tasks)."""
        out, self._ended = self._ended, []
        return out

    def take_scheduler_wake(self) -> bool:
        """True once after the scheduler got work or a session's backpressure changed."""
        wake, self._wake_scheduler = self._wake_scheduler, False
        return wake

    # --- internals ------------------------------------------------------------------------------

    def _pump(self, entry: SessionEntry) -> None:
        """Move a session's pending work on: pieces to G2P, cancels and finished contexts to the
        scheduler, backpressure, its timer, its writer, its close."""
        session = entry.session
        for context in session.contexts_to_cancel():
            self._cancel_context(context)
        for request in session.pieces_to_schedule():
            self._to_phonemize.append(PhonemizeJob(entry, request))
        for context in session.contexts_finished():
            self.scheduler.finish_context(context)
        paused = session.take_pause_change()
        if paused is not None:
            self.scheduler.set_paused(session, paused)
            self._wake_scheduler = True
        self._timers[entry] = self.deadline_of(entry)
        if entry.attached and (session.has_outgoing or session.close_code is not None or entry.preamble):
            self._to_write[entry] = None
        if session.close_code is not None:
            # The writer may be stuck on a client that does not read: the close is asked from here too.
            self._request_close(entry)

    def _request_close(self, entry: SessionEntry) -> None:
        close = entry.close_request
        if entry.closing or not entry.attached or close is None:
            return
        entry.closing = True
        self._to_close.append((entry, *close))

    def _cancel_context(self, context: Context) -> None:
        self._g2p_cancels.append(context)  # queued text of a cancelled context is never phonemized
        dropped = self.scheduler.cancel_context(context)
        self.metrics.pieces.labels(outcome="cancelled").inc(len(dropped))
        self._update_queue_depth()

    def _drop(self, entry: SessionEntry) -> None:
        for context in entry.session.close():
            self._cancel_context(context)
        self.scheduler.cancel_session(entry.session)
        self._g2p_owner_cancels.append(entry.session)
        self._timers.pop(entry, None)
        self._to_write.pop(entry, None)
        if self.sessions.get(entry.session_id) is entry:
            del self.sessions[entry.session_id]
            self._ended.append(entry)

    def _fail_batch(self, batch: Batch, now: float) -> dict[int, SessionEntry]:
        """Fail the contexts of a batch whose results could not be delivered; others are untouched."""
        touched: dict[int, SessionEntry] = {}
        for piece in self.scheduler.abort(batch):
            entry, request, _, _ = piece.payload
            touched[id(entry)] = entry
            self.metrics.errors.labels(code="engine_failed").inc()
            try:
                entry.session.receive_failure(request, EngineFailed("synthesis failed"), now)
            except Exception:
                logger.error("failing a context failed", exc_info=True)
        return touched

    def _report_expired(self, pieces: list[Piece], now: float) -> None:
        touched: dict[int, SessionEntry] = {}
        for piece in pieces:
            entry, request, part, _ = piece.payload
            entry.session.receive_dropped(request, part, FINISHED_REASONS[piece.status], now)
            self.metrics.pieces.labels(outcome="expired").inc()
            touched[id(entry)] = entry
        for entry in touched.values():
            self._pump(entry)

    def _update_queue_depth(self) -> None:
        self.metrics.queue_depth.set(self.scheduler.num_queued)


def schedule_hints(piece: Piece, now: float) -> ScheduleHints:
    """The piece's ordering facts, relative to now, for an engine that schedules remotely."""
    due = piece.arrival if piece.deadline is None else piece.deadline() if callable(piece.deadline) else piece.deadline
    return ScheduleHints(
        session_id=piece.session_key.session_id,
        context_id=piece.context_key.context_id,
        priority=piece.priority,
        is_first=piece.is_first,
        due_in_s=due - now,
        start_within_s=None if piece.start_deadline is None else piece.start_deadline - now,
    )


def _playback_deadline(context: Context, audio_before_s: float) -> Callable[[], float]:
    def deadline() -> float:
        if context.first_frame_at is None:
            return math.inf
        return context.first_frame_at + audio_before_s

    return deadline
