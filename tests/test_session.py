"""The session state machine, driven without a socket, a thread or a clock."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from gateway.config import SegmenterConfig, SessionConfig
from gateway.engines.base import SynthesisItem
from gateway.engines.fake import FakeEngine
from gateway.errors import EngineFailed, InvalidState
from gateway.protocol import FrameFlags, decode_audio_frame
from gateway.session import PieceRequest, Session

ENGINE = FakeEngine(voices=("v1", "v2"), frames_per_token=2)


def make_session(now: float = 0.0, resume_token: str = "secret-token", **overrides: Any) -> Session:
    config = dataclasses.replace(SessionConfig(max_messages_per_s=0, max_chars_per_s=0), **overrides)
    return Session(
        "s1", config=config, segmenter_config=SegmenterConfig(), voices=["v1", "v2"], langs=["en", "ja"], now=now, resume_token=resume_token
    )


def send(session: Session, now: float = 0.0, **message: Any) -> None:
    session.receive_text(orjson.dumps(message), now)


def drain(session: Session, now: float = 0.0) -> list[Any]:
    out = []
    while (item := session.next_outgoing(now)) is not None:
        out.append(decode_audio_frame(item) if isinstance(item, bytes) else orjson.loads(item))
    return out


def synthesize(session: Session, requests: list[PieceRequest], now: float = 0.0, order: list[int] | None = None) -> None:
    """Play the server's part: G2P (text as 'phonemes'), then the engine, in any completion order."""
    for request in requests:
        session.set_parts(request, 1, now)
    for i in order if order is not None else range(len(requests)):
        request = requests[i]
        item = SynthesisItem(phonemes=request.text[:100], voice=request.context.settings.voice)
        session.receive_audio(request, 0, ENGINE.synthesize([item])[0], now)


def frames(out: list[Any]) -> list[Any]:
    return [o for o in out if not isinstance(o, dict)]


def messages(out: list[Any], kind: str) -> list[dict]:
    return [o for o in out if isinstance(o, dict) and o["type"] == kind]


def test_the_first_message_is_session_created_with_effective_settings() -> None:
    out = drain(make_session())
    assert out[0]["type"] == "session.created"
    assert out[0]["settings"]["voice"] == "v1" and out[0]["audio"]["sample_rate"] == 24_000
    assert out[0]["voices"] == ["v1", "v2"]


