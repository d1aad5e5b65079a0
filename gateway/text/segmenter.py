"""Cut a stream of text fragments into speakable pieces, short first for a low time to first audio.

Sans-I/O and clock-free: ``Segmenter.feed(fragment)`` returns the pieces that became complete,
``Segmenter.flush()`` returns the rest. Timers (``max_buffer_ms``) live in the session, which calls
``flush()`` when one fires.

Why these cuts. Kokoro cannot stream inside a piece (global norms, bidirectional LSTMs), so the
first audio arrives only after the whole first piece is synthesized: on the 2-core CPU about 0.5 s
of compute per second of speech. The first piece is therefore cut at the first clause boundary
once it holds a couple of words, or at a word boundary after ~8 words. Later pieces grow (by
``growth`` per piece) towards ``max_chars``: longer pieces give better prosody and fewer engine
items, and each piece only has to be ready before the audio already queued runs out.

Lengths are in Latin-character units: a wide (CJK) character counts ``cjk_weight`` (3) units,
because one such character is about one syllable, as much speech as ~3 Latin letters.

Invariants (tested with hypothesis):

- every piece is a slice of the input with surrounding whitespace stripped; slices are consecutive,
  so the pieces with whitespace removed concatenate to the input with whitespace removed; the only
  exception is a remainder with no letter or digit at all at ``flush()`` (e.g. a lone "…"), which
  is dropped because there is nothing to say;
- every piece holds at least one letter or digit (no whitespace- or punctuation-only pieces);
- no cut falls inside a run of non-space characters, except between wide (CJK) characters;
- a piece is at most its limit (``max_chars`` at most) unless one word alone is longer, or every
  word boundary within the limit is BAD (``gateway.text.phrases``), or (after the first piece) a
  sentence end, clause mark or phrase boundary lies a little past it: then it runs on, by at most
  a quarter of the limit (or ``first_min_chars``), one word more where nothing within was allowed;
- the pieces do not depend on how the text was fragmented: every decision looks at a bounded,
  already-received stretch of text and waits (returns nothing yet) until it has it. The price is
  one fragment of latency at each cut: a cut is taken only once the next word has started to
  arrive, so that "Mr." / "e.g." / "3.5" and closing quotes are seen first;
- so do the seams (``seam(index)``): with ``context_words`` a cut inside a sentence also waits
  until that many words after it have arrived whole (or the sentence or the text ends).

Seams. A piece cut from a sentence is synthesized alone, and a TTS model speaks what it gets as an
utterance of its own (onset, final lengthening, falling pitch). So each piece is handed its
neighbours' words, ``Seam(left, right)``: the last ``context_words`` words of the piece before it
and the first ones after it, within the same sentence (none across a sentence end or a line break,
none in unspaced CJK text, where a "word" is not a unit the segmenter can count). The engine reads
them for the piece's prosody but speaks only the piece (``SynthesisItem.left_context``). The right
context must not depend on what happened to have arrived at the cut, so the cut waits for it: in a
stream at 20 words/s that is ~50 ms a word, paid once, by the first piece (later pieces are not
urgent: the audio ahead of them is still playing). Whole text (a ``text`` then ``flush``) has it
at once.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from gateway.text.phrases import BAD, PHRASE, boundary_score
from gateway.text.words_ja import INSIDE_WORD, is_unspaced

if TYPE_CHECKING:
    from gateway.text.pacing import Pace
    from gateway.text.words_ja import JapaneseWords

__all__ = ["Seam", "Segmenter", "text_units"]

# Sentence-ending marks that need a following space (so "3.5", "U.S.A", ".com" are not cut).
_SENTENCE_MARKS = frozenset(".!?…")
# Clause marks that need a following space ("10:30" and "3,000" are not cut).
_CLAUSE_MARKS = frozenset(",;:—–")
# CJK marks end a sentence or clause without a space after them.
_CJK_SENTENCE_MARKS = frozenset("。！？．")
_CJK_CLAUSE_MARKS = frozenset("，、；：")
# Closing quotes and brackets stay with the mark they follow.
_CLOSERS = frozenset("\"'”’)]}»」』）】〕〉》")
_OPENERS = frozenset("\"'“‘([{«「『（【〔〈《")
_CJK_PUNCT = (
    _CJK_SENTENCE_MARKS | _CJK_CLAUSE_MARKS | frozenset("「」『』（）【】〔〕〈〉《》・〜ー")
)

# Words before a "." that do not end a sentence (compared lower-cased). Words with inner dots
# ("e.g", "U.S"), single letters (initials) and numbers of one or two digits (list items) count
# too. A miss only delays the cut to the next boundary.
_ABBREVIATIONS = frozenset(
    """
    mr mrs ms mx dr prof sr jr st mt ft vs etc cf approx dept est fig figs inc ltd co corp no nos
    vol vols ch pp ed eds gen gov sen rep lt col sgt capt cmdr rev hon jan feb mar apr jun jul aug
    sep sept oct nov dec mon tue tues wed thu thurs fri sat sun
    """.split()
)

_WAIT = -1  # the decision needs text that has not arrived yet
_TAKE_ALL = -2  # final: no cut is possible any more, the rest is one piece
_REJECT = -3  # not a cut; keep scanning


def _ends_sentence(piece: str) -> bool:
    """Whether ``piece`` ends with a sentence mark (closing quotes and brackets aside)."""
    end = piece.rstrip("".join(_CLOSERS))
    return bool(end) and (end[-1] in _SENTENCE_MARKS or end[-1] in _CJK_SENTENCE_MARKS)


@lru_cache(maxsize=4096)
def _is_wide(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F")


def _is_cjk_letter(ch: str) -> bool:
    """A character of unspaced CJK text (wide, not punctuation); False for "" (no character)."""
    return bool(ch) and _is_wide(ch) and ch not in _CJK_PUNCT


def text_units(text: str, *, cjk_weight: int = 3) -> int:
    """Length of ``text`` in the units ``Segmenter`` limits count: wide characters weigh more."""
    return sum(cjk_weight if _is_wide(c) else 1 for c in text)


@dataclass(frozen=True, slots=True)
class Seam:
    """The words of the same sentence around a piece (graphemes, "" for none): read, not spoken."""

    left: str = ""
    right: str = ""


@dataclass(frozen=True, slots=True)
class _Limits:
    max_units: int  # force a cut at a word boundary before exceeding this
    clause_min: int  # clause boundaries cut only once the piece is this long
    floor: int  # no cut at all before this (a couple of words)


class Segmenter:
    """Per-context text segmentation for streaming TTS.

    Responsibilities: buffer fragments (which split words anywhere), decide where speakable pieces
    end, and hand them out in order. Not its job: time (the session owns ``max_buffer_ms`` and calls
    ``flush()``), phonemes (``gateway.text.g2p``), the engine's 510-phoneme limit (G2P splits again
    if a piece is still too long).

    Parameters, in Latin-character units (see ``text_units``):

    - ``first_min_chars`` (8): the first piece ends at the first clause or sentence boundary once it
      is this long, about two words ("Sure, " is too short, "Hi there, " is not). It is also the
      floor for every later piece, so "Yes." and "OK." merge with what follows.
    - ``first_max_chars`` (50): without punctuation the first piece ends at the last word boundary
      before this, about 8 English words or 3 s of speech (~1.5 s of CPU synthesis).
    - ``min_chars`` (80): later pieces cut at clause marks only past this; sentence ends always cut.
    - ``max_chars`` (250): later pieces are cut at the last word boundary before this: ~15 s of
      speech and ~250 phonemes, half the engine's 510 limit, leaving room for scripts that
      phonemize to more symbols per character (romaji, pinyin with tones).
    - ``growth`` (2.0): piece k (k >= 1) may be ``first_max_chars * growth**k`` long (capped at
      ``max_chars``), and clause cuts need half of that (capped at ``min_chars``): 50, 100, 200,
      250... so each piece can be synthesized while the ones before it play, even at real-time
      factor 0.5. Use a large value to jump straight to ``max_chars`` (fast engines).
    - ``pace`` (None): the engine's measured speed (``gateway.text.pacing.Pace``). With it, piece k
      (k >= 1) is as long as can be synthesized before the audio of the pieces already cut has
      played, and at least ``pace.min_growth`` x the limit before it (and 2 x ``first_min_chars``,
      at most ``max_chars``), instead of ``growth``:
      the limit follows the lengths of the pieces actually cut, which depend only on the text.
    - ``cjk_weight`` (3): units per wide character.
    - ``whole_max_chars`` (None): once a piece has ended a sentence, the following pieces are whole
      sentences up to this many units (no clause or growth cuts): the first sentence is cut for a
      fast first audio, the ones after it are spoken whole, with their own prosody. None keeps the
      growth limits for every piece.
    - ``sentence_max_cuts`` (0): with ``whole_max_chars``, at most this many cuts inside the first
      sentence: the piece after the last one runs to the sentence end (up to ``whole_max_chars``).
      Every cut speaks a piece as a whole utterance, with the lengthening and falling pitch of an
      utterance end, and the words at the edges suffer (measured: Whisper misheard them). 0: no cap.
    - ``context_words`` (0): each piece's ``seam()`` holds up to this many words of the same
      sentence on each side, and a cut inside a sentence waits for those after it (see Seams).
    - ``first_context_words`` (None: ``context_words``): the words after the first piece, at most
      ``context_words``: its cut waits for them in a stream, and its wait is the time to first audio.
    - ``min_tail_chars`` (0): a cut inside a sentence must leave at least this many units before
      the sentence ends, so no piece is a stray word ("week.", "come in."); it waits for that much
      text (or the end) to arrive. A cut that leaves less is taken only when no other boundary fits.
      Not applied to the first piece, whose latency is the target.

    When a piece must end before its sentence does (over its limit), the cut goes to the best word
    boundary within the limit by ``gateway.text.phrases``: after a clause mark, then before a
    phrase starter ("jumped | over the dog"), then any boundary that does not follow a determiner,
    preposition or auxiliary; among equals, the longest piece (only boundaries in the second half
    of the limit compete, unless there are none).

    Call ``feed()`` for each fragment and send what it returns; call ``flush()`` at the end of the
    input or when the buffer timer fires. A new turn that wants a short first piece again needs a
    new ``Segmenter``.
    """

    def __init__(
        self,
        *,
        first_min_chars: int = 8,
        first_max_chars: int = 50,
        min_chars: int = 80,
        max_chars: int = 250,
        growth: float = 2.0,
        cjk_weight: int = 3,
        whole_max_chars: int | None = None,
        sentence_max_cuts: int = 0,
        min_tail_chars: int = 0,
        context_words: int = 0,
        first_context_words: int | None = None,
        pace: Pace | None = None,
        words: JapaneseWords | None = None,
    ) -> None:
        if not 0 < first_min_chars <= first_max_chars <= max_chars:
            raise ValueError("need 0 < first_min_chars <= first_max_chars <= max_chars")
        if not first_min_chars <= min_chars <= max_chars:
            raise ValueError("need first_min_chars <= min_chars <= max_chars")
        if growth < 1.0:
            raise ValueError("growth must be >= 1")
        if cjk_weight < 1:
            raise ValueError("cjk_weight must be >= 1")
        if whole_max_chars is not None and whole_max_chars < first_min_chars:
            raise ValueError("need whole_max_chars >= first_min_chars")
        self.first_min_chars = first_min_chars
        self.first_max_chars = first_max_chars
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.growth = growth
        self.cjk_weight = cjk_weight
        self.whole_max_chars = whole_max_chars
        if sentence_max_cuts < 0 or min_tail_chars < 0:
            raise ValueError("sentence_max_cuts and min_tail_chars must be >= 0")
        self.sentence_max_cuts = sentence_max_cuts
        self.min_tail_chars = min_tail_chars
        if context_words < 0 or (first_context_words or 0) < 0:
            raise ValueError("context_words and first_context_words must be >= 0")
        self.context_words = context_words
        self.first_context_words = context_words if first_context_words is None else min(first_context_words, context_words)
        self.pace = pace
        self.words = words
        # With a pace: audio of the pieces cut so far, and the compute of those after the first.
        self._audio_ahead_s = 0.0
        self._compute_after_first_s = 0.0
        self._last_limit = 0  # the limit the last piece was cut under
        # Seams of the pieces handed out and not yet taken, by piece index; the words the last
        # piece ended with (the next one's left context; "" after a sentence end or a line break).
        self._seams: dict[int, Seam] = {}
        self._left = ""
        #: Whether a piece has ended a sentence (then, with ``whole_max_chars``, pieces are sentences).
        self.sentence_done = False
        self._text = ""
        #: Pieces handed out so far (the first one is short, later ones grow).
        self.num_pieces = 0
        # Where the scan for the current piece stopped: (start, i, units, has_word,
        # last_boundary, over, fallback); None when it must start over (after a cut).
        self._scan: tuple[int, int, int, bool, int, bool, int] | None = None

    # -- public API ---------------------------------------------------------------------------

    @property
    def pending(self) -> str:
        """Text received but not yet handed out in a piece (as received, whitespace included)."""
        return self._text

    @property
    def has_pending(self) -> bool:
        """Whether anything but whitespace is buffered (``flush()`` may then return a piece)."""
        return bool(self._text.strip())

    def feed(self, fragment: str) -> list[str]:
        """Append ``fragment`` and return the pieces that are now complete (often none)."""
        if not fragment:
            return []
        self._text += fragment
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """Return everything buffered as pieces and empty the buffer.

        Long buffered text is still cut by the usual rules; what is left becomes the last piece. A
        remainder without any letter or digit is dropped.
        """
        pieces = self._drain(final=True)
        rest = self._text.strip()
        self._text = ""
        self._scan = None
        if any(c.isalnum() for c in rest):
            self._hand_out(rest, "")
            pieces.append(rest)
        return pieces

    def seam(self, index: int) -> Seam:
        """The context words around piece ``index`` (0 is the first), once: the entry is dropped."""
        return self._seams.pop(index, Seam())

    def limits(self, index: int) -> tuple[int, int]:
        """(max units, clause-cut minimum) for the piece with this index (0 is the first). With a
        ``pace`` the limits after the first piece follow the pieces cut so far: ask for the next one."""
        lim = self._limits(index)
        return lim.max_units, lim.clause_min

    # -- internals ----------------------------------------------------------------------------

    def _limits(self, index: int) -> _Limits:
        capped = 0 < self.sentence_max_cuts <= index
        if self.whole_max_chars is not None and (self.sentence_done or capped) and index > 0:
            # Whole sentences: clause marks never cut eagerly (clause_min above the limit).
            return _Limits(self.whole_max_chars, self.whole_max_chars + 1, self.first_min_chars)
        if index == 0:
            return _Limits(self.first_max_chars, self.first_min_chars, self.first_min_chars)
        if self.pace is not None:
            low = min(self.max_chars, 2 * self.first_min_chars)
            fits = self.pace.next_limit(self._audio_ahead_s, self._compute_after_first_s, self._last_limit)
            max_units = max(low, min(self.max_chars, fits))
            return _Limits(max_units, max(self.first_min_chars, min(self.min_chars, max_units // 2)), self.first_min_chars)
        # Beyond ~40 doublings every limit is at max_chars anyway; avoid float overflow.
        grown = self.first_max_chars * self.growth ** min(index, 64)
        max_units = int(min(self.max_chars, grown))
        clause_min = max(self.first_min_chars, min(self.min_chars, max_units // 2))
        return _Limits(max_units, clause_min, self.first_min_chars)

    def _drain(self, *, final: bool) -> list[str]:
        pieces: list[str] = []
        while True:
            cut = self._find_cut(final=final)
            if cut < 0:
                return pieces
            piece = self._text[:cut].strip()
            right = self._right_words(self._text, cut, final=final) or ""
            self._text = self._text[cut:]
            self._hand_out(piece, right)
            pieces.append(piece)

    def _hand_out(self, piece: str, right: str) -> None:
        """Count ``piece`` as handed out, with its seam (``right``: the words after it)."""
        if self.context_words and (self._left or right):
            self._seams[self.num_pieces] = Seam(self._left, right)
        if self.pace is not None:
            units = text_units(piece, cjk_weight=self.cjk_weight)
            self._last_limit = self._limits(self.num_pieces).max_units
            self._audio_ahead_s += units * self.pace.audio_per_unit_s
            if self.num_pieces:
                self._compute_after_first_s += self.pace.compute_s(units)
        self.num_pieces += 1
        self.sentence_done = self.sentence_done or _ends_sentence(piece)
        # Both sides of a seam get context or neither: none after a sentence end, a line break, or
        # before unspaced text (``_right_words`` gives "" there).
        tail: list[str] = []
        for word in reversed(piece.split()[-self.context_words :] if right else []):
            if any(_is_wide(c) for c in word):
                break  # the words after unspaced text only
            tail.insert(0, word)
        self._left = " ".join(tail)

    def _right_words(self, text: str, end: int, *, final: bool) -> str | None:
        """The first ``context_words`` words (``first_context_words`` for the first piece) after a
        cut at ``end``, within the sentence; None while they have not all arrived whole (a word is
        whole once whitespace follows it)."""
        count = self.first_context_words if self.num_pieces == 0 else self.context_words
        if not count or _ends_sentence(text[:end].rstrip()):
            return ""
        if any(_is_wide(c) for c in text[:end].rstrip().rsplit(None, 1)[-1]):
            return ""  # unspaced text before the cut: no words to count on either side
        words: list[str] = []
        i, n = end, len(text)
        while len(words) < count:
            j = i
            while j < n and text[j].isspace():
                j += 1
            if "\n" in text[i:j] and j < n:
                break  # a line break: the next line is not this sentence's
            if j == n:
                return " ".join(words) if final else None
            k = j
            while k < n and not text[k].isspace():
                k += 1
            if k == n and not final:
                return None
            word = text[j:k]
            if any(_is_wide(c) for c in word):
                break
            words.append(word)
            if _ends_sentence(word):
                break
            i = k
        return " ".join(words)

    def _units(self, ch: str) -> int:
        return self.cjk_weight if _is_wide(ch) else 1

    def _find_cut(self, *, final: bool) -> int:
        """End of the next piece in ``self._text``, or ``_WAIT`` / ``_TAKE_ALL``.

        Scans left to right and takes the first boundary that qualifies; a boundary is decided only
        from text already received, waiting when it needs more. That makes the result independent
        of fragmentation. On ``_WAIT`` the scan state is kept, so the next ``feed()`` resumes where
        this one stopped instead of rescanning the piece (a feed costs its own characters).
        """
        text = self._text
        n = len(text)
        lim = self._limits(self.num_pieces)
        if self._scan is not None:
            start, i, units, has_word, last_boundary, over, fallback = self._scan
        else:
            start = 0
            while start < n and text[start].isspace():
                start += 1
            units = 0  # units of text[start:i]
            has_word = False  # text[start:i] holds a letter or digit
            last_boundary = -1  # last word boundary at which the piece was within max_units
            over = False
            fallback = -1  # past the limit: the best cut within it, if only an ordinary one
            i = start
        self._scan = None
        while i < n:
            # The decision at i depends only on this state and the text: resumable from here.
            state = (start, i, units, has_word, last_boundary, over, fallback)
            ch = text[i]
            decision = _REJECT
            boundary = i > start and has_word and self._is_word_boundary(text, i, final=final)
            if boundary is None:
                self._scan = state
                return _WAIT
            if boundary:
                if over:
                    decision = self._past_limit(text, i, units, fallback, lim, final=final)
                else:
                    last_boundary = i
            if decision == _REJECT:
                units += self._units(ch)
                has_word = has_word or ch.isalnum()
                if units > lim.max_units and not over:
                    over = True
                    if last_boundary > 0:
                        decision, fallback = self._best_cut(text, start, last_boundary, lim, final=final)
                if decision == _REJECT:
                    # Past the limit, a sentence end, clause mark or line break within the overshoot
                    # still ends the piece (it is a better cut than any word boundary).
                    marks_lim = _Limits(self._overshoot(lim), lim.clause_min, lim.floor) if over else lim
                    decision = self._punctuation_cut(
                        text, start, i, units - self._units(ch), marks_lim, final
                    )
                    if decision == _TAKE_ALL and over and fallback >= 0 and units > marks_lim.max_units:
                        decision = self._confirm(fallback, final=final)  # the rest is too long
            if decision != _REJECT:
                if decision == _WAIT:
                    self._scan = state
                return decision
            i += 1
        if final:
            if over and fallback >= 0 and units > self._overshoot(lim):
                return self._confirm(fallback, final=final)
            return _TAKE_ALL
        if start < n:  # all-whitespace text so far: the piece has not started yet
            self._scan = (start, i, units, has_word, last_boundary, over, fallback)
        return _WAIT

    def _punctuation_cut(
        self, text: str, start: int, i: int, units_before: int, lim: _Limits, final: bool
    ) -> int:
        """Decision for a punctuation or line-break boundary at ``text[i]``; ``_REJECT`` if none."""
        ch = text[i]
        n = len(text)
        prev = text[i - 1] if i > 0 else ""
        if ch == "\n":
            if prev.isspace():
                return _REJECT
            return self._accept(text, start, i, units_before, lim.floor, lim, final)
        if ch in _CJK_SENTENCE_MARKS or ch in _CJK_CLAUSE_MARKS:
            if prev in _CJK_SENTENCE_MARKS or prev in _CJK_CLAUSE_MARKS:
                return _REJECT  # decided at the first mark of the run
            j = self._skip(text, i, _CJK_SENTENCE_MARKS | _CJK_CLAUSE_MARKS | _SENTENCE_MARKS)
            j = self._skip(text, j, _CLOSERS)
            if j == n:
                return _TAKE_ALL if final else _WAIT
            sentence = any(c in _CJK_SENTENCE_MARKS for c in text[i:j])
            need = lim.floor if sentence else max(lim.floor, lim.clause_min)
            return self._accept(
                text, start, j, units_before + self._span_units(text, i, j), need, lim, final
            )
        if ch in _SENTENCE_MARKS or ch in _CLAUSE_MARKS or (ch == "-" and prev.isspace()):
            marks = _SENTENCE_MARKS if ch in _SENTENCE_MARKS else _CLAUSE_MARKS | {"-"}
            if prev in marks:
                return _REJECT  # decided at the first mark of the run
            j = self._skip(text, i, marks)
            j = self._skip(text, j, _CLOSERS)
            if j == n:
                return _TAKE_ALL if final else _WAIT
            # After unspaced CJK text a half-width mark ends its sentence or clause as the full-width
            # one does ("天気.Hello"): no space follows it there, and no abbreviation or number precedes it.
            after_cjk = _is_cjk_letter(prev)
            if not text[j].isspace() and not after_cjk:
                return _REJECT  # "3.5", "10:30", "well—maybe": not a boundary
            marks_run = text[i:j].rstrip("".join(_CLOSERS))
            if marks_run == "." and not after_cjk and self._is_abbreviation(text, start, i):
                return _REJECT
            sentence = ch in _SENTENCE_MARKS
            if sentence and not after_cjk:
                nxt = self._next_word_char(text, j)
                if not nxt and not final:
                    return _WAIT  # the case of the next word decides what kind of boundary this is
                if nxt.islower():
                    # Not a sentence end: "e.g. apples", "wait... what"; '"Stop!" she said' is
                    # still a clause boundary.
                    if set(marks_run) <= {".", "…"}:
                        return _REJECT
                    sentence = False
            need = lim.floor if sentence else max(lim.floor, lim.clause_min)
            return self._accept(
                text, start, j, units_before + self._span_units(text, i, j), need, lim, final
            )
        return _REJECT

    def _best_cut(self, text: str, start: int, last: int, lim: _Limits, *, final: bool) -> tuple[int, int]:
        """The best word boundary in ``text[start:last]`` (``last`` included) to end an over-long
        piece: (decision, fallback).

        Candidates are scored by ``gateway.text.phrases``; boundaries in the second half of the limit
        (and past the floor) compete first, and among equal scores the longest piece wins. Waits
        when a score needs a word not yet received whole. When every one is BAD, or (after the first
        piece) the best is only an ordinary word boundary, the decision is ``_REJECT`` and the scan
        goes on past the limit (``_past_limit``), with the best as the fallback (-1: none).
        """
        candidates: list[tuple[int, int, int, bool]] = []  # (score, units, position, short tail)
        units = 0
        has_word = False
        for pos in range(start, last + 1):
            boundary = pos > start and has_word and self._is_word_boundary(text, pos, final=final)
            if boundary is None:
                return _WAIT, -1
            if boundary:
                score = self._score(text, pos, final=final)
                # Not for the first piece: its latency is the target, and waiting for ~3 more words
                # would add their arrival to it (its tail is the rest of the sentence, seldom short).
                short_tail = self._short_tail(text, pos, final=final) if self.num_pieces else False
                if score is None or short_tail is None:
                    return _WAIT, -1
                candidates.append((score, units, pos, short_tail))
            if pos < len(text):
                units += self._units(text[pos])
                has_word = has_word or text[pos].isalnum()
        if all(c[0] == BAD or c[1] < lim.floor for c in candidates):
            # None is a place to breathe, or only one before the floor ("駅に" of 駅に着いたら: the
            # rest is one word): go on to the first one past the limit.
            return _REJECT, -1
        half = max(lim.floor, lim.max_units // 2)
        candidates = [c for c in candidates if not c[3]] or candidates
        preferred = [c for c in candidates if c[1] >= half and c[0] > BAD] or candidates
        score, _, best, _ = max(preferred)
        if score < PHRASE and self.num_pieces:
            # Not the first piece: its limit is the latency target (measured: running on to a
            # phrase boundary cost ~100 ms of TTFA p50 on the 2-core CPU and no WER).
            return _REJECT, best
        return self._confirm(best, final=final), -1

    def _past_limit(self, text: str, i: int, units: int, fallback: int, lim: _Limits, *, final: bool) -> int:
        """Decision at a word boundary ``i`` past the limit.

        Within the overshoot a phrase or clause boundary wins over the ordinary one within the limit
        (``fallback``: "... the brown | fox jumped" becomes "... the brown fox jumped | over"); without a
        fallback (every boundary within was BAD, "Could you tell | me", or one word is longer than
        the limit) so does any boundary that is not BAD. Past the overshoot: the fallback, else here.
        Punctuation past the limit is decided by ``_punctuation_cut``, as within it.
        """
        if units > self._overshoot(lim):
            return self._confirm(fallback if fallback >= 0 else i, final=final)
        score = self._score(text, i, final=final)
        short_tail = self._short_tail(text, i, final=final) if self.num_pieces else False
        if score is None or short_tail is None:
            return _WAIT
        if short_tail:
            return _REJECT
        # In unspaced CJK text a "phrase boundary" is only a guess from a particle (と of とても),
        # unless MeCab read the words (``words``): without it, only punctuation
        # (``_punctuation_cut``) is worth going past the limit for.
        known = text[i].isspace() or self._words_at(text, i)
        if (score >= PHRASE and known) or (score > BAD and fallback < 0):
            return self._confirm(i, final=final)
        return _REJECT

    @staticmethod
    def _overshoot(lim: _Limits) -> int:
        """How far past its limit a piece may run to a better cut (or away from a BAD one)."""
        return lim.max_units + max(lim.floor, lim.max_units // 4)

    def _short_tail(self, text: str, pos: int, *, final: bool) -> bool | None:
        """Whether the sentence ends less than ``min_tail_chars`` units after ``pos`` (None: the text
        that decides it has not arrived yet). Any sentence mark before a space counts as an end here
        ("Mr." too): a miss only moves a cut to another boundary."""
        if not self.min_tail_chars:
            return False
        units = 0
        i, n = pos, len(text)
        while i < n:
            ch = text[i]
            if ch in _CJK_SENTENCE_MARKS:
                return True
            if ch in _SENTENCE_MARKS:
                j = self._skip(text, self._skip(text, i, _SENTENCE_MARKS), _CLOSERS)
                if j == n:
                    return True if final else None
                if text[j].isspace():
                    return True
            if not ch.isspace():
                units += self._units(ch)
            if units >= self.min_tail_chars:
                return False
            i += 1
        return True if final else None

    def _accept(
        self, text: str, start: int, end: int, units: int, need: int, lim: _Limits, final: bool
    ) -> int:
        """Cut at ``end`` if the piece is long enough, within limits, and a word follows."""
        if units < need or units > lim.max_units:
            return _REJECT
        if not any(c.isalnum() for c in text[start:end]):
            return _REJECT
        return self._confirm(end, final=final)

    def _confirm(self, end: int, *, final: bool) -> int:
        """``end`` once a letter or digit is known to follow it (so the next piece is speakable) and
        the right context of its seam has arrived."""
        if not self._next_word_char(self._text, end):
            return _TAKE_ALL if final else _WAIT
        if self._right_words(self._text, end, final=final) is None:
            return _WAIT
        return end

    @staticmethod
    def _next_word_char(text: str, pos: int) -> str:
        for c in text[pos:]:
            if c.isalnum():
                return c
        return ""

    @staticmethod
    def _skip(text: str, pos: int, chars: frozenset[str] | set[str]) -> int:
        while pos < len(text) and text[pos] in chars:
            pos += 1
        return pos

    def _span_units(self, text: str, i: int, j: int) -> int:
        return sum(self._units(c) for c in text[i:j])

    @staticmethod
    def _is_abbreviation(text: str, start: int, dot: int) -> bool:
        """Whether the word before the "." at ``dot`` is an abbreviation, initial or list number."""
        k = dot
        while k > start and (text[k - 1].isalnum() or text[k - 1] == "."):
            k -= 1
        word = text[k:dot]
        if not word:
            return False
        if "." in word or (len(word) == 1 and word.isalpha()):
            return True
        if word.isdigit():
            return len(word) <= 2
        return word.lower() in _ABBREVIATIONS

    def _words_at(self, text: str, i: int) -> bool:
        """Whether ``words`` decides the boundary between ``text[i-1]`` and ``text[i]``."""
        return self.words is not None and is_unspaced(text[i - 1]) and is_unspaced(text[i])

    def _score(self, text: str, i: int, *, final: bool) -> int | None:
        """``phrases.boundary_score``, or the MeCab words' score inside unspaced Japanese."""
        if self.words is not None and self._words_at(text, i):
            return self.words.score(text, i, final=final)
        return boundary_score(text, i, final=final)

    def _is_word_boundary(self, text: str, i: int, *, final: bool = False) -> bool | None:
        """Whether a piece may end between ``text[i-1]`` and ``text[i]`` (never inside a word);
        None while the words that decide it (unspaced Japanese, ``words``) have not arrived."""
        if self.words is not None and self._words_at(text, i):
            score = self.words.score(text, i, final=final)
            return None if score is None else score != INSIDE_WORD
        a, b = text[i - 1], text[i]
        if b.isspace():
            return not a.isspace()
        if a.isspace() or a in _OPENERS or b in _CLOSERS:
            return False
        # Between characters of unspaced CJK text (and at a CJK/Latin seam).
        a_cjk = _is_cjk_letter(a)
        b_cjk = _is_cjk_letter(b)
        return (a_cjk and (b_cjk or b.isalnum())) or (b_cjk and a.isalnum())
