"""The danmaku responder: the pure policy with a fake clock, then one replay against a real server."""

from __future__ import annotations

import json
import wave
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.integrations.danmaku import (
    Comment,
    DanmakuConfig,
    DanmakuPolicy,
    WavSink,
    detect_lang,
    load_comments,
    normalize_comment,
    replay,
)
from tests.utils import FakeClock, run_server

REPO = Path(__file__).resolve().parent.parent


def chat(viewer: str, text: str, **fields: object) -> Comment:
    return Comment(viewer=viewer, text=text, id=f"{viewer}:{text}", **fields)  # type: ignore[arg-type]


def make_policy(clock: FakeClock, **overrides: object) -> DanmakuPolicy:
    config = replace(DanmakuConfig(streamer_names=("Mika", "米卡")), **overrides)  # type: ignore[arg-type]
    return DanmakuPolicy(config, langs=("en", "zh", "ja"), clock=clock)


def drain(policy: DanmakuPolicy, clock: FakeClock | None = None) -> list[str]:
    """Speak everything queued, in the policy's order (waiting for growing groups to settle when a
    clock is given); returns the spoken texts."""
    spoken = []
    while True:
        if clock is not None and (ready_at := policy.next_ready_at()) is not None:
            clock.now = max(clock.now, ready_at)
        utterance = policy.next_utterance()
        if utterance is None:
            return spoken
        policy.mark_spoken(utterance.id)
        spoken.append(utterance.text)


# --- normalisation and language -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [("lol", "LOL"), ("lol", "lol!!"), ("lol", "ｌｏｌ"), ("lol", "loooool"), ("lol", "lolol"),
     ("666", "6666666"), ("哈哈哈", "哈哈哈哈哈！"), ("hahaha", "HAHA"), ("gg wp", "GG  WP!!!")],
)
def test_near_identical_comments_share_one_dedup_key(a: str, b: str) -> None:
    assert normalize_comment(a) == normalize_comment(b) != ""


def test_emoji_and_punctuation_only_comments_have_an_empty_key() -> None:
    assert normalize_comment("👍👍👍") == normalize_comment("？？？!!") == ""


@given(st.text(max_size=40))
@settings(max_examples=200, deadline=None)
def test_normalising_twice_changes_nothing(text: str) -> None:
    key = normalize_comment(text)
    assert normalize_comment(key) == key


def test_language_is_detected_from_the_script() -> None:
    assert detect_lang("hello streamer") == "en"
    assert detect_lang("主播好厉害") == "zh"
    assert detect_lang("主播好 so good") == "zh"
    assert detect_lang("主播 you are great") == "en"  # mostly English: the English G2P reads it
    assert detect_lang("すごい！") == "ja"
    assert detect_lang("666") == "en"


# --- dedup and coalescing -----------------------------------------------------------------------


def test_identical_and_near_identical_comments_within_the_window_are_spoken_once_with_their_count() -> None:
    clock = FakeClock()
    policy = make_policy(clock)
    for i, text in enumerate(["lol", "LOL", "lol!!", "ｌｏｌ", "loooool"]):
        assert policy.add(chat(f"v{i}", text)).outcome == ("queued" if i == 0 else "merged")
        clock.advance(0.1)
    assert policy.next_utterance() is None  # still growing
    assert policy.next_ready_at() == pytest.approx(1.4)
    assert drain(policy, clock) == ["lol, times 5"]
    assert policy.report.merged[0]["count"] == 5


def test_666_spammed_fifty_times_is_spoken_once_as_666_times_50() -> None:
    clock = FakeClock()
    policy = make_policy(clock)
    for i in range(50):
        policy.add(chat(f"viewer{i}", "6" * (3 + i % 4)))
        clock.advance(0.05)
    clock.advance(1.0)
    utterance = policy.next_utterance()
    assert utterance is not None and utterance.count == 50
    assert utterance.text == "666, times 50"
    assert policy.next_utterance() is None


