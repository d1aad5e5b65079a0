"""Cross-session micro-batching: decides which pieces the engine synthesizes next.

Pure logic, no I/O, no threads; time comes in as ``now``. The hub (``gateway.hub``) calls, in order::

    scheduler.add(piece)                      # whenever a session has a phonemized piece
    batch = scheduler.schedule(now)           # when the engine is idle; None: nothing to do yet
    ... run batch.pieces on the engine thread ...
    delivered = scheduler.complete(batch, results)   # results of pieces still wanted
    scheduler.take_expired()                  # pieces dropped unspoken (TTL), to report

and sleeps until ``next_deadline(now)`` or until new work arrives.

Modes (same inputs, for comparison in the load benchmark):

- ``batched`` (ours): up to ``max_batch_pieces`` pieces and ``max_batch_tokens`` padded tokens per
  batch, lengths within ``max_length_ratio`` of each other (padding is wasted compute); order is
  priority, then least laxity (latest start time) first, then first pieces of a context, then
  round-robin over sessions (the session served longest ago first), then arrival. A piece's deadline
  is when its listener would run out of audio: a context's first piece is due on arrival (time to
  first audio), a later piece when the audio before it will have played; its latest start is that
  deadline minus its expected synthesis time (``gateway.engine_cost``: a fixed cost per item plus
  one per token, learned from the batches run). So
  new turns start fast, yet a long piece of a turn that is already playing starts early enough not
  to run dry (serving first pieces unconditionally starved playing turns under load). One piece per context per batch keeps a context's
  pieces in order; one per session per batch on the first pass keeps one talker from starving others.
- ``serial``: one FIFO worker, one piece at a time (what RealtimeTTS and AllTalk recommend).
- ``locked``: the oldest context holds the engine until it is finished (all its audio out), like a
  server that runs one request at a time (Kokoro-FastAPI).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from gateway.config import SchedulerConfig
from gateway.engine_cost import CostModel, EngineCost
from gateway.errors import InvalidState

__all__ = ["PieceStatus", "Piece", "Batch", "Scheduler", "FINISHED_REASONS"]

logger = logging.getLogger("voxgate.scheduler")


class PieceStatus(IntEnum):
    QUEUED = 0
    RUNNING = 1
    # Everything after RUNNING is terminal.
    DONE = 2
    CANCELLED = 3
    EXPIRED = 4
    FAILED = 5

    def is_finished(self) -> bool:
        return self > PieceStatus.RUNNING


#: Terminal state -> the reason a client is told.
FINISHED_REASONS: dict[PieceStatus, str] = {
    PieceStatus.DONE: "done",
    PieceStatus.CANCELLED: "cancelled",
    PieceStatus.EXPIRED: "ttl_expired",
    PieceStatus.FAILED: "engine_failed",
}


@dataclass(eq=False)
class Piece:
    """One phonemized piece of one context, waiting for or in the engine.

    ``session_key`` and ``context_key`` are opaque to the scheduler (the server passes its session and
    context objects); ``payload`` travels back untouched with the result.
    """

    session_key: Hashable
    context_key: Hashable
    phonemes: str
    voice: str
    speed: float = 1.0
    arrival: float = 0.0
    priority: int = 0
    is_first: bool = False
    #: Monotonic time after which the piece must not start (TTL); None: no limit.
    start_deadline: float | None = None
    #: When the listener needs this piece's audio (earliest deadline first): a time, a function
    #: giving it (evaluated at each ``schedule``: it may depend on playback that starts later), or
    #: None for the piece's arrival.
    deadline: float | Callable[[], float] | None = None
    payload: Any = None
    seed: int | None = None
    #: The text behind the phonemes (for text-reading engines; never logged).
    text: str = ""
    #: Phonemes of the same sentence around the piece: read by the engine, not spoken
    #: (``SynthesisItem.left_context``, ``gateway.text.seams``).
    left_context: str = ""
    right_context: str = ""
    piece_id: int = -1
    status: PieceStatus = PieceStatus.QUEUED

    @property
    def num_tokens(self) -> int:
        return len(self.phonemes) + 2


def _deadline(piece: Piece) -> float:
    if piece.deadline is None:
        return piece.arrival
    return piece.deadline() if callable(piece.deadline) else piece.deadline


@dataclass
class Batch:
    """The scheduler's decision: what the engine runs now (like vLLM's ``SchedulerOutput``)."""

    batch_id: int
    pieces: list[Piece]
    #: When it was formed (the server's clock).
    scheduled_at: float
    #: Pieces x longest piece: the compute the engine pays for, padding included.
    num_padded_tokens: int = 0
    num_sessions: int = 0


@dataclass
class _SessionQueue:
    pieces: list[Piece] = field(default_factory=list)
    paused: bool = False
    #: Batch number when this session was last served; lower goes first (round-robin).
    last_served: int = -1


class Scheduler:
    """Decides batches across sessions. Not thread-safe: call it from the event loop only.

    Not its job: running the engine, phonemizing, timing (``now`` is passed in).
    """

    def __init__(self, config: SchedulerConfig, *, engine_preferred_batch: int = 1, engine_max_batch: int = 1) -> None:
        self.config = config
        self.mode = config.mode
        wanted = config.max_batch_pieces or engine_preferred_batch
        self.max_batch_pieces = 1 if self.mode != "batched" else max(1, min(wanted, engine_max_batch))
        self.max_batch_tokens = config.max_batch_tokens
        self.max_wait_s = config.max_wait_ms / 1_000.0
        self._sessions: dict[Hashable, _SessionQueue] = {}
        self._running: Batch | None = None
        self._expired: list[Piece] = []
        self._ids = itertools.count()
        self._batch_ids = itertools.count()
        self._arrivals = itertools.count()
        # locked mode: the context that holds the engine; arrival order of live contexts.
        self._lock_holder: Hashable | None = None
        self._context_first_arrival: dict[Hashable, int] = {}
        self._num_batches = 0
        # The engine's speed (per item and per padded token), learned from completed batches: for
        # latest start times here and for piece lengths (``gateway.text.pacing``).
        self._cost_model = CostModel()

    @property
    def cost(self) -> EngineCost:
        """The engine's measured speed (``EngineCost()`` until a batch has finished)."""
        return self._cost_model.estimate

    # --- input ---------------------------------------------------------------------------------

    def add(self, piece: Piece) -> None:
        """Queue a piece. Pieces of one context must be added in speaking order."""
        if piece.status is not PieceStatus.QUEUED:
            raise InvalidState(f"piece {piece.piece_id} added in state {piece.status.name}")
        piece.piece_id = next(self._ids)
        self._sessions.setdefault(piece.session_key, _SessionQueue()).pieces.append(piece)
        self._context_first_arrival.setdefault(piece.context_key, next(self._arrivals))

    def cancel_context(self, context_key: Hashable) -> list[Piece]:
        """Drop a context's queued pieces and disown its running ones; idempotent. Returns the dropped."""
        dropped: list[Piece] = []
        for queue in self._sessions.values():
            keep = []
            for piece in queue.pieces:
                if piece.context_key == context_key:
                    piece.status = PieceStatus.CANCELLED
                    dropped.append(piece)
                else:
                    keep.append(piece)
            queue.pieces = keep
        if self._running is not None:
            for piece in self._running.pieces:
                if piece.context_key == context_key and not piece.status.is_finished():
                    piece.status = PieceStatus.CANCELLED
        self._forget_context(context_key)
        return dropped

    def cancel_session(self, session_key: Hashable) -> list[Piece]:
        """Drop everything of a session (it disconnected); idempotent."""
        queue = self._sessions.pop(session_key, None)
        dropped = queue.pieces if queue else []
        for piece in dropped:
            piece.status = PieceStatus.CANCELLED
            self._forget_context(piece.context_key)
        if self._running is not None:
            for piece in self._running.pieces:
                if piece.session_key == session_key and not piece.status.is_finished():
                    piece.status = PieceStatus.CANCELLED
                    self._forget_context(piece.context_key)
        return dropped

    def finish_context(self, context_key: Hashable) -> None:
        """The context is finished (all its audio delivered): forget it, and in locked mode release the
        engine it held. Idempotent. Call it exactly when the context ends, not at its final flush:
        pieces may still be on their way from G2P then."""
        self._forget_context(context_key)

    def set_paused(self, session_key: Hashable, paused: bool) -> None:
        """Backpressure: a paused session's pieces keep their place but are not scheduled."""
        if session_key in self._sessions or paused:
            self._sessions.setdefault(session_key, _SessionQueue()).paused = paused

    # --- decisions ------------------------------------------------------------------------------

    @property
    def engine_busy(self) -> bool:
        return self._running is not None

    @property
    def num_queued(self) -> int:
        return sum(len(q.pieces) for q in self._sessions.values())

    def schedule(self, now: float) -> Batch | None:
        """Form the next batch, or None when the engine is busy, nothing is eligible, or the batching
        window is still open (then ``next_deadline`` says when to call again)."""
        self._expire(now)
        if self._running is not None:
            return None
        candidates = self._eligible()
        if not candidates:
            return None
        if self.mode == "batched" and self._window_open(candidates, now):
            return None
        chosen = self._pick(candidates)
        for piece in chosen:
            self._sessions[piece.session_key].pieces.remove(piece)
            piece.status = PieceStatus.RUNNING
        self._num_batches += 1
        for key in {p.session_key for p in chosen}:
            self._sessions[key].last_served = self._num_batches
        batch = Batch(
            batch_id=next(self._batch_ids),
            pieces=chosen,
            scheduled_at=now,
            num_padded_tokens=len(chosen) * max(p.num_tokens for p in chosen),
            num_sessions=len({p.session_key for p in chosen}),
        )
        self._check_invariants(batch)
        self._running = batch
        return batch

    def complete(self, batch: Batch, results: Sequence[Any], *, now: float | None = None) -> list[tuple[Piece, Any]]:
        """Record a batch's results (one per piece: a result or an exception instance); ``now`` (when
        given) teaches the scheduler the engine's speed.

        Returns (piece, result) for the pieces still wanted: a piece cancelled while the engine ran is
        left out (its audio must never reach the client). Exceptions are passed on with status FAILED.
        """
        if batch is not self._running:
            raise InvalidState(f"complete() for batch {batch.batch_id}, which is not the running batch")
        if len(results) != len(batch.pieces):
            raise InvalidState(f"{len(results)} results for {len(batch.pieces)} pieces")
        self._running = None
        if now is not None and batch.num_padded_tokens:
            self._cost_model.observe(len(batch.pieces), batch.num_padded_tokens, max(0.0, now - batch.scheduled_at))
        delivered: list[tuple[Piece, Any]] = []
        for piece, result in zip(batch.pieces, results):
            if piece.status is PieceStatus.CANCELLED:
                continue
            piece.status = PieceStatus.FAILED if isinstance(result, BaseException) else PieceStatus.DONE
            delivered.append((piece, result))
        return delivered

    def abort(self, batch: Batch) -> list[Piece]:
        """The batch's results could not be used (the engine returned the wrong number, delivery
        raised): release the engine and fail its pieces. Returns those still wanted, whose contexts
        the caller fails. Idempotent; pieces cancelled meanwhile are left out."""
        if self._running is batch:
            self._running = None
        failed: list[Piece] = []
        for piece in batch.pieces:
            if piece.status is not PieceStatus.CANCELLED:
                piece.status = PieceStatus.FAILED
                failed.append(piece)
        return failed

    def take_expired(self) -> list[Piece]:
        """Pieces dropped because their TTL passed before they could start (swap and return)."""
        expired, self._expired = self._expired, []
        return expired

    def next_deadline(self, now: float) -> float | None:
        """When ``schedule`` may have something new to say without new input (window close or TTL)."""
        deadlines: list[float] = []
        for queue in self._sessions.values():
            for piece in queue.pieces:
                if piece.start_deadline is not None:
                    deadlines.append(piece.start_deadline)
        if self.mode == "batched" and self._running is None:
            candidates = self._eligible()
            if candidates and self._window_open(candidates, now):
                deadlines.append(min(p.arrival for p in candidates) + self.max_wait_s)
        return min(deadlines) if deadlines else None

    # --- internals ------------------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        for queue in self._sessions.values():
            keep = []
            for piece in queue.pieces:
                if piece.start_deadline is not None and now > piece.start_deadline:
                    piece.status = PieceStatus.EXPIRED
                    self._expired.append(piece)
                else:
                    keep.append(piece)
            queue.pieces = keep

    def _eligible(self) -> list[Piece]:
        """The head piece of each context of each unpaused session, in service order."""
        if self.mode == "serial":
            heads = [q.pieces[0] for q in self._sessions.values() if q.pieces and not q.paused]
            return sorted(heads, key=lambda p: p.piece_id)[:1]
        if self.mode == "locked":
            return self._locked_candidates()
        candidates: list[Piece] = []
        for queue in self._sessions.values():
            if queue.paused:
                continue
            seen: set[Hashable] = set()
            for piece in queue.pieces:
                if piece.context_key not in seen:
                    seen.add(piece.context_key)
                    candidates.append(piece)
        candidates.sort(
            key=lambda p: (
                -p.priority,
                _deadline(p) - self.cost.seconds(p.num_tokens),
                not p.is_first,
                self._sessions[p.session_key].last_served,
                p.piece_id,
            )
        )
        return candidates

    def _locked_candidates(self) -> list[Piece]:
        if self._lock_holder is None:
            queued = [p for q in self._sessions.values() if not q.paused for p in q.pieces]
            if not queued:
                return []
            self._lock_holder = min(queued, key=lambda p: self._context_first_arrival[p.context_key]).context_key
        for queue in self._sessions.values():
            for piece in queue.pieces:
                if piece.context_key == self._lock_holder:
                    return [] if queue.paused else [piece]
        # The holder has nothing queued: the engine waits for it, as a locked server would.
        return []

    def _window_open(self, candidates: list[Piece], now: float) -> bool:
        if len(candidates) >= self.max_batch_pieces or self.max_wait_s <= 0:
            return False
        return now < min(p.arrival for p in candidates) + self.max_wait_s

    def _pick(self, candidates: list[Piece]) -> list[Piece]:
        head = candidates[0]
        chosen = [head]
        if self.mode != "batched":
            return chosen
        shortest = longest = head.num_tokens
        used_sessions = {head.session_key}
        # First pass: one piece per session (fairness); second pass: fill the remaining room.
        for allow_same_session in (False, True):
            for piece in candidates[1:]:
                if len(chosen) >= self.max_batch_pieces:
                    return chosen
                if piece in chosen or (piece.session_key in used_sessions and not allow_same_session):
                    continue
                lo, hi = min(shortest, piece.num_tokens), max(longest, piece.num_tokens)
                if hi > lo * self.config.max_length_ratio:
                    continue
                if (len(chosen) + 1) * hi > self.max_batch_tokens:
                    continue
                chosen.append(piece)
                used_sessions.add(piece.session_key)
                shortest, longest = lo, hi
        return chosen

    def _forget_context(self, context_key: Hashable) -> None:
        if self._lock_holder == context_key:
            self._lock_holder = None
        self._context_first_arrival.pop(context_key, None)

    def _check_invariants(self, batch: Batch) -> None:
        pieces = batch.pieces
        assert 1 <= len(pieces) <= self.max_batch_pieces, "batch size out of bounds"
        assert len(pieces) == 1 or batch.num_padded_tokens <= self.max_batch_tokens, "token budget exceeded"
        assert len({p.context_key for p in pieces}) == len(pieces), "two pieces of one context in a batch"
        assert not any(self._sessions[p.session_key].paused for p in pieces), "paused session scheduled"
