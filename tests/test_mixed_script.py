"""Mixed-script text: each run of script goes to its own language's G2P, within one piece."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.text.g2p import G2P, UnsupportedLanguage, available_languages
from gateway.text.mixed import Run, split_runs

LANGS = available_languages()
needs = pytest.mark.skipif(not {"en", "zh", "ja"} <= set(LANGS), reason=f"needs en, zh and ja G2Ps; have {LANGS}")


@pytest.mark.parametrize(
    ("text", "base", "runs"),
    [
        ("Thank you 小明16 for the lightstick!", "en-us",
         [Run("en-us", "Thank you "), Run("zh", "小明"), Run("en-us", "16 for the lightstick!")]),
        ("喵喵3 says:", "en-us", [Run("zh", "喵喵"), Run("en-us", "3 says:")]),
        ("我有3个 ok", "zh", [Run("zh", "我有3个 "), Run("en-us", "ok")]),
        ("主播好 so good", "zh", [Run("zh", "主播好 "), Run("en-us", "so good")]),
        ("すごいgood job", "ja", [Run("ja", "すごい"), Run("en-us", "good job")]),
        ("日本語 is hard", "ja", [Run("ja", "日本語 "), Run("en-us", "is hard")]),
        ("I love すし and 寿司", "en-us", [Run("en-us", "I love "), Run("ja", "すし"), Run("en-us", " and "), Run("ja", "寿司")]),
        ("only English here", "en-gb", [Run("en-gb", "only English here")]),
    ],
)
def test_text_is_cut_into_runs_of_script_with_neutral_characters_on_the_agreeing_side(
    text: str, base: str, runs: list[Run]
) -> None:
    assert split_runs(text, base) == runs
    assert "".join(r.text for r in split_runs(text, base)) == text


@pytest.fixture(scope="module")
def g2p() -> dict[str, G2P]:
    if not {"en", "zh", "ja"} <= set(LANGS):
        pytest.skip(f"needs en, zh and ja G2Ps; have {LANGS}")
    return {lang: G2P(lang) for lang in ("en", "zh", "ja")}


def phonemes(g2p: G2P, text: str) -> str:
    return " ".join(p.phonemes for p in g2p.phonemize(text))


@needs
def test_a_chinese_name_in_english_is_read_in_chinese_not_as_chinese_letter(g2p: dict[str, G2P]) -> None:
    [piece] = g2p["en"].phonemize("Thank you 小明16 for the lightstick!")
    xiaoming = phonemes(g2p["zh"], "小明")
    assert xiaoming and xiaoming in piece.phonemes
    assert phonemes(g2p["en"], "sixteen") in piece.phonemes
    assert phonemes(g2p["en"], "Chinese letter") not in piece.phonemes
    assert piece.text == "Thank you 小明16 for the lightstick!"
    spans = {w.text: piece.phonemes[w.start : w.end] for w in piece.words}
    assert spans["小明"] == xiaoming and spans["Thank"] == phonemes(g2p["en"], "Thank")


@needs
def test_a_name_with_a_number_before_english_keeps_both(g2p: dict[str, G2P]) -> None:
    ps = phonemes(g2p["en"], "喵喵3 says:")
    assert ps.startswith(phonemes(g2p["zh"], "喵喵"))
    assert phonemes(g2p["en"], "three says:") in ps
    assert "ʧ" not in ps  # no "Chinese letter"


@needs
def test_english_inside_chinese_and_japanese_goes_to_the_english_g2p(g2p: dict[str, G2P]) -> None:
    hello = phonemes(g2p["en"], "hello world")
    zh = phonemes(g2p["zh"], "小明说hello world好")
    assert hello in zh and "hello" not in zh  # not letters passed through as phonemes
    ja = phonemes(g2p["ja"], "すごいgood job")
    assert ja.startswith(phonemes(g2p["ja"], "すごい")) and phonemes(g2p["en"], "good job") in ja


@needs
def test_one_language_alone_is_phonemized_as_before(g2p: dict[str, G2P]) -> None:
    assert phonemes(g2p["zh"], "主播今天玩什么游戏") == phonemes(g2p["zh"], "主播今天玩什么游戏")
    [piece] = g2p["en"].phonemize("Hello there, friend.")
    assert [w.text for w in piece.words] == ["Hello", "there", "friend"]


def test_a_script_whose_g2p_cannot_load_is_dropped_rather_than_spelled(monkeypatch: pytest.MonkeyPatch) -> None:
    if "en" not in LANGS:
        pytest.skip("no English G2P")
    from gateway.text import mixed

    english = G2P("en")

    def no_chinese(lang: str) -> G2P:
        raise UnsupportedLanguage(f"{lang} is not installed")

    english._scripts = mixed.ScriptRouter(english, factory=no_chinese)
    [piece] = english.phonemize("Thank you 小明 for it")
    assert piece.phonemes == phonemes(english, "Thank you for it").replace(",", "")


@given(st.text(alphabet=st.sampled_from(list("ab Z1.,!?小明喵すしカナ 3")), max_size=40), st.sampled_from(["en-us", "zh", "ja"]))
@settings(max_examples=200, deadline=None)
def test_runs_cover_the_text_and_neighbours_differ(text: str, base: str) -> None:
    runs = split_runs(text, base)
    assert "".join(r.text for r in runs) == text
    assert all(a.lang != b.lang for a, b in zip(runs, runs[1:]))


@needs
@given(st.text(alphabet=st.sampled_from(list("ab Z1.,!?小明喵すしカナ 3")), min_size=1, max_size=30))
@settings(max_examples=25, deadline=None)
def test_any_mix_of_scripts_gives_vocabulary_phonemes_in_every_language(g2p: dict[str, G2P], text: str) -> None:
    for lang in ("en", "zh", "ja"):
        for piece in g2p[lang].phonemize(text):
            assert set(piece.phonemes) <= g2p[lang].vocab


def test_loading_a_sibling_language_does_not_spend_the_texts_budget() -> None:
    # Han inside English loads the Chinese G2P on first use (seconds on a busy CPU); that load used
    # to count against the comment's own G2P budget and failed it with text_too_slow.
    if "en" not in LANGS or "zh" not in LANGS:
        pytest.skip("needs the English and Chinese G2Ps")
    import time

    from gateway.text import mixed

    english = G2P("en")
    english.load()

    def slow_chinese(lang: str) -> G2P:
        time.sleep(1.5)
        return G2P(lang, vocab=english.vocab)

    english._scripts = mixed.ScriptRouter(english, factory=slow_chinese)
    english._scripts._sibling("zh")  # warm the real backend's own first-call costs outside the clock
    english._scripts = mixed.ScriptRouter(english, factory=slow_chinese)
    [piece] = english.phonemize("Thank you 小明", deadline=time.perf_counter() + 1.0)
    assert "Thank" in [w.text for w in piece.words]
    assert english._scripts.load_seconds >= 1.5