def test_duplicates_arriving_while_or_after_their_group_is_spoken_are_counted_not_spoken_again() -> None:
    clock = FakeClock()
    policy = make_policy(clock)
    policy.add(chat("a", "first!"))
    utterance = policy.next_utterance()
    assert utterance is not None
    assert policy.add(chat("b", "FIRST")).outcome == "merged"  # while it is being spoken
    policy.mark_spoken(utterance.id)
    clock.advance(5)
    assert policy.add(chat("c", "first!!!")).outcome == "merged"  # after, inside the window
    assert policy.next_utterance() is None
    assert policy.report.merged == [
        {"utterance_id": utterance.id, "text": "first!", "count": 3, "before_speaking": 1, "late": 2}
    ]
    clock.advance(30)  # the window has closed: the same words are a new comment
    assert policy.add(chat("d", "first")).outcome == "queued"


def test_longer_lines_that_differ_by_a_typo_merge_but_short_different_words_do_not() -> None:
    clock = FakeClock()
    policy = make_policy(clock)
    policy.add(chat("a", "what game are you playing"))
    assert policy.add(chat("b", "what gmae are you playing?")).outcome == "merged"
    policy.add(chat("c", "ok"))
    assert policy.add(chat("d", "oh")).outcome == "queued"


def test_paid_messages_are_never_merged_and_are_read_with_the_viewers_name() -> None:
    clock = FakeClock()
    policy = make_policy(clock)
    policy.add(Comment("a", "love the stream", kind="superchat", amount=5, name="Ann", id="sc1"))
    policy.add(Comment("b", "love the stream", kind="superchat", amount=5, name="Bob", id="sc2"))
    policy.add(Comment("c", "rocket", kind="gift", amount=100, name="Cat", id="g1"))
    assert drain(policy) == ["Thank you Cat for the rocket!", "Ann says: love the stream", "Bob says: love the stream"]


# --- priority -----------------------------------------------------------------------------------


def test_paid_messages_go_first_then_mentions_of_the_streamer_then_ordinary_chat() -> None:
    clock = FakeClock()
    policy = make_policy(clock)
    policy.add(chat("a", "nice play"))
    policy.add(chat("b", "mika how old are you"))
    policy.add(Comment("c", "keep it up", kind="superchat", amount=10, name="Cy", id="sc"))
    policy.add(chat("d", "米卡今天吃什么"))
    utterances = []
    while (u := policy.next_utterance()) is not None:
        policy.mark_spoken(u.id)
        utterances.append((u.priority, u.lang, u.text))
    assert utterances == [
        (7, "en", "Cy says: keep it up"),
        (4, "en", "mika how old are you"),
        (4, "zh", "米卡今天吃什么"),
        (0, "en", "nice play"),
    ]


def test_larger_paid_amounts_get_higher_priority_up_to_the_protocol_maximum() -> None:
    clock = FakeClock()
    policy = make_policy(clock)
    policy.add(Comment("a", "small", kind="superchat", amount=1, id="s"))
    policy.add(Comment("b", "huge", kind="superchat", amount=10_000, id="h"))
    first = policy.next_utterance()
    assert first is not None and first.priority == 10 and "huge" in first.text


def test_within_one_priority_the_comment_closest_to_its_deadline_goes_first() -> None:
    clock = FakeClock()
    policy = make_policy(clock)
    policy.add(chat("a", "older"))
    clock.advance(1)
    policy.add(chat("b", "newer"))
    assert drain(policy) == ["older", "newer"]


def test_a_crowd_saying_the_same_thing_gets_a_priority_bonus() -> None:
    clock = FakeClock()
    policy = make_policy(clock)
    policy.add(chat("a", "lonely comment"))
    for i in range(5):
        policy.add(chat(f"v{i}", "gg"))
    clock.advance(2)
    first = policy.next_utterance()
    assert first is not None and first.text == "gg, times 5" and first.priority == 1


def test_a_group_still_growing_lets_other_comments_go_first_so_its_count_is_the_crowds() -> None:
    clock = FakeClock()
    policy = make_policy(clock, settle_s=1.0, max_hold_s=4.0)
    policy.add(chat("a", "nice"))
    for i in range(8):
        policy.add(chat(f"v{i}", "666666" if i == 0 else "666"))
        clock.advance(0.1)
    first = policy.next_utterance()
    assert first is not None and first.text == "nice"
    policy.mark_spoken(first.id)
    for i in range(8, 50):
        policy.add(chat(f"v{i}", "6666" if i % 3 == 0 else "666"))
        clock.advance(0.05)
    clock.advance(1.0)
    second = policy.next_utterance()
    assert second is not None and second.text == "666, times 50"  # the form most viewers typed


