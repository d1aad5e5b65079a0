"""Japanese cuts between MeCab's words (``gateway.text.words_ja``), scored like phrases."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import SegmenterConfig
from gateway.engine_cost import EngineCost
from gateway.text.pacing import make_segmenter
from gateway.text.phrases import BAD, PHRASE, WORD
from gateway.text.segmenter import Segmenter
from gateway.text.words_ja import INSIDE_WORD, JapaneseWords, japanese_words


@pytest.fixture(scope="module")
def words() -> JapaneseWords:
    found = japanese_words()
    assert found is not None, "fugashi and unidic-lite are default dependencies (misaki[ja])"
    return found


def segment(text: str, words: JapaneseWords | None, fragments: list[str] | None = None) -> list[str]:
    seg = Segmenter(first_min_chars=8, first_max_chars=16, min_chars=40, max_chars=250, context_words=3, min_tail_chars=8, words=words)
    pieces: list[str] = []
    for fragment in fragments if fragments is not None else [text]:
        pieces += seg.feed(fragment)
    return pieces + seg.flush()


def test_positions_are_scored_by_the_words_around_them(words: JapaneseWords) -> None:
    text = "このレストランの料理はとても美味しいので"
    at = text.index
    assert words.score(text, at("ラン"), final=True) == INSIDE_WORD  # レスト|ラン
    assert words.score(text, at("ても"), final=True) == INSIDE_WORD  # と|ても
    assert words.score(text, at("レストラン"), final=True) == BAD  # after the prenominal この
    assert words.score(text, at("とても"), final=True) == PHRASE  # 料理は | とても
    assert words.score(text, at("の料理"), final=True) == BAD  # before the particle の
    assert words.score(text, at("美味"), final=True) == WORD  # とても | 美味しい
    assert words.score("駅に着いたら", 4, final=True) == BAD  # 着い | たら: an auxiliary leans back
    assert words.score("少し遅刻して", 4, final=True) == BAD  # 遅刻 | して
    assert words.score("電話してください", 4, final=True) == BAD  # して | ください: after a verb's て
    assert words.score("宿題をする前に", 3, final=True) == PHRASE  # 宿題を | する


def test_a_position_waits_until_enough_of_the_run_after_it_has_arrived(words: JapaneseWords) -> None:
    # "このレスト" alone reads as この + レスト: a boundary after レスト that the full word does not have.
    assert words.score("このレスト", 5, final=False) is None
    assert words.score("このレスト", 5, final=True) is not None
    assert words.score("このレストランの料理", 5, final=False) is None  # 5 of the 6 characters it reads
    assert words.score("このレストランの料理は", 5, final=False) == INSIDE_WORD
    # A run that ends (punctuation, Latin text) is complete: no wait.
    assert words.score("駅に着いた。", 2, final=False) == PHRASE


def test_japanese_pieces_end_between_words_and_prefer_phrase_ends(words: JapaneseWords) -> None:
    assert segment("このレストランの料理はとても美味しいので、また来たいです。", None)[0] == "このレスト"  # before
    assert segment("このレストランの料理はとても美味しいので、また来たいです。", words) == [
        "このレストランの",
        "料理はとても美味しいので、",
        "また来たいです。",
    ]
    # "駅に" alone would be under the first piece's floor: the piece runs on to the next phrase end.
    assert segment("駅に着いたらすぐに電話してください。", words) == ["駅に着いたら", "すぐに", "電話してください。"]


_JA_TOKENS = st.sampled_from(
    ["この", "レストラン", "の", "料理", "は", "とても", "美味しい", "ので", "、", "。", "駅", "に", "着いたら",
     "すぐに", "電話", "して", "ください", "会議", "遅刻", "しまいました", "今日", "天気", "が", " ", "AI", "2024"]
)


@settings(max_examples=60, deadline=None)
@given(tokens=st.lists(_JA_TOKENS, max_size=40), cuts=st.lists(st.integers(0, 200), max_size=12))
def test_japanese_pieces_do_not_depend_on_fragmentation(words: JapaneseWords, tokens: list[str], cuts: list[int]) -> None:
    text = "".join(tokens)
    bounds = [0, *sorted({c for c in cuts if c <= len(text)}), len(text)]
    fragments = [text[a:b] for a, b in itertools.pairwise(bounds)]
    whole = segment(text, words)
    assert segment(text, words, fragments) == whole
    assert "".join(whole).replace(" ", "") == "".join(text.split()) or not any(c.isalnum() for c in text)


def test_the_session_gives_japanese_contexts_the_words_and_others_not() -> None:
    config = SegmenterConfig()
    assert make_segmenter(config, EngineCost(), lang="ja").words is not None
    assert make_segmenter(config, EngineCost(), lang="en").words is None
