from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import InvalidState
from gateway.scheduler import PieceStatus
from tests.utils import make_pieces, make_scheduler


def test_an_idle_engine_gets_work_at_once_when_no_window_is_configured() -> None:
    s = make_scheduler()
    s.add(make_pieces("s1", "c", [10])[0])
    batch = s.schedule(now=0.0)
    assert batch is not None and len(batch.pieces) == 1


def test_pieces_of_several_sessions_are_batched_together() -> None:
    s = make_scheduler(max_batch_pieces=4)
    for sid in ("a", "b", "c", "d", "e"):
        s.add(make_pieces(sid, "c", [20])[0])
    batch = s.schedule(0.0)
    assert batch is not None
    assert len(batch.pieces) == 4 and batch.num_sessions == 4


def test_nothing_is_scheduled_while_a_batch_runs() -> None:
    s = make_scheduler()
    for p in make_pieces("a", "c", [5, 5]):
        s.add(p)
    batch = s.schedule(0.0)
    assert batch is not None
    assert s.schedule(0.0) is None
    s.complete(batch, [object()] * len(batch.pieces))
    assert s.schedule(0.0) is not None


def test_one_context_never_has_two_pieces_in_a_batch_so_order_is_kept() -> None:
    s = make_scheduler(max_batch_pieces=8)
    pieces = make_pieces("a", "c", [10, 10, 10])
    for p in pieces:
        s.add(p)
    order = []
    while (batch := s.schedule(0.0)) is not None:
        assert len(batch.pieces) == 1
        order.extend(p.payload[2] for p in batch.pieces)
        s.complete(batch, [object()])
    assert order == [0, 1, 2]


def test_a_talkative_session_cannot_starve_others() -> None:
    s = make_scheduler(max_batch_pieces=2)
    for i in range(6):
        s.add(make_pieces("loud", f"c{i}", [10])[0])
    s.add(make_pieces("quiet", "c", [10])[0])
    first = s.schedule(0.0)
    assert first is not None
    assert {p.session_key for p in first.pieces} == {"loud", "quiet"}


def test_round_robin_serves_the_session_served_longest_ago_first() -> None:
    s = make_scheduler(max_batch_pieces=1)
    for sid in ("a", "b"):
        for i in range(3):
            s.add(make_pieces(sid, f"c{i}", [10])[0])
    served = []
    while (batch := s.schedule(0.0)) is not None:
        served.append(batch.pieces[0].session_key)
        s.complete(batch, [object()])
    assert served == ["a", "b", "a", "b", "a", "b"]


def test_first_pieces_of_a_context_go_before_later_pieces() -> None:
    s = make_scheduler(max_batch_pieces=1)
    for p in make_pieces("a", "old", [30, 30, 30]):
        s.add(p)
    batch = s.schedule(0.0)
    assert batch is not None
    s.complete(batch, [object()])
    s.add(make_pieces("b", "new", [30])[0])
    batch = s.schedule(0.0)
    assert batch is not None and batch.pieces[0].session_key == "b" and batch.pieces[0].is_first


def test_higher_priority_goes_first() -> None:
    s = make_scheduler(max_batch_pieces=1)
    s.add(make_pieces("a", "low", [10], priority=0)[0])
    s.add(make_pieces("b", "high", [10], priority=5)[0])
    batch = s.schedule(0.0)
    assert batch is not None and batch.pieces[0].session_key == "b"


def test_token_budget_and_length_ratio_bound_padding_waste() -> None:
    s = make_scheduler(max_batch_pieces=8, max_batch_tokens=600, max_length_ratio=2.0)
    s.add(make_pieces("a", "c", [100])[0])
    s.add(make_pieces("b", "c", [400])[0])  # too long next to 100 tokens
    s.add(make_pieces("c", "c", [150])[0])
    s.add(make_pieces("d", "c", [180])[0])  # 4 x 182 would exceed 600 padded tokens
    batch = s.schedule(0.0)
    assert batch is not None
    assert [p.session_key for p in batch.pieces] == ["a", "c", "d"]
    assert batch.num_padded_tokens == 3 * 182 <= 600
    rest = [p.session_key for p in s._sessions["b"].pieces]
    assert rest == ["b"]


def test_the_batching_window_waits_for_company_then_dispatches() -> None:
    s = make_scheduler(max_batch_pieces=4, max_wait_ms=5.0)
    s.add(make_pieces("a", "c", [10], arrival=0.0)[0])
    assert s.schedule(0.001) is None
    assert s.next_deadline(0.001) == pytest.approx(0.005)
    s.add(make_pieces("b", "c", [10], arrival=0.002)[0])
    batch = s.schedule(0.006)
    assert batch is not None and len(batch.pieces) == 2


def test_a_full_batch_does_not_wait_for_the_window() -> None:
    s = make_scheduler(max_batch_pieces=2, max_wait_ms=50.0)
    s.add(make_pieces("a", "c", [10])[0])
    s.add(make_pieces("b", "c", [10])[0])
    assert s.schedule(0.0) is not None