def test_a_growing_group_is_not_held_past_max_hold() -> None:
    clock = FakeClock()
    policy = make_policy(clock, settle_s=1.0, max_hold_s=2.0)
    for i in range(30):
        policy.add(chat(f"v{i}", "lol"))
        clock.advance(0.1)
    policy.add(chat("x", "something else"))
    first = policy.next_utterance()
    assert first is not None and first.text == "lol, times 30"


def test_when_only_growing_groups_are_queued_nothing_is_said_until_one_settles() -> None:
    clock = FakeClock()
    policy = make_policy(clock, settle_s=1.0, max_hold_s=4.0)
    for i in range(3):
        policy.add(chat(f"v{i}", "gg"))
        clock.advance(0.5)
    assert policy.next_utterance() is None
    assert policy.next_ready_at() == pytest.approx(2.0)
    clock.now = 2.0
    ready = policy.next_utterance()
    assert ready is not None and ready.text == "gg, times 3"


# --- TTL ----------------------------------------------------------------------------------------


def test_a_comment_that_cannot_start_within_its_ttl_is_dropped_and_reported_never_spoken_late() -> None:
    clock = FakeClock()
    policy = make_policy(clock, ttl_chat_s=8.0, start_margin_s=0.3)
    policy.add(chat("a", "hello"))
    clock.advance(7.8)
    assert policy.next_utterance() is None
    [dropped] = policy.report.dropped
    assert (dropped.reason, dropped.by, dropped.comment_id) == ("ttl_expired", "local", "a:hello")


def test_a_comment_is_dropped_before_sending_when_the_queued_audio_would_start_it_too_late() -> None:
    clock = FakeClock()
    policy = make_policy(clock, ttl_chat_s=8.0, start_margin_s=0.3)
    policy.add(chat("a", "hello"))
    policy.add(Comment("b", "thanks", kind="superchat", id="sc"))
    utterance = policy.next_utterance(start_at=9.0)  # the stream is busy for 9 more seconds
    assert utterance is not None and utterance.id != "" and utterance.kind == "superchat"
    assert [d.comment_id for d in policy.report.dropped] == ["a:hello"]


def test_the_ttl_sent_to_the_server_is_what_is_left_before_the_deadline_in_wall_clock_ms() -> None:
    clock = FakeClock()
    policy = make_policy(clock, ttl_chat_s=8.0)
    policy.add(chat("a", "hello"))
    clock.advance(2)
    utterance = policy.next_utterance()
    assert utterance is not None
    assert utterance.ttl_ms(clock.now) == 6000
    assert utterance.ttl_ms(clock.now, margin_s=0.5, time_scale=4.0) == 1375
    assert utterance.ttl_ms(100.0) == 1


def test_the_server_dropping_an_utterance_reports_all_its_comments_as_dropped_by_the_server() -> None:
    clock = FakeClock()
    policy = make_policy(clock)
    policy.add(chat("a", "gg"))
    policy.add(chat("b", "GG"))
    clock.advance(1.0)
    utterance = policy.next_utterance()
    assert utterance is not None
    policy.add(chat("c", "gg!"))  # merged while in flight
    policy.mark_dropped(utterance.id, "ttl_expired")
    assert [(d.comment_id, d.reason, d.by) for d in policy.report.dropped] == [
        ("a:gg", "ttl_expired", "server"), ("b:GG", "ttl_expired", "server"), ("c:gg!", "ttl_expired", "server")
    ]
    assert policy.add(chat("d", "gg")).outcome == "queued"  # a dropped group takes no more echoes


def test_expire_reports_stale_comments_while_the_stream_is_busy() -> None:
    clock = FakeClock()
    policy = make_policy(clock, ttl_chat_s=8.0, ttl_mention_s=20.0)
    policy.add(chat("a", "hello"))
    policy.add(chat("b", "Mika hi"))
    assert policy.next_deadline() == pytest.approx(7.7)
    clock.advance(10)
    assert policy.expire() == 1
    assert policy.num_queued == 1


