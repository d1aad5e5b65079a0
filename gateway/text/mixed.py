"""Mixed-script text: each run of script to its own G2P, joined into one piece for one voice.

A live chat mixes scripts inside one line: "Thank you 小明16 for the lightstick!", "喵喵3 says:",
"主播好 so good", "すごいgood job". One language's G2P reads the others badly: English spells a Han
character as "Chinese letter", Chinese passes Latin letters through as if they were phonemes ("hello"
becomes h-e-l-l-o sounds), Japanese drops letters it has no romaji for. ``ScriptRouter`` cuts the text
into runs of script, phonemizes each run with the G2P of its language (a sibling ``G2P`` with the same
vocabulary, created on first need and kept) and joins the tokens, so that the result is one list of
tokens for one piece, spoken by one voice. Kokoro's phoneme set is shared by its languages.

Which language a run is:

- Han: Japanese when the line has kana (kanji among kana) or the base language is ``ja``; else Chinese;
- kana: Japanese; Latin letters: English (the base language when it is English);
- digits, spaces, punctuation and other characters belong to the runs on both sides when those agree
  ("我有3个" stays Chinese), else to the base language ("小明16 for" reads "sixteen" in English).

A run whose G2P cannot load here is read by the base G2P when it is Latin (as before), and dropped
when it is Han or kana (silence beats "Chinese letter"), with one warning.

Not thread-safe, like ``G2P``: a router belongs to its G2P and runs on that G2P's thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.text.g2p import G2P

__all__ = ["Run", "ScriptRouter", "split_runs"]

logger = logging.getLogger("voxgate.text")


@dataclass(frozen=True, slots=True)
class Run:
    """A stretch of ``text`` for one language's G2P (``lang`` is a ``gateway.text.g2p`` code)."""

    lang: str
    text: str


def _script(ch: str) -> str:
    """"han", "kana", "latin" or "" (neutral: digits, spaces, punctuation, other scripts)."""
    code = ord(ch)
    if 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF or ch == "々":
        return "han"
    if 0x3040 <= code <= 0x30FF or 0x31F0 <= code <= 0x31FF or 0xFF66 <= code <= 0xFF9D:
        return "kana" if ch not in "・゠" else ""
    if ch.isalpha() and (code < 0x250 or 0x1E00 <= code <= 0x1EFF or 0xFF21 <= code <= 0xFF5A):
        return "latin"
    return ""


def _family(lang: str) -> str:
    return "en" if lang.startswith("en") else lang


def split_runs(text: str, base: str) -> list[Run]:
    """``text`` cut into runs by language, in order, covering every character (see the module
    docstring). ``base`` is the G2P's own language (``en-us``, ``en-gb``, ``zh``, ``ja``)."""
    has_kana = any(_script(ch) == "kana" for ch in text)
    english = base if base.startswith("en") else "en-us"
    han = "ja" if (has_kana or base == "ja") else "zh"
    lang_of = {"han": han, "kana": "ja", "latin": english}
    # Each character's language, None for neutral ones; then neutral stretches take a side.
    langs: list[str | None] = [lang_of.get(_script(ch)) for ch in text]
    i = 0
    while i < len(text):
        if langs[i] is not None:
            i += 1
            continue
        j = i
        while j < len(text) and langs[j] is None:
            j += 1
        before = langs[i - 1] if i > 0 else None
        after = langs[j] if j < len(text) else None
        side = before if before is not None and before == after else base
        langs[i:j] = [side] * (j - i)
        i = j
    runs: list[Run] = []
    start = 0
    for k in range(1, len(text) + 1):
        if k == len(text) or langs[k] != langs[start]:
            runs.append(Run(str(langs[start]), text[start:k]))
            start = k
    return runs


class ScriptRouter:
    """Tokenizes text for ``owner`` (a loaded ``G2P``), sending foreign runs to sibling G2Ps.

    ``tokenize(text)`` returns the owner's backend tokens (``g2p._Token``) for the whole text. Text in
    the owner's script alone goes straight to its backend. ``factory(lang)`` makes a sibling (default:
    ``G2P(lang, vocab=owner.vocab)``); siblings load on first use and are kept.
    """

    def __init__(self, owner: G2P, factory: Callable[[str], G2P] | None = None) -> None:
        self.owner = owner
        self._factory = factory
        self._siblings: dict[str, G2P | None] = {}
        #: Seconds spent loading siblings so far: the caller's time budget does not pay for them.
        self.load_seconds = 0.0

    def tokenize(self, text: str) -> list[Any]:
        own = self.owner._tokenize
        assert own is not None, "the owner G2P must be loaded"
        if text.isascii() and self.owner.lang.startswith("en"):
            return own(text)
        runs = split_runs(text, self.owner.lang)
        if len(runs) == 1 and _family(runs[0].lang) == _family(self.owner.lang):
            return own(text)
        tokens: list[Any] = []
        for run in runs:
            core = run.text.strip()
            leading = run.text[: len(run.text) - len(run.text.lstrip())]
            trailing = run.text[len(run.text.rstrip()) :]
            if tokens and leading:
                tokens[-1].whitespace += leading
                tokens[-1].space = True
            if not core:
                continue
            run_tokens = self._tokenize_run(run.lang, core)
            if not run_tokens:
                continue
            if tokens and not run_tokens[0].is_punct:
                # Runs are phonemized apart: a word boundary in the phonemes where the script changes.
                tokens[-1].space = True
            run_tokens[-1].whitespace += trailing
            run_tokens[-1].space = run_tokens[-1].space or bool(trailing)
            tokens.extend(run_tokens)
        return tokens

    def _tokenize_run(self, lang: str, text: str) -> list[Any]:
        if _family(lang) == _family(self.owner.lang):
            return self.owner._tokenize(text)  # type: ignore[misc]
        sibling = self._sibling(lang)
        if sibling is not None:
            return sibling._tokenize(text)  # type: ignore[misc]
        if lang.startswith("en"):
            return self.owner._tokenize(text)  # type: ignore[misc]
        from gateway.text.g2p import _Token

        return [_Token(text, "")]

    def _sibling(self, lang: str) -> G2P | None:
        if lang in self._siblings:
            return self._siblings[lang]
        from gateway.text.g2p import G2P, UnsupportedLanguage

        sibling: G2P | None
        started = time.perf_counter()
        try:
            sibling = self._factory(lang) if self._factory is not None else G2P(lang, vocab=self.owner.vocab)
            sibling.load()
        except UnsupportedLanguage as exc:
            logger.warning("g2p %s: no %s G2P for mixed-script text (%s)", self.owner.lang, lang, exc)
            sibling = None
        finally:
            self.load_seconds += time.perf_counter() - started
        self._siblings[lang] = sibling
        return sibling