def test_cancelled_work_never_reaches_the_engine() -> None:
    s = make_scheduler()
    for p in make_pieces("a", "c", [10, 10]):
        s.add(p)
    s.add(make_pieces("b", "c", [10])[0])
    dropped = s.cancel_context(("a", "c"))
    assert len(dropped) == 2 and all(p.status is PieceStatus.CANCELLED for p in dropped)
    batch = s.schedule(0.0)
    assert batch is not None and [p.session_key for p in batch.pieces] == ["b"]


def test_results_of_pieces_cancelled_while_running_are_dropped() -> None:
    s = make_scheduler()
    s.add(make_pieces("a", "c", [10])[0])
    s.add(make_pieces("b", "c", [10])[0])
    batch = s.schedule(0.0)
    assert batch is not None and len(batch.pieces) == 2
    s.cancel_context(("a", "c"))
    s.cancel_context(("a", "c"))  # idempotent
    delivered = s.complete(batch, ["audio-a", "audio-b"])
    assert [(p.session_key, r) for p, r in delivered] == [("b", "audio-b")]


def test_engine_errors_fail_only_their_pieces() -> None:
    s = make_scheduler()
    s.add(make_pieces("a", "c", [10])[0])
    s.add(make_pieces("b", "c", [10])[0])
    batch = s.schedule(0.0)
    assert batch is not None
    boom = RuntimeError("x")
    delivered = s.complete(batch, [boom, "ok"])
    assert [p.status for p, _ in delivered] == [PieceStatus.FAILED, PieceStatus.DONE]


def test_pieces_past_their_ttl_are_dropped_and_reported_never_started() -> None:
    s = make_scheduler(max_batch_pieces=1)
    s.add(make_pieces("a", "busy", [10])[0])
    s.add(make_pieces("b", "stale", [10], arrival=0.0, ttl=0.5)[0])
    batch = s.schedule(0.0)
    assert batch is not None and batch.pieces[0].session_key == "a"
    assert s.next_deadline(0.1) == pytest.approx(0.5)
    s.complete(batch, [object()])
    assert s.schedule(0.6) is None
    expired = s.take_expired()
    assert [p.session_key for p in expired] == ["b"] and expired[0].status is PieceStatus.EXPIRED
    assert s.take_expired() == []


def test_a_paused_session_keeps_its_place_but_is_skipped() -> None:
    s = make_scheduler(max_batch_pieces=1)
    s.add(make_pieces("slow", "c", [10])[0])
    s.add(make_pieces("fast", "c", [10])[0])
    s.set_paused("slow", True)
    batch = s.schedule(0.0)
    assert batch is not None and batch.pieces[0].session_key == "fast"
    s.complete(batch, [object()])
    assert s.schedule(0.0) is None
    s.set_paused("slow", False)
    batch = s.schedule(0.0)
    assert batch is not None and batch.pieces[0].session_key == "slow"


def test_serial_mode_runs_one_piece_at_a_time_in_arrival_order() -> None:
    s = make_scheduler(mode="serial", max_batch_pieces=8)
    s.add(make_pieces("a", "c", [10, 10])[0])
    s.add(make_pieces("b", "c", [10])[0])
    order = []
    while (batch := s.schedule(0.0)) is not None:
        assert len(batch.pieces) == 1
        order.append(batch.pieces[0].session_key)
        s.complete(batch, [object()])
    assert order == ["a", "b"]


def test_locked_mode_holds_the_engine_for_one_context_until_it_is_finished() -> None:
    s = make_scheduler(mode="locked")
    s.add(make_pieces("a", "c", [10])[0])
    s.add(make_pieces("b", "c", [10])[0])
    batch = s.schedule(0.0)
    assert batch is not None and batch.pieces[0].session_key == "a"
    s.complete(batch, [object()])
    assert s.schedule(0.0) is None  # "a" holds the engine while its text is still streaming
    s.finish_context(("a", "c"))
    batch = s.schedule(0.0)
    assert batch is not None and batch.pieces[0].session_key == "b"


