"""Where inside a sentence a piece may end: a small rule set on function words.

When a piece must end before its sentence does (the latency budget is spent), the cut should fall
where a speaker could take a breath: before a preposition, a conjunction or a relative pronoun
("the fox jumped | over the lazy dog"), never between a determiner or preposition and its noun
("the | narrow stairs", "over | the"), nor after an auxiliary or a subject pronoun ("will | go"),
nor before an object pronoun, which is spoken as one word with the verb before it ("tell | me":
cut alone, "Could you tell" came back from the engine as "Kojutsa").

Why rules and not spaCy: the segmenter runs on the event loop for every fragment, and misaki's spaCy
parse (~4 ms a sentence) runs later, on the G2P thread, on the piece the segmenter already chose.
Function words are a closed class, so a list catches the cuts that hurt most; what it cannot see
(adjective | noun) scores as an ordinary word boundary, and boundaries before a phrase starter win.

For unspaced CJK text, a boundary right after a Japanese case particle (は が を に で へ と も) is a
phrase boundary; inside a run of kanji or kana it is an ordinary one.

Pure functions over a string and a position; no state.
"""

from __future__ import annotations

__all__ = ["CLAUSE", "PHRASE", "WORD", "BAD", "boundary_score"]

#: Scores, best first: after a clause mark, before a phrase starter, any other word boundary,
#: right after a word that needs what follows.
CLAUSE, PHRASE, WORD, BAD = 3, 2, 1, 0

_CLAUSE_MARKS = frozenset(",;:—–、，；：")
_STRIP = "\"'“”‘’()[]{}«»「」『』（）"

# Words a cut must not follow: determiners, possessives, prepositions, conjunctions, auxiliaries,
# subject pronouns, negation and degree words. Compared lower-cased.
_NO_CUT_AFTER = frozenset(
    """
    a an the this that these those my your his her its our their some any no every each either
    neither all both few many much several such what which whose another other
    of in on at by for with from to into onto over under about above below after before between
    through during without within across against along among around behind beyond near off upon
    toward towards via like than as per since until unto
    and or but nor if because whether although though while when where unless so yet
    am is are was were be been being do does did have has had will would shall should can could
    may might must i we you he she they it not very too more most less least quite rather just
    mr mrs ms dr st
    """.split()
)

# Words a cut must not precede: unstressed object pronouns lean on the verb before them.
_NO_CUT_BEFORE = frozenset("me him us them myself himself herself ourselves themselves".split())

# Words that open a phrase: a cut right before one is where a speaker breathes.
_PHRASE_STARTERS = frozenset(
    """
    of in on at by for with from to into onto over under about above below after before between
    through during without within across against along among around behind beyond near upon
    toward towards via and or but nor because whether although though while when where unless
    until since which who whom whose that than so if how why what
    """.split()
)

# Japanese case and topic particles: a boundary after one ends a phrase.
_PARTICLES = frozenset("はがをにでへとも")
_KANA_CONTINUATION = frozenset("ぁぃぅぇぉっゃゅょゎァィゥェォッャュョヮーゝゞヽヾ")


def _word_before(text: str, end: int) -> str:
    start = end
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return text[start:end]


def _word_after(text: str, pos: int) -> str | None:
    """The whole word starting at the first non-space at or after ``pos``; None if not all received."""
    while pos < len(text) and text[pos].isspace():
        pos += 1
    end = pos
    while end < len(text) and not text[end].isspace():
        end += 1
    if end == len(text):
        return None
    return text[pos:end]


def boundary_score(text: str, pos: int, *, final: bool = False) -> int | None:
    """How good a cut between ``text[pos - 1]`` and ``text[pos]`` is (``CLAUSE`` .. ``BAD``).

    ``pos`` must be a word boundary. Returns None when the answer depends on a word that has not
    been received whole yet (unless ``final``): the caller waits, so the result never depends on
    how the text was fragmented.
    """
    prev_char = text[pos - 1]
    if not prev_char.isspace() and not text[pos].isspace():
        # Inside unspaced CJK text.
        if prev_char in _PARTICLES and text[pos] not in _KANA_CONTINUATION and text[pos] not in _PARTICLES:
            return PHRASE
        return WORD
    before = _word_before(text, pos).strip(_STRIP)
    if before and before[-1] in _CLAUSE_MARKS:
        return CLAUSE
    if before.lower().rstrip(".") in _NO_CUT_AFTER:
        return BAD
    after = _word_after(text, pos)
    if after is None:
        if not final:
            return None
        after = text[pos:].strip()
    after = after.strip(_STRIP).rstrip(".,;:!?…").lower()
    if after in _NO_CUT_BEFORE:
        return BAD
    if after in _PHRASE_STARTERS:
        return PHRASE
    return WORD
