"""Danmaku text as viewers say it (gateway.integrations.danmaku_text), and the policy sending it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.integrations.danmaku import Comment, DanmakuConfig, DanmakuPolicy
from gateway.integrations.danmaku_text import NetspeakNormalizer
from tests.utils import FakeClock

said = NetspeakNormalizer()


@pytest.mark.parametrize(
    ("text", "lang", "expected"),
    [
        ("666", "en", "six six six"),
        ("6666", "en", "six six six six"),
        ("66666666", "en", "six six six six"),
        ("888", "en", "eight eight eight"),
        ("666!!!", "en", "six six six!"),
        ("主播666", "zh", "主播六六六"),
        ("666", "ja", "ろくろくろく"),
        ("1000 subs", "en", "1000 subs"),  # a number, not a run: the G2P reads it
        ("3.333", "en", "3.333"),
    ],
)
def test_one_digit_typed_again_and_again_is_read_digit_by_digit(text: str, lang: str, expected: str) -> None:
    assert said(text, lang) == expected


@pytest.mark.parametrize(
    ("text", "lang", "expected"),
    [
        ("哈哈哈哈哈哈哈哈", "zh", "哈哈哈"),
        ("2333333", "zh", "哈哈哈"),
        ("hhhhh", "zh", "哈哈哈"),
        ("www", "ja", "わらわら"),
        ("wwww", "ja", "わらわら"),
        ("ww", "ja", "わらわら"),
        ("wwww", "en", "haha"),
        ("www.example.com", "en", "www.example.com"),
        ("lol", "en", "lol"),
        ("LOLOLOL that was great", "en", "lol that was great"),
        ("loooool", "en", "lol"),
        ("lmao", "en", "L M A O"),
        ("lmaooooo", "en", "L M A O"),
        ("主播lol", "zh", "主播lol"),
        ("主播lmao", "zh", "主播L M A O"),
        ("hahahahahaha", "en", "hahaha"),
    ],
)
def test_laughter_is_said_as_laughter_once(text: str, lang: str, expected: str) -> None:
    assert said(text, lang) == expected


@pytest.mark.parametrize(
    ("text", "lang", "expected"),
    [
        ("sooooo good!!!!", "en", "soo good!"),
        ("啊啊啊啊啊啊", "zh", "啊啊啊"),
        ("来了来了来了来了来了", "zh", "来了来了来了"),
        ("gg gg gg gg gg", "en", "G G G G G G"),
        ("what???", "en", "what?"),
        ("すごい。。。", "ja", "すごい…"),
        ("Thank you 小明16 for the lightstick!", "en", "Thank you 小明16 for the lightstick!"),
    ],
)
def test_repeats_are_collapsed_and_ordinary_text_is_left_alone(text: str, lang: str, expected: str) -> None:
    assert said(text, lang) == expected


def test_emoji_are_dropped_by_default_or_named_from_a_configurable_table() -> None:
    assert said("nice 🔥🔥 play 👍", "en") == "nice play"
    named = NetspeakNormalizer(emoji="name", emoji_names={"🦄": "unicorn", "🔥": ""})
    assert named("👍👍👍", "en") == "thumbs up"
    assert named("❤️", "zh") == "爱心"
    assert named("nice 🔥 play 🦄", "en") == "nice play unicorn"  # "" drops one; unknown ones drop
    assert named("🐙", "en") == ""


def test_configured_replacements_come_first_and_match_whole_words() -> None:
    custom = NetspeakNormalizer(replacements={"en": {"pog": "pog champ"}, "zh": {"yyds": "永远的神"}})
    assert custom("POG that was pog", "en") == "pog champ that was pog champ"
    assert custom("pogo stick", "en") == "pogo stick"
    assert custom("主播yyds", "zh") == "主播永远的神"
    assert NetspeakNormalizer(netspeak=False)("666 lol 👍", "en") == "666 lol"


@given(st.text(max_size=40), st.sampled_from(["en", "zh", "ja"]))
@settings(max_examples=200, deadline=None)
def test_the_normaliser_never_fails_and_never_grows_text_without_bound(text: str, lang: str) -> None:
    out = NetspeakNormalizer(emoji="name")(text, lang)
    assert len(out) <= 12 * len(text) + 12


# --- the policy sends it; captions and the report keep what was typed ----------------------------


def make_policy(clock: FakeClock, **overrides: object) -> DanmakuPolicy:
    config = DanmakuConfig(streamer_names=("Mika",), **overrides)  # type: ignore[arg-type]
    return DanmakuPolicy(config, langs=("en", "zh", "ja"), clock=clock)


def test_the_666_crowd_is_shown_as_typed_and_said_six_six_six() -> None:
    clock = FakeClock()
    policy = make_policy(clock)
    for i in range(50):
        policy.add(Comment(f"v{i}", "6" * (3 + i % 4), id=str(i)))
        clock.advance(0.05)
    clock.advance(1.0)
    utterance = policy.next_utterance()
    assert utterance is not None
    assert (utterance.text, utterance.speech) == ("666, times 50", "six six six, times 50")
    entry = policy.mark_spoken(utterance.id)
    assert (entry.text, entry.speech) == ("666, times 50", "six six six, times 50")


def test_a_chinese_line_is_said_with_the_chinese_table() -> None:
    clock = FakeClock()
    policy = make_policy(clock)
    policy.add(Comment("a", "主播666哈哈哈哈哈哈", id="z"))
    utterance = policy.next_utterance()
    assert utterance is not None and utterance.lang == "zh" and utterance.speech == "主播六六六哈哈哈"


def test_with_emoji_names_an_emoji_only_comment_is_said_instead_of_dropped() -> None:
    clock = FakeClock()
    assert make_policy(clock).add(Comment("a", "👍👍👍", id="e")).reason == "empty"
    policy = make_policy(clock, emoji="name")
    assert policy.add(Comment("a", "👍👍👍", id="e")).outcome == "queued"
    utterance = policy.next_utterance()
    assert utterance is not None and utterance.speech == "thumbs up"


def test_a_comment_the_platform_marks_as_a_mention_gets_mention_priority_and_ttl() -> None:
    clock = FakeClock()
    policy = make_policy(clock, ttl_mention_s=20.0, ttl_chat_s=8.0)
    policy.add(Comment("a", "plain chat", id="c"))
    policy.add(Comment("b", "what game is this?", kind="mention", id="m"))
    first = policy.next_utterance()
    assert first is not None and first.comment_ids == ("m",) and first.priority == 4
    assert first.deadline == pytest.approx(20.0)


def test_the_summary_shows_a_merged_group_that_was_dropped_as_too_late() -> None:
    clock = FakeClock()
    policy = make_policy(clock, ttl_chat_s=8.0)
    for i in range(50):
        policy.add(Comment(f"v{i}", "666", id=str(i)))
    policy.add(Comment("x", "hello", id="h"))
    spoken = policy.next_utterance(start_at=2.0)  # "hello": the crowd's group is still growing
    assert spoken is not None and spoken.text == "hello"
    policy.mark_spoken(spoken.id, start_s=2.0, audio_ms=500)
    clock.advance(30)  # the stream was busy: the crowd's group goes stale
    assert policy.next_utterance() is None
    report = policy.report
    assert report.merged_dropped == [{"group_id": "dm-0", "text": "666", "count": 50, "reason": "ttl_expired", "by": "local"}]
    assert "merged, then dropped (never spoken): '666' x50 (ttl_expired)" in report.summary()
    assert report.to_dict()["merged_dropped"] == report.merged_dropped
    assert report.wait_percentiles() == {"p50": 2.0, "p95": 2.0, "max": 2.0, "n": 1}
    assert "comment -> audio start: p50 2.00 s" in report.summary()