def test_a_context_speaks_with_gap_free_seq_and_ends_with_done_after_its_last_frame() -> None:
    s = make_session()
    drain(s)
    send(s, type="text", context_id="c", text="Hello there, my friend. How are you doing today?")
    send(s, type="flush", context_id="c", final=True)
    requests = s.pieces_to_schedule()
    assert len(requests) >= 2 and requests[0].is_first
    synthesize(s, requests)
    out = drain(s)
    assert out[0] == {"type": "context.started", "context_id": "c", "index": 0}
    fs = frames(out)
    assert [h.seq for h, _ in fs] == list(range(len(fs)))
    assert fs[0][0].flags & FrameFlags.FIRST and fs[-1][0].flags & FrameFlags.LAST
    assert sum(bool(h.flags & FrameFlags.LAST) for h, _ in fs) == 1
    offsets = [h.sample_offset for h, _ in fs]
    assert offsets == [sum(len(p) // 2 for _, p in fs[:i]) for i in range(len(fs))]
    done = out[-1]
    assert done["type"] == "context.done" and done["last_seq"] == fs[-1][0].seq
    assert done["audio_ms"] == pytest.approx(sum(len(p) // 2 for _, p in fs) / 24.0)


def test_pieces_finished_out_of_order_are_delivered_in_speaking_order() -> None:
    in_order, shuffled = make_session(), make_session()
    for s in (in_order, shuffled):
        send(s, type="text", context_id="c", text="One, two three four five. Six seven eight nine ten! Eleven twelve.")
        send(s, type="flush", context_id="c", final=True)
    a, b = in_order.pieces_to_schedule(), shuffled.pieces_to_schedule()
    assert len(a) == len(b) >= 3
    synthesize(in_order, a)
    synthesize(shuffled, b, order=list(reversed(range(len(b)))))
    assert [p for _, p in frames(drain(in_order))] == [p for _, p in frames(drain(shuffled))]


def test_after_cancelled_no_frame_of_that_context_follows_and_seq_stays_gap_free() -> None:
    s = make_session()
    send(s, type="text", context_id="long", text="A long story begins here. " * 10)
    send(s, type="text", context_id="other", text="Meanwhile, elsewhere.")
    send(s, type="flush", context_id="other", final=True)
    requests = s.pieces_to_schedule()
    long_reqs = [r for r in requests if r.context.context_id == "long"]
    other_reqs = [r for r in requests if r.context.context_id == "other"]
    synthesize(s, long_reqs[:2])
    head = [s.next_outgoing(0.0) for _ in range(4)]  # some frames of "long" already left
    send(s, type="cancel", context_id="long")
    assert [c.context_id for c in s.contexts_to_cancel()] == ["long"]
    synthesize(s, long_reqs[2:])  # results arriving after the cancel are ignored
    synthesize(s, other_reqs)
    out = [decode_audio_frame(h) if isinstance(h, bytes) else orjson.loads(h) for h in head if h] + drain(s)
    cancelled_at = next(i for i, o in enumerate(out) if isinstance(o, dict) and o["type"] == "cancelled")
    long_index = 0
    assert not any(not isinstance(o, dict) and o[0].context_index == long_index for o in out[cancelled_at:])
    assert out[cancelled_at]["last_seq"] == max(o[0].seq for o in out[:cancelled_at] if not isinstance(o, dict))
    seqs = [h.seq for h, _ in frames(out)]
    assert seqs == list(range(len(seqs)))
    assert messages(out, "context.done")[0]["context_id"] == "other"


def test_cancel_is_idempotent_and_answers_unknown_contexts() -> None:
    s = make_session()
    drain(s)
    send(s, type="text", context_id="c", text="Hello there, my friend. How are you doing today?")
    send(s, type="flush", context_id="c", final=True)
    requests = s.pieces_to_schedule()
    synthesize(s, requests[:1])
    send(s, type="cancel", context_id="c")
    send(s, type="cancel", context_id="c")  # the same cancel again, before the scheduler has heard of the first
    send(s, type="cancel")  # and "cancel everything", with nothing left open
    # The scheduler is told once; results arriving after the cancel change nothing.
    assert [c.context_id for c in s.contexts_to_cancel()] == ["c"]
    assert s.contexts_to_cancel() == []
    synthesize(s, requests[1:])
    assert s.contexts_to_cancel() == [] and s.pieces_to_schedule() == []
    send(s, type="cancel", context_id="nope")
    out = drain(s)
    # Every cancel is answered, each with the same last_seq (nothing was sent in between), and no
    # audio, context.done or second purge follows.
    answers = messages(out, "cancelled")
    assert [(a["context_id"], a["last_seq"]) for a in answers] == [("c", None), ("c", None), (None, None), ("nope", None)]
    assert [o["type"] for o in out] == ["context.started"] + ["cancelled"] * 4


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (b"{oops", "bad_json"),
        (b'{"type":"sing"}', "unknown_type"),
        (b'{"type":"text","context_id":"c","text":7}', "bad_field"),
        (b'{"type":"text","context_id":"c","text":""}', "empty_text"),
        (b'{"type":"text","context_id":"c","text":"hi","voice":"nobody"}', "unknown_voice"),
        (b'{"type":"text","context_id":"c","text":"hi","lang":"xx"}', "unknown_lang"),
        (b'{"type":"flush","context_id":"ghost"}', "unknown_context"),
        (b'{"type":"session.update","voice":"nobody"}', "unknown_voice"),
    ],
)
def test_bad_input_gets_its_error_code_and_the_session_goes_on(message: bytes, code: str) -> None:
    s = make_session()
    drain(s)
    s.receive_text(message, 0.0)
    out = drain(s)
    assert out[-1]["type"] == "error" and out[-1]["code"] == code and out[-1]["message"]
    send(s, type="text", context_id="ok", text="Still here.")
    send(s, type="flush", context_id="ok", final=True)
    synthesize(s, s.pieces_to_schedule())
    assert messages(drain(s), "context.done")


def test_binary_from_the_client_is_refused_with_an_error() -> None:
    s = make_session()
    drain(s)
    s.receive_binary(0.0)
    assert drain(s)[-1]["code"] == "binary_not_allowed"


def test_limits_on_text_size_and_contexts() -> None:
    s = make_session(max_text_chars_per_message=10, max_contexts=1)
    drain(s)
    send(s, type="text", context_id="a", text="x" * 11)
    send(s, type="text", context_id="a", text="fine")
    send(s, type="text", context_id="b", text="second")
    assert [o["code"] for o in messages(drain(s), "error")] == ["text_too_long", "too_many_contexts"]


def test_the_rate_limit_answers_rate_limited() -> None:
    s = make_session(max_messages_per_s=5)
    drain(s)
    for _ in range(8):
        send(s, 0.0, type="session.update", speed=1.0)
    assert [o["code"] for o in messages(drain(s), "error")] == ["rate_limited"] * 3
    send(s, 1.0, type="session.update", speed=1.0)
    assert not messages(drain(s), "error")


def test_session_update_applies_to_contexts_started_afterwards_and_ulaw_is_8khz() -> None:
    s = make_session()
    drain(s)
    send(s, type="session.update", format="ulaw", frame_ms=40, voice="v2")
    updated = drain(s)[-1]
    assert updated["type"] == "session.updated"
    assert updated["settings"]["sample_rate"] == 8_000 and updated["settings"]["voice"] == "v2"
    send(s, type="text", context_id="c", text="Hello world.")
    send(s, type="flush", context_id="c", final=True)
    synthesize(s, s.pieces_to_schedule())
    fs = frames(drain(s))
    assert all(len(p) == 320 for _, p in fs[:-1])  # 40 ms of 8 kHz mu-law, one byte per sample


def test_text_waiting_without_punctuation_is_spoken_after_max_buffer_ms() -> None:
    s = make_session(max_buffer_ms=300)
    send(s, 0.0, type="text", context_id="c", text="no punctuation yet")
    assert s.pieces_to_schedule() == []
    assert s.next_deadline() == pytest.approx(0.3)
    s.receive_timeout(0.2)
    assert s.pieces_to_schedule() == []
    s.receive_timeout(0.31)
    assert [r.text.strip() for r in s.pieces_to_schedule()] == ["no punctuation yet"]


def test_alignment_is_sent_before_the_audio_with_times_relative_to_the_context() -> None:
    from gateway.text.g2p import WordSpan

    s = make_session()
    send(s, type="session.update", alignment=True)
    send(s, type="text", context_id="c", text="Hello world. Good bye now.")
    send(s, type="flush", context_id="c", final=True)
    requests = s.pieces_to_schedule()
    assert len(requests) == 2
    for r in requests:
        s.set_parts(r, 1, 0.0)
    results = [ENGINE.synthesize([SynthesisItem(phonemes="abcde", voice="v1")])[0] for _ in requests]
    for r, res in zip(requests, results):
        s.receive_audio(r, 0, res, 0.0, words=[WordSpan("w", 0, 2), WordSpan("x", 3, 5)])
    out = drain(s)
    aligned = messages(out, "alignment")
    assert len(aligned) == 2
    first_frame = next(i for i, o in enumerate(out) if not isinstance(o, dict))
    assert out.index(aligned[0]) < first_frame
    # 7 tokens x 2 frames x 25 ms per piece; the second piece's words are shifted by the first's audio.
    assert aligned[0]["words"][0] == {"word": "w", "start_ms": 50.0, "end_ms": 150.0}
    assert aligned[1]["words"][0]["start_ms"] == pytest.approx(350.0 + 50.0)


def test_backpressure_pauses_over_the_high_water_mark_and_resumes_below_the_low_one() -> None:
    s = make_session(output_high_water_ms=300, output_low_water_ms=100)
    send(s, type="text", context_id="c", text="Some words here. And more words there. Even more words to say.")
    send(s, type="flush", context_id="c", final=True)
    synthesize(s, s.pieces_to_schedule())
    assert s.paused and s.take_pause_change() is True
    while s.paused:
        assert s.next_outgoing(0.0) is not None
    assert s.queued_audio_ms <= 100 and s.take_pause_change() is False


def test_a_consumer_that_never_reads_is_closed_after_the_timeout() -> None:
    s = make_session(output_high_water_ms=100, output_low_water_ms=50, slow_consumer_timeout_s=5)
    send(s, 1.0, type="text", context_id="c", text="Lots of audio for nobody. Really quite a lot of it.")
    send(s, 1.0, type="flush", context_id="c", final=True)
    synthesize(s, s.pieces_to_schedule(), now=1.0)
    assert s.paused and s.next_deadline() == pytest.approx(6.0)
    s.receive_timeout(6.0)
    assert s.close_code == 1008
    assert drain(s)[-1]["code"] == "slow_consumer"


def test_engine_failure_ends_only_its_context() -> None:
    s = make_session()
    send(s, type="text", context_id="bad", text="Broken.")
    send(s, type="text", context_id="good", text="Fine.")
    for cid in ("bad", "good"):
        send(s, type="flush", context_id=cid, final=True)
    bad, good = s.pieces_to_schedule()
    s.receive_failure(bad, EngineFailed("synthesis failed for this piece"), 0.0)
    synthesize(s, [good])
    out = drain(s)
    assert messages(out, "error")[0] == {"type": "error", "code": "engine_failed", "message": "synthesis failed for this piece", "context_id": "bad"}
    assert [m["context_id"] for m in messages(out, "context.done")] == ["good"]


def test_ttl_dropped_pieces_are_reported_and_the_context_still_ends() -> None:
    s = make_session()
    send(s, type="text", context_id="c", text="Stale comment.", ttl_ms=100)
    send(s, type="flush", context_id="c", final=True)
    (request,) = s.pieces_to_schedule()
    s.set_parts(request, 1, 0.0)
    s.receive_dropped(request, 0, "ttl_expired", 0.5)
    out = drain(s)
    assert messages(out, "context.dropped")[0]["reason"] == "ttl_expired"
    assert messages(out, "context.done")[0]["last_seq"] is None
    assert not frames(out)


def test_audio_for_another_sessions_context_is_refused() -> None:
    mine, theirs = make_session(), make_session()
    send(theirs, type="text", context_id="c", text="Theirs.")
    send(theirs, type="flush", context_id="c", final=True)
    (request,) = theirs.pieces_to_schedule()
    result = ENGINE.synthesize([SynthesisItem(phonemes="abc", voice="v1")])[0]
    with pytest.raises(InvalidState):
        mine.receive_audio(request, 0, result, 0.0)


def test_a_context_id_can_be_reused_after_its_context_is_done() -> None:
    s = make_session()
    for _ in range(2):
        send(s, type="text", context_id="c", text="Again.")
        send(s, type="flush", context_id="c", final=True)
        synthesize(s, s.pieces_to_schedule())
    out = drain(s)
    assert [m["index"] for m in messages(out, "context.started")] == [0, 1]


def test_detach_drops_work_and_resume_replays_missed_frames_with_the_same_numbering() -> None:
    s = make_session(resume_grace_s=30)
    send(s, type="text", context_id="c", text="Before the network dropped.")
    send(s, type="flush", context_id="c", final=True)
    synthesize(s, s.pieces_to_schedule())
    out = drain(s)
    seqs = [h.seq for h, _ in frames(out)]
    send(s, type="text", context_id="d", text="Interrupted speech")
    s.detach(1.0)
    assert [c.context_id for c in s.contexts_to_cancel()] == ["d"]
    replay = s.resume(seqs[1], 2.0, token="secret-token")
    assert replay is not None
    assert [decode_audio_frame(f)[0].seq for f in replay] == seqs[2:]
    send(s, 2.0, type="text", context_id="e", text="After.")
    send(s, 2.0, type="flush", context_id="e", final=True)
    synthesize(s, s.pieces_to_schedule(), now=2.0)
    after = [h.seq for h, _ in frames(drain(s, 2.0))]
    assert after[0] == seqs[-1] + 1


def test_resume_beyond_the_replay_buffer_fails() -> None:
    s = make_session(replay_buffer_frames=2)
    send(s, type="text", context_id="c", text="Enough audio for several frames.")
    send(s, type="flush", context_id="c", final=True)
    synthesize(s, s.pieces_to_schedule())
    drain(s)
    s.detach(1.0)
    assert s.resume(0, 2.0, token="secret-token") is None


def test_text_over_the_per_context_limit_is_refused_while_the_context_goes_on() -> None:
    s = make_session(max_text_chars_per_context=20)
    drain(s)
    send(s, type="text", context_id="c", text="twelve chars")
    send(s, type="text", context_id="c", text="and eleven!")
    send(s, type="text", context_id="c", text="ok.")
    assert [o["code"] for o in messages(drain(s), "error")] == ["text_too_long"]
    assert s.contexts["c"].text_chars == len("twelve chars") + len("ok.")


def test_an_idle_session_is_closed_but_not_while_it_has_work() -> None:
    s = make_session(idle_timeout_s=60)
    drain(s)
    assert s.next_deadline() == pytest.approx(60.0)
    s.receive_timeout(59.0)
    assert s.close_code is None
    send(s, 59.0, type="text", context_id="c", text="Busy now.")
    s.receive_timeout(200.0)  # an open context is work: no idle close
    assert s.close_code is None
    send(s, 200.0, type="flush", context_id="c", final=True)
    synthesize(s, s.pieces_to_schedule(), now=200.0)
    drain(s, 200.0)
    s.receive_timeout(259.0)
    assert s.close_code is None
    s.receive_timeout(260.5)
    assert s.close_code == 1000 and s.close_reason == "idle timeout"


def test_a_closed_slow_consumer_has_no_deadline_left_and_is_closed_once() -> None:
    s = make_session(output_high_water_ms=100, output_low_water_ms=50, slow_consumer_timeout_s=5)
    send(s, 1.0, type="text", context_id="c", text="Lots of audio for nobody. Really quite a lot of it.")
    send(s, 1.0, type="flush", context_id="c", final=True)
    synthesize(s, s.pieces_to_schedule(), now=1.0)
    s.receive_timeout(6.0)
    # Before the fix the deadline stayed at 6.0: the server's timer fired on every loop turn, each
    # time queueing another slow_consumer error and another close.
    assert s.next_deadline() is None
    for now in (6.0, 6.1, 7.0):
        s.receive_timeout(now)
    assert [m["code"] for m in messages(drain(s, 7.0), "error")] == ["slow_consumer"]


def test_binary_frames_are_rate_limited_and_a_flood_is_answered_a_few_times_then_closed() -> None:
    s = make_session(max_messages_per_s=5, max_violations=50, violation_window_s=10)
    drain(s)
    for _ in range(200):
        s.receive_binary(0.0)
        if s.close_code is not None:
            break
    errors = messages(drain(s), "error")
    # 10 answers, then silence, then one closing error: not one reply per message.
    assert len(errors) == 11
    assert errors[-1]["code"] == "too_many_violations" and s.close_code == 1008
    assert {e["code"] for e in errors[:-1]} <= {"binary_not_allowed", "rate_limited"}


def test_violations_spread_over_windows_do_not_close_the_session() -> None:
    s = make_session(max_violations=5, violation_window_s=1)
    for second in range(20):
        for _ in range(3):
            send(s, float(second), type="bogus")
    assert s.close_code is None


def test_control_messages_count_toward_the_outbox_bound() -> None:
    s = make_session(max_queued_messages=16, max_violations=0)
    for i in range(100):
        send(s, float(i), type="cancel", context_id=f"none{i}")  # each answers one "cancelled"
    out = drain(s)
    assert len(out) == 17 and s.close_code == 1008
    assert out[-1]["code"] == "outbox_full"


def test_replay_and_outbox_are_bounded_in_bytes_whatever_the_client_asks_for() -> None:
    s = make_session(replay_buffer_frames=500, replay_buffer_bytes=20_000, output_high_water_bytes=30_000)
    send(s, type="session.update", format="pcm_f32le", sample_rate=48_000, frame_ms=1000)
    send(s, type="text", context_id="c", text="Enough audio for several big frames, and then some more of it.")
    send(s, type="flush", context_id="c", final=True)
    synthesize(s, s.pieces_to_schedule())
    assert s.paused  # by bytes: the audio is far below output_high_water_ms
    drain(s)
    assert s._replay.num_bytes <= 20_000 or len(s._replay) == 1


def test_resume_needs_the_sessions_resume_token() -> None:
    s = make_session(resume_grace_s=30)
    assert drain(s)[0]["resume_token"] == "secret-token"
    s.detach(1.0)
    assert s.resume(-1, 2.0, token="wrong") is None
    assert s.resume(-1, 2.0, token="") is None
    assert s.resume(-1, 2.0, token="secret-token") == []


def test_a_session_without_a_resume_token_cannot_be_resumed() -> None:
    s = make_session(resume_token="", resume_grace_s=30)
    assert "resume_token" not in drain(s)[0]
    s.detach(1.0)
    assert s.resume(-1, 2.0, token="") is None


def test_drain_finishes_open_contexts_and_refuses_new_text() -> None:
    s = make_session()
    drain(s)
    send(s, type="text", context_id="c", text="Half a sentence without its end")
    assert not s.pieces_to_schedule()  # waiting for more text
    s.drain(1.0)
    requests = s.pieces_to_schedule()
    assert [r.text for r in requests] == ["Half a sentence without its end"]
    send(s, 1.0, type="text", context_id="d", text="New text.")
    synthesize(s, requests, now=1.0)
    out = drain(s, 1.0)
    assert [m["context_id"] for m in messages(out, "context.done")] == ["c"]
    assert messages(out, "error")[0]["code"] == "shutting_down"