# --- rate limits and bounds ---------------------------------------------------------------------


def test_a_viewer_over_the_rate_limit_is_dropped_and_the_bucket_refills_over_time() -> None:
    clock = FakeClock()
    policy = make_policy(clock, viewer_rate_per_s=0.2, viewer_burst=2.0)
    texts = ["buy my stuff", "visit my page", "follow me", "free coins here", "click the link"]
    outcomes = [policy.add(chat("spammer", text)).outcome for text in texts]
    assert outcomes == ["queued", "queued", "dropped", "dropped", "dropped"]
    assert {d.reason for d in policy.report.dropped} == {"rate_limited"}
    assert policy.add(chat("someone_else", "hi")).outcome == "queued"
    clock.advance(5)
    assert policy.add(chat("spammer", "after a pause")).outcome == "queued"


def test_idle_viewers_buckets_are_pruned_but_a_drained_one_keeps_its_debt() -> None:
    clock = FakeClock()
    policy = make_policy(clock, viewer_rate_per_s=0.2, viewer_burst=2.0, max_queued=1)
    for i in range(10_000):  # one bucket each
        policy.add(chat(f"v{i}", "hi"))
    clock.advance(5.0)
    for text in ("one", "two", "three"):  # the spammer drains its bucket: "three" is over it
        policy.add(chat("spammer", text))
    clock.advance(5.5)  # the viewers' buckets are full again (burst / rate = 10 s), the spammer's not
    policy.add(chat("newcomer", "hello"))  # the 10 002nd bucket: the full ones are forgotten
    assert set(policy._buckets) == {"spammer", "newcomer"}
    for text in ("four", "five"):  # 1.1 tokens back since "three": one comment, not a fresh burst
        policy.add(chat("spammer", text))
    limited = [d.comment_id for d in policy.report.dropped if d.reason == "rate_limited"]
    assert limited == ["spammer:three", "spammer:five"]


def test_one_viewer_spamming_does_not_inflate_a_merged_count() -> None:
    clock = FakeClock()
    policy = make_policy(clock, viewer_rate_per_s=0.2, viewer_burst=2.0)
    for _ in range(20):
        policy.add(chat("spammer", "666"))
    clock.advance(1.0)
    utterance = policy.next_utterance()
    assert utterance is not None and utterance.count == 2 and utterance.text == "666"


def test_paid_messages_are_exempt_from_the_rate_limit() -> None:
    clock = FakeClock()
    policy = make_policy(clock, viewer_rate_per_s=0.2, viewer_burst=1.0)
    outcomes = [policy.add(Comment("rich", f"gift {i}", kind="gift", id=str(i))).outcome for i in range(4)]
    assert outcomes == ["queued"] * 4


def test_a_full_queue_evicts_the_least_urgent_comment() -> None:
    clock = FakeClock()
    policy = make_policy(clock, max_queued=3)
    for i, text in enumerate(["nice", "cool", "wow"]):
        policy.add(chat(f"v{i}", text))
        clock.advance(0.1)
    assert policy.add(chat("m", "Mika look here")).outcome == "queued"
    # Of the plain comments, the newest would be spoken last: it goes.
    assert [(d.comment_id, d.reason) for d in policy.report.dropped] == [("v2:wow", "queue_full")]
    assert policy.add(chat("late", "one more plain comment")).outcome == "dropped"


def test_chinese_lines_are_dropped_when_the_server_has_no_chinese_g2p() -> None:
    clock = FakeClock()
    policy = DanmakuPolicy(DanmakuConfig(), langs=("en", "ja"), clock=clock)
    assert policy.add(chat("a", "主播好厉害")).reason == "lang_unavailable"
    assert policy.add(chat("b", "すごい")).outcome == "queued"
    assert policy.add(chat("c", "👍👍")).reason == "empty"


def test_long_comments_are_cut_at_a_word_boundary() -> None:
    clock = FakeClock()
    policy = make_policy(clock, max_chars=20)
    policy.add(chat("a", "this is a very long comment that goes on and on"))
    assert drain(policy) == ["this is a very long"]


