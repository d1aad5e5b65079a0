"""Splitting phonemes into engine-sized pieces, language-blind: the values a G2P returns
(``PhonemePiece``, ``WordSpan``), the token a backend yields (``_Token``), and the cut by
punctuation priority that kokoro's ``KPipeline`` makes (sentence end, clause, comma/dash, between
words, then a hard cut inside one overlong word).

``gateway.text.g2p`` re-exports the public names; backends (``gateway.text.g2p_backends``) only
produce ``_Token`` lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PhonemePiece", "WordSpan"]

# Punctuation as it appears in phoneme strings (misaki passes these through; all are in Kokoro's
# vocab). A token made only of these is punctuation: no WordSpan, and pieces are cut after it.
_PUNCT_PHONEMES = frozenset(";:,.!?—…\"()“”«»'")
# kokoro pipeline's waterfall: cut after the last sentence end, else clause, else comma/dash.
_WATERFALL = ("!.?…", ":;", ",—")
# A cut after "." moves past a closing bracket or quote so that it stays with its sentence.
_BUMPS = frozenset(')”»"')


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
    ``left_context`` / ``right_context``: the phonemes of the words around the piece that the model
    reads but does not speak (``gateway.text.seams``); "" for none.
    """

    phonemes: str
    text: str
    words: tuple[WordSpan, ...] = ()
    left_context: str = ""
    right_context: str = ""


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
