"""Bounds that keep G2P cost linear in the text, applied by ``G2P.phonemize`` before its backend.

misaki's English G2P looks a space-free word up by trying every span of its sub-tokens
(``misaki.en.G2P.__call__``: a ``while left < right`` loop calling ``merge_tokens`` on each span), which
is cubic in their number: 200 characters of "a-a-a-..." took 34 s, 399 characters 87 s. So runaway
words are cut with spaces into words of at most ``MAX_WORD_ATOMS`` sub-tokens, letter runs into at
most ``MAX_ATOM_CHARS`` characters, stacks of combining marks are thinned, and the backend gets the
text in chunks of at most ``CHUNK_CHARS`` (so that a time budget can be checked between them).
Ordinary words are left alone.
"""

from __future__ import annotations

import re
import time
import unicodedata

__all__ = ["G2PTooSlow", "check_deadline", "MAX_WORD_ATOMS", "MAX_ATOM_CHARS", "MAX_COMBINING_MARKS", "MAX_NUMBER_DIGITS", "CHUNK_CHARS", "bound_words", "chunks"]

#: Sub-tokens (a run of letters/digits, or one other character) in one space-free word given to the
#: backend, and characters in one letter run: beyond them a word is cut with a space (see phonemize).
MAX_WORD_ATOMS = 8
MAX_ATOM_CHARS = 48
#: Combining marks kept on one base character ("Zalgo" text stacks thousands).
MAX_COMBINING_MARKS = 2
#: Digits in one number given to the backend: misaki reads a number through float arithmetic, which
#: overflows past ~300 digits (a 500 for one request) and says nothing useful long before that; a
#: longer run of digits is read in groups of three ("123 456 789 ...").
MAX_NUMBER_DIGITS = 15
#: Characters given to the backend in one call (cut at a sentence end or a space when possible).
CHUNK_CHARS = 400

_WORD_RUN_RE = re.compile(r"\S{%d,}" % (MAX_WORD_ATOMS + 1))
_LONG_NUMBER_RE = re.compile(r"\d{%d,}" % (MAX_NUMBER_DIGITS + 1))
_ATOM_RE = re.compile(r"[^\W_]{1,%d}|." % MAX_ATOM_CHARS, re.DOTALL)


def bound_words(text: str) -> str:
    """Cut space-free runs that would cost the backend more than linear time into words of at most
    ``MAX_WORD_ATOMS`` sub-tokens ("a-a-a-a-a" -> "a-a-a-a a-a-..."; a long URL likewise), and keep at
    most ``MAX_COMBINING_MARKS`` combining marks per character. Ordinary words are left alone."""
    if not text.isascii():
        text = thin_combining_marks(text)
    text = _LONG_NUMBER_RE.sub(lambda m: " ".join(m.group()[i : i + 3] for i in range(0, len(m.group()), 3)), text)

    def cut(match: re.Match[str]) -> str:
        atoms = _ATOM_RE.findall(match.group())
        if len(atoms) <= MAX_WORD_ATOMS:
            return match.group()
        return " ".join("".join(atoms[i : i + MAX_WORD_ATOMS]) for i in range(0, len(atoms), MAX_WORD_ATOMS))

    return _WORD_RUN_RE.sub(cut, text)


def thin_combining_marks(text: str) -> str:
    out: list[str] = []
    run = 0
    for c in text:
        if unicodedata.combining(c):
            run += 1
            if run > MAX_COMBINING_MARKS:
                continue
        else:
            run = 0
        out.append(c)
    return "".join(out)


_CHUNK_CUT_RE = re.compile(r"[.!?…;:,]\s|\s")


def chunks(text: str, size: int) -> list[str]:
    """``text`` in consecutive chunks of at most ``size`` characters, cut after the last sentence
    end (else clause mark, else space) of each window; a window without any is cut hard."""
    out: list[str] = []
    while len(text) > size:
        window = text[:size]
        cut = 0
        for marks in (".!?…", ";:,", ""):
            for m in _CHUNK_CUT_RE.finditer(window):
                if not marks or m.group()[0] in marks:
                    cut = m.end()
            if cut:
                break
        cut = cut or size
        out.append(text[:cut])
        text = text[cut:]
    if text.strip():
        out.append(text)
    return out


class G2PTooSlow(RuntimeError):
    """Phonemizing one piece of text took longer than its time budget (``phonemize(deadline=...)``)."""


def check_deadline(deadline: float | None) -> None:
    """Raise ``G2PTooSlow`` when ``deadline`` (a ``time.perf_counter()`` value) has passed."""
    if deadline is not None and time.perf_counter() > deadline:
        raise G2PTooSlow("this text takes too long to turn into phonemes; send plainer text")