# --- accounting -----------------------------------------------------------------------------------

_events = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.sampled_from(["a", "b", "c", "d"]),
            st.sampled_from(["666", "lol", "LOL!", "hi mika", "主播", "👍", "what game is this"]),
        ),
        st.tuples(st.just("paid"), st.sampled_from(["a", "z"]), st.sampled_from(["thanks", ""])),
        st.tuples(st.just("tick"), st.floats(0.0, 6.0), st.just("")),
        st.tuples(st.just("speak"), st.sampled_from(["spoken", "dropped"]), st.just("")),
    ),
    max_size=60,
)


@given(_events)
@settings(max_examples=150, deadline=None)
def test_every_comment_ends_up_spoken_merged_dropped_or_still_queued_exactly_once(
    events: list[tuple[object, object, object]],
) -> None:
    clock = FakeClock()
    policy = make_policy(clock, max_queued=4)
    in_flight = None
    num = 0
    for kind, a, b in events:
        if kind in ("add", "paid"):
            num += 1
            policy.add(Comment(str(a), str(b), kind="chat" if kind == "add" else "gift", id=str(num)))
        elif kind == "tick":
            clock.advance(float(a))  # type: ignore[arg-type]
        elif in_flight is None:
            in_flight = policy.next_utterance()
        else:
            if a == "spoken":
                policy.mark_spoken(in_flight.id)
            else:
                policy.mark_dropped(in_flight.id)
            in_flight = None
    if in_flight is not None:
        policy.mark_spoken(in_flight.id)
    pending = policy.num_queued
    spoken_ids = [cid for s in policy.report.spoken for cid in s.comment_ids]
    drained = drain(policy, clock)
    assert policy.num_queued == 0
    report = policy.report
    assert report.num_comments == num
    assert report.num_spoken_comments + len(report.dropped) == num
    assert len(drained) <= pending
    dropped_ids = {d.comment_id for d in report.dropped}
    assert not dropped_ids & set(spoken_ids)


# --- end to end -----------------------------------------------------------------------------------


async def test_a_short_comment_log_replayed_against_the_server_gives_one_wav_and_a_report(tmp_path: Path) -> None:
    from gateway.client import VoxgateClient

    comments = [c for c in load_comments(REPO / "examples" / "comments.jsonl") if c.at < 12.0]
    assert len(comments) >= 30
    overrides = {"session.max_messages_per_s": 0, "session.max_chars_per_s": 0}
    async with run_server(overrides) as gateway:
        async with VoxgateClient(f"ws://127.0.0.1:{gateway.port}") as client:
            # Load the G2Ps first (seconds each, on the server's one G2P thread).
            for lang, text in (("en", "Warm up."), ("zh", "开始。")):
                if lang in client.langs:
                    await client.speak(text, lang=lang).read_all()
            sink = WavSink(tmp_path / "stream.wav")
            # Long TTLs: on a loaded CI machine slowness must not drop the burst this test looks for
            # (TTL behaviour is covered by the policy tests above).
            config = DanmakuConfig(streamer_names=("Mika", "米卡"), ttl_chat_s=30.0, ttl_mention_s=30.0)
            report = await replay(comments, client, sink, config=config, time_scale=4.0)
            sink.close()
    data = report.to_dict()
    json.dumps(data, ensure_ascii=False)  # the JSON report is serialisable as it is
    assert data["num_comments"] == len(comments)
    assert report.num_spoken_comments + len(report.dropped) == len(comments)
    assert report.spoken and report.merged
    assert max(m["count"] for m in report.merged) >= 10  # the "666" burst
    starts = [(s.start_s, s.audio_ms) for s in report.spoken]
    for (start, ms), (next_start, _) in zip(starts, starts[1:]):
        assert next_start >= start + ms / 1000 - 1e-3  # one stream: utterances never overlap
    with wave.open(str(sink.path)) as wav:
        assert wav.getframerate() == 24_000
        assert wav.getnframes() / 24_000 >= starts[-1][0] + starts[-1][1] / 1000 - 0.01
    assert "utterances spoken" in report.summary()