def test_completing_a_batch_that_is_not_running_is_a_caller_bug() -> None:
    s = make_scheduler()
    s.add(make_pieces("a", "c", [10])[0])
    batch = s.schedule(0.0)
    assert batch is not None
    s.complete(batch, [object()])
    with pytest.raises(InvalidState):
        s.complete(batch, [object()])


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["add", "schedule", "complete", "cancel", "pause", "resume"]),
            st.integers(0, 3),
            st.integers(1, 300),
        ),
        max_size=60,
    ),
    max_pieces=st.integers(1, 6),
)
def test_invariants_hold_under_random_operation_sequences(ops: list, max_pieces: int) -> None:
    s = make_scheduler(max_batch_pieces=max_pieces, max_batch_tokens=2048)
    running = None
    cancelled: set = set()
    spoken: dict = {}
    counters: dict = {}
    for op, sid, length in ops:
        session, context = f"s{sid}", (f"s{sid}", "c")
        if op == "add" and context not in cancelled:
            n = counters.get(context, 0)
            counters[context] = n + 1
            piece = make_pieces(session, "c", [length])[0]
            piece.payload = (session, "c", n)
            s.add(piece)
        elif op == "schedule":
            batch = s.schedule(0.0)
            if running is not None:
                assert batch is None
            elif batch is not None:
                running = batch
                assert len(batch.pieces) <= max_pieces
                assert len({p.context_key for p in batch.pieces}) == len(batch.pieces)
        elif op == "complete" and running is not None:
            for piece, _ in s.complete(running, [None] * len(running.pieces)):
                assert piece.context_key not in cancelled
                spoken.setdefault(piece.context_key, []).append(piece.payload[2])
            running = None
        elif op == "cancel":
            s.cancel_context(context)
            cancelled.add(context)
        elif op == "pause":
            s.set_paused(session, True)
        elif op == "resume":
            s.set_paused(session, False)
    for order in spoken.values():
        assert order == sorted(order)


def test_finished_and_cancelled_contexts_leave_no_bookkeeping_behind() -> None:
    s = make_scheduler(mode="locked")
    for sid in ("a", "b"):
        s.add(make_pieces(sid, "c", [10])[0])
    while (batch := s.schedule(0.0)) is not None:
        s.complete(batch, [object()])
        s.finish_context(batch.pieces[0].context_key)
    s.add(make_pieces("c", "c", [10])[0])
    s.cancel_context(("c", "c"))
    for sid in ("a", "b", "c"):
        s.cancel_session(sid)
    s.set_paused("gone", False)
    assert s._context_first_arrival == {} and s._sessions == {} and s._lock_holder is None


def test_a_playing_turn_about_to_run_dry_goes_before_a_new_turn() -> None:
    s = make_scheduler(max_batch_pieces=1)
    playing = make_pieces("a", "story", [40, 40])[1]
    playing.is_first, playing.deadline = False, 0.5  # its listener runs out of audio at t=0.5
    fresh = make_pieces("b", "new", [40], arrival=1.0)[0]  # a new turn's first piece, due on arrival
    later = make_pieces("c", "calm", [40, 40])[1]
    later.is_first, later.deadline = False, 9.0  # plenty of audio still buffered
    for piece in (later, fresh, playing):
        s.add(piece)
    order = []
    while (batch := s.schedule(1.0)) is not None:
        order.append(batch.pieces[0].session_key)
        s.complete(batch, [object()])
    assert order == ["a", "b", "c"]


def test_a_deadline_function_is_evaluated_when_scheduling() -> None:
    s = make_scheduler(max_batch_pieces=1)
    started: dict[str, float] = {}
    waiting = make_pieces("a", "c", [40, 40])[1]
    waiting.is_first, waiting.deadline = False, lambda: started.get("a", float("inf"))
    fresh = make_pieces("b", "new", [40], arrival=5.0)[0]
    s.add(waiting)
    s.add(fresh)
    started["a"] = 2.0  # playback of "a" started: its next piece is now due before the new turn
    batch = s.schedule(5.0)
    assert batch is not None and batch.pieces[0].session_key == "a"


def test_a_long_piece_starts_before_a_short_one_due_at_the_same_time() -> None:
    s = make_scheduler(max_batch_pieces=1)
    s.add(make_pieces("warm", "c", [98])[0])
    batch = s.schedule(0.0)
    assert batch is not None
    s.complete(batch, [object()], now=1.0)  # 100 tokens took 1 s: 10 ms per token
    assert s.cost.per_token_s == pytest.approx(0.01) and s.cost.fixed_s == 0.0  # one shape: all per token
    long_piece = make_pieces("a", "story", [10, 298])[1]  # 3 s of synthesis, due at t=4
    long_piece.is_first, long_piece.deadline = False, 4.0
    short_first = make_pieces("b", "new", [28], arrival=2.0)[0]  # 0.3 s of synthesis, due at t=2
    s.add(short_first)
    s.add(long_piece)
    batch = s.schedule(2.0)
    assert batch is not None and batch.pieces[0].session_key == "a"  # latest start 1.0 < 1.7


def test_abort_fails_the_batch_frees_the_engine_and_skips_cancelled_pieces() -> None:
    s = make_scheduler()
    for piece in make_pieces("a", "c", [10]) + make_pieces("b", "d", [10]):
        s.add(piece)
    batch = s.schedule(0.0)
    assert batch is not None and s.engine_busy
    s.cancel_context(("b", "d"))
    failed = s.abort(batch)
    assert [p.context_key for p in failed] == [("a", "c")]
    assert failed[0].status is PieceStatus.FAILED and not s.engine_busy
    assert s.abort(batch) == failed  # idempotent
    for piece in make_pieces("a", "e", [10]):
        s.add(piece)
    assert s.schedule(0.0) is not None  # the scheduler goes on
