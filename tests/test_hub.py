"""The hub on its own: a fake clock, no event loop, no socket, no thread, no engine.

Each test drives ``Hub`` inputs by hand (open, receive, phonemes_ready, next_batch, batch_done,
connection_lost, timeout, drain) and asserts on what it asks the I/O layer to do.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import orjson

from gateway.engines.base import SynthesisResult
from gateway.errors import EngineFailed
from gateway.hub import Hub, Refusal, SessionEntry
from gateway.protocol import decode_audio_frame, dumps
from gateway.text.g2p import PhonemePiece
from tests.utils import FakeClock, test_config

TOKEN = "the-auth-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def make_hub(**overrides: Any) -> Hub:
    config = test_config(**{"scheduler.max_wait_ms": 0.0, **overrides})
    ids = (f"{i:032x}" for i in itertools.count(1))
    tokens = (f"resume-{i}" for i in itertools.count(1))
    return Hub(
        config,
        voices=["af_heart", "am_adam"],
        langs=["en"],
        engine_preferred_batch=4,
        engine_max_batch=4,
        new_session_id=lambda: next(ids),
        new_resume_token=lambda: next(tokens),
    )


def open_session(hub: Hub, now: float, *, headers: dict[str, str] | None = None, query: str = "") -> SessionEntry:
    entry = hub.open(headers=headers or {}, query=query, now=now)
    assert isinstance(entry, SessionEntry)
    return entry


def sent(hub: Hub, entry: SessionEntry, now: float) -> list[Any]:
    """Everything the session has to send now: JSON messages as dicts, frames as (seq, index)."""
    out: list[Any] = []
    while (item := hub.next_outgoing(entry, now)) is not None:
        if isinstance(item, bytes):
            header, _ = decode_audio_frame(item)
            out.append((header.seq, header.context_index))
        else:
            out.append(orjson.loads(item))
    return out


def types(messages: list[Any]) -> list[str]:
    return [m["type"] if isinstance(m, dict) else "frame" for m in messages]


def say(hub: Hub, entry: SessionEntry, context_id: str, text: str, now: float, *, final: bool = True) -> None:
    hub.receive(entry, dumps({"type": "text", "context_id": context_id, "text": text}), now)
    if final:
        hub.receive(entry, dumps({"type": "flush", "context_id": context_id, "final": True}), now)


def phonemize_all(hub: Hub, now: float) -> None:
    """What the G2P thread does: every queued job becomes one phoneme piece."""
    for job in hub.phonemize_to_run():
        hub.phonemes_ready(job, [PhonemePiece(phonemes="h" * min(40, len(job.text)), text=job.text)], now)


def audio_for(item: Any) -> SynthesisResult:
    n = len(item.phonemes) + 2
    return SynthesisResult(audio=np.full(600 * n, 0.1, dtype=np.float32), durations=np.ones(n, dtype=np.int64), phonemes=item.phonemes)


def run_engine(hub: Hub, now: float) -> int:
    """Run every batch the hub schedules, successfully; returns how many ran."""
    num = 0
    while (job := hub.next_batch(now)) is not None:
        hub.batch_done(job, [audio_for(item) for item in job.items], now)
        num += 1
    return num


def speak_to_the_end(hub: Hub, entry: SessionEntry, context_id: str, text: str, clock: FakeClock) -> list[Any]:
    say(hub, entry, context_id, text, clock.now)
    phonemize_all(hub, clock.advance(0.01))
    run_engine(hub, clock.advance(0.01))
    return sent(hub, entry, clock.advance(0.01))


# --- admission --------------------------------------------------------------------------------


def test_admission_counts_detached_sessions_until_their_resume_grace_ends() -> None:
    clock = FakeClock(100.0)
    hub = make_hub(**{"server.max_sessions": 2, "session.resume_grace_s": 30.0})
    first = open_session(hub, clock.now)
    open_session(hub, clock.now)

    refused = hub.open(headers={}, query="", now=clock.now)
    assert isinstance(refused, Refusal)
    assert refused.close_code == 1013 and refused.reason == "busy"
    assert orjson.loads(refused.messages[-1])["code"] == "busy"

    hub.connection_lost(first, None, clock.advance(1.0))  # lost, not closed: detached, still counted
    assert first.session_id in hub.sessions and not first.attached
    assert isinstance(hub.open(headers={}, query="", now=clock.now), Refusal)

    assert hub.deadline_of(first) == clock.now + 30.0
    hub.timeout(first, clock.advance(29.0))  # early: nothing happens
    assert first.session_id in hub.sessions
    hub.timeout(first, clock.advance(1.0))
    assert first.session_id not in hub.sessions
    assert first in hub.sessions_ended()
    assert isinstance(hub.open(headers={}, query="", now=clock.now), SessionEntry)


def test_handshakes_are_refused_for_a_wrong_path_a_wrong_token_and_while_draining() -> None:
    hub = make_hub(**{"server.auth_token": TOKEN})
    assert hub.check_handshake("/elsewhere", BEARER, {}) == (404, "WebSocket endpoint is /v1/stream")
    assert hub.check_handshake("/v1/stream", {"Authorization": "Bearer nope"}, {})[0] == 401  # type: ignore[index]
    assert hub.check_handshake("/v1/stream", {}, {"token": [TOKEN]}) is None
    assert hub.check_handshake("/v1/stream", BEARER, {}) is None
    hub.drain(0.0)
    assert hub.check_handshake("/v1/stream", BEARER, {}) == (503, "server shutting down")


# --- messages ---------------------------------------------------------------------------------


def test_an_oversized_or_binary_message_is_answered_and_the_session_goes_on() -> None:
    clock = FakeClock()
    hub = make_hub(**{"server.max_message_bytes": 1024})
    entry = open_session(hub, clock.now)
    sent(hub, entry, clock.now)

    assert hub.receive(entry, dumps({"type": "text", "context_id": "big", "text": "x" * 1100}), clock.now)
    assert hub.receive(entry, b"\x00\x01", clock.now)
    errors = sent(hub, entry, clock.now)
    assert [(e["code"], e.get("context_id")) for e in errors] == [("message_too_big", "big"), ("binary_not_allowed", None)]

    messages = speak_to_the_end(hub, entry, "ok", "Still here.", clock)
    assert types(messages)[0] == "context.started" and types(messages)[-1] == "context.done"


# --- resume -----------------------------------------------------------------------------------


def _detached_with_frames(hub: Hub, clock: FakeClock) -> tuple[SessionEntry, str, list[Any]]:
    entry = open_session(hub, clock.now, headers=BEARER)
    created = sent(hub, entry, clock.now)[0]
    messages = speak_to_the_end(hub, entry, "c1", "Hello there, how are you today?", clock)
    hub.connection_lost(entry, 1006, clock.advance(0.1))
    return entry, created["resume_token"], messages


def _resume_query(entry: SessionEntry, token: str, last_seq: int) -> str:
    return f"session_id={entry.session_id}&resume_token={token}&last_seq={last_seq}"


def test_resume_with_the_right_token_replays_the_frames_after_last_seq() -> None:
    clock = FakeClock()
    hub = make_hub(**{"server.auth_token": TOKEN})
    entry, token, messages = _detached_with_frames(hub, clock)
    frames = [m for m in messages if isinstance(m, tuple)]
    assert len(frames) >= 3
    last_seq = frames[0][0]  # the client got only the first frame

    resumed = hub.open(headers=BEARER, query=_resume_query(entry, token, last_seq), now=clock.advance(1.0))
    assert resumed is entry and entry.attached
    replay = sent(hub, entry, clock.now)
    assert replay[0] == {"type": "session.resumed", "session_id": entry.session_id, "replayed": len(frames) - 1}
    assert [seq for seq, _ in replay[1:]] == [seq for seq, _ in frames[1:]]
    assert hub.deadline_of(entry) != clock.now - 1.0 + 30.0  # the grace timer is off: deadlines are the session's again


def test_resume_with_a_wrong_token_or_another_auth_token_starts_a_new_session() -> None:
    clock = FakeClock()
    hub = make_hub(**{"server.auth_token": TOKEN})
    entry, token, _ = _detached_with_frames(hub, clock)

    for headers, presented in ((BEARER, "not-the-token"), ({"Authorization": "Bearer other"}, token)):
        fresh = hub.open(headers=headers, query=_resume_query(entry, presented, -1), now=clock.now)
        assert isinstance(fresh, SessionEntry) and fresh is not entry
        first, created = sent(hub, fresh, clock.now)[:2]
        assert first["code"] == "resume_failed"
        assert created["type"] == "session.created" and created["session_id"] != entry.session_id
    assert not entry.attached  # still waiting for its own client

    resumed = hub.open(headers=BEARER, query=_resume_query(entry, token, -1), now=clock.now)
    assert resumed is entry


def test_resume_after_the_grace_or_twice_fails() -> None:
    clock = FakeClock()
    hub = make_hub(**{"server.auth_token": TOKEN, "session.resume_grace_s": 5.0})
    entry, token, _ = _detached_with_frames(hub, clock)
    assert isinstance(hub.open(headers=BEARER, query=_resume_query(entry, token, -1), now=clock.advance(1.0)), SessionEntry)
    # Attached again: a second resume of the same session (a replayed URL) is refused.
    other = hub.open(headers=BEARER, query=_resume_query(entry, token, -1), now=clock.now)
    assert isinstance(other, SessionEntry) and other is not entry
    assert sent(hub, other, clock.now)[0]["code"] == "resume_failed"

    hub.connection_lost(entry, 1006, clock.advance(1.0))
    hub.timeout(entry, clock.advance(5.0))
    late = hub.open(headers=BEARER, query=_resume_query(entry, token, -1), now=clock.now)
    assert isinstance(late, SessionEntry) and late is not entry
    assert sent(hub, late, clock.now)[0]["code"] == "resume_failed"


# --- connection loss --------------------------------------------------------------------------


def test_a_clean_close_ends_the_session_and_a_lost_connection_detaches_it() -> None:
    clock = FakeClock()
    hub = make_hub()
    for code, kept in ((1000, False), (1001, False), (1006, True), (None, True), (1011, True)):
        entry = open_session(hub, clock.now)
        say(hub, entry, "c", "Something long enough to still be in the works.", clock.now)
        assert hub.phonemize_to_run()
        hub.connection_lost(entry, code, clock.advance(0.1))
        assert (entry.session_id in hub.sessions) is kept, code
        assert not entry.session.contexts  # work in progress is dropped either way
        tags, owners = hub.phonemize_to_cancel()
        assert tags and (owners == [entry.session]) is (not kept)
        hub.sessions_ended()


def test_without_resume_a_lost_connection_ends_the_session() -> None:
    hub = make_hub(**{"session.resume_grace_s": 0.0})
    entry = open_session(hub, 0.0)
    hub.connection_lost(entry, 1006, 1.0)
    assert entry.session_id not in hub.sessions and hub.sessions_ended() == [entry]


# --- deadlines --------------------------------------------------------------------------------


def test_the_session_timer_speaks_waiting_text_then_closes_an_idle_session() -> None:
    clock = FakeClock(10.0)
    hub = make_hub(**{"session.max_buffer_ms": 500, "session.idle_timeout_s": 60.0})
    entry = open_session(hub, clock.now)
    sent(hub, entry, clock.now)
    hub.timers_to_arm()

    say(hub, entry, "c", "no punctuation yet", clock.now, final=False)
    assert hub.phonemize_to_run() == []
    assert dict(hub.timers_to_arm())[entry] == clock.now + 0.5
    assert hub.next_deadline() == clock.now + 0.5
    hub.timeout(entry, clock.advance(0.5))
    assert [job.text for job in hub.phonemize_to_run()] == ["no punctuation yet"]

    hub.receive(entry, dumps({"type": "cancel", "context_id": "c"}), clock.now)
    sent(hub, entry, clock.now)
    assert hub.deadline_of(entry) == clock.now + 60.0
    hub.timeout(entry, clock.advance(60.0))
    assert hub.connections_to_close() == [(entry, 1000, "idle timeout")]


def test_a_later_piece_is_not_due_until_the_first_frame_has_left() -> None:
    clock = FakeClock()
    hub = make_hub()
    entry = open_session(hub, clock.now)
    sent(hub, entry, clock.now)
    say(hub, entry, "c", "First sentence here. Second sentence here.", clock.now)
    phonemize_all(hub, clock.now)
    job = hub.next_batch(clock.advance(0.01))
    assert job is not None and len(job.items) == 1  # one piece per context per batch
    first = job.batch.pieces[0]
    assert first.is_first and first.deadline == clock.now - 0.01
    later = hub.scheduler._sessions[entry.session].pieces[0]
    assert callable(later.deadline) and later.deadline() == float("inf")

    hub.batch_done(job, [audio_for(item) for item in job.items], clock.advance(0.1))
    assert later.deadline() == float("inf")  # audio is ready, but nobody listens yet
    sent(hub, entry, clock.advance(0.1))  # the first frame leaves: playback starts now
    assert clock.now < later.deadline() < float("inf")


# --- engine failures --------------------------------------------------------------------------


def two_quiet_sessions(hub: Hub, now: float) -> tuple[SessionEntry, SessionEntry]:
    """Two sessions whose ``session.created`` is already sent."""
    a, b = open_session(hub, now), open_session(hub, now)
    sent(hub, a, now)
    sent(hub, b, now)
    return a, b


def test_a_failed_batch_fails_only_its_contexts() -> None:
    clock = FakeClock()
    hub = make_hub()
    a, b = two_quiet_sessions(hub, clock.now)
    say(hub, a, "a1", "This one fails.", clock.now)
    phonemize_all(hub, clock.now)
    job = hub.next_batch(clock.advance(0.01))
    assert job is not None and {p.session_key for p in job.batch.pieces} == {a.session}
    say(hub, b, "b1", "This one is fine.", clock.now)  # queued while the batch runs
    phonemize_all(hub, clock.now)

    hub.batch_failed(job, clock.advance(0.01))
    last = sent(hub, a, clock.now)[-1]
    assert (last["type"], last["code"], last["context_id"]) == ("error", "engine_failed", "a1")
    run_engine(hub, clock.advance(0.01))
    assert types(sent(hub, b, clock.now))[-1] == "context.done"
    assert a.session.close_code is None  # the session itself goes on


def test_one_failed_piece_of_a_batch_fails_only_its_context() -> None:
    clock = FakeClock()
    hub = make_hub()
    a, b = two_quiet_sessions(hub, clock.now)
    say(hub, a, "a1", "This one fails.", clock.now)
    say(hub, b, "b1", "This one is fine.", clock.now)
    phonemize_all(hub, clock.now)
    job = hub.next_batch(clock.advance(0.01))
    assert job is not None and len(job.items) == 2
    results = [EngineFailed("boom") if p.session_key is a.session else audio_for(i) for p, i in zip(job.batch.pieces, job.items, strict=True)]
    hub.batch_done(job, results, clock.now)
    assert types(sent(hub, a, clock.now))[-1] == "error"
    assert types(sent(hub, b, clock.now))[-1] == "context.done"


# --- shutdown ---------------------------------------------------------------------------------


def test_drain_finishes_open_contexts_refuses_new_text_and_stop_ends_every_session() -> None:
    clock = FakeClock()
    hub = make_hub()
    entry = open_session(hub, clock.now)
    detached = open_session(hub, clock.now)
    hub.connection_lost(detached, 1006, clock.now)
    sent(hub, entry, clock.now)
    say(hub, entry, "c", "Unfinished text without a final flush", clock.now, final=False)
    assert hub.phonemize_to_run() == []

    hub.drain(clock.advance(0.1))
    assert hub.has_pending_work
    say(hub, entry, "late", "Too late.", clock.now, final=False)
    assert [m["code"] for m in sent(hub, entry, clock.now) if m.get("type") == "error"] == ["shutting_down"]
    phonemize_all(hub, clock.now)
    run_engine(hub, clock.advance(0.01))
    assert types(sent(hub, entry, clock.now))[-1] == "context.done"
    assert not hub.has_pending_work

    hub.stop()
    assert hub.sessions == {}
    assert set(hub.sessions_ended()) == {entry, detached}
