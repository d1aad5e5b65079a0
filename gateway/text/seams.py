"""A piece's phonemes together with its neighbours' at each seam (read by the engine, not spoken).

The segmenter hands each text piece a ``Seam``: the words of the same sentence before and after it
(``gateway.text.segmenter``). On the G2P thread those words are phonemized with the piece's own
G2P, and each engine piece gets them as ``left_context`` / ``right_context`` phonemes, with the
space between as a whole sentence's phonemes have it, so that ``left_context + phonemes +
right_context`` reads like the sentence around the piece. When G2P splits a long text into several
engine pieces (over the 510-phoneme limit), the pieces are each other's context at those splits
too. The piece's own phonemes and word spans are exactly what G2P gives for its text alone, so
timings do not change and the pieces stay independent of how the text was fragmented.

Pure functions of a G2P and text; no state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

from gateway.text.g2p_split import PhonemePiece
from gateway.text.segmenter import Seam

__all__ = ["with_context"]

#: Words of a neighbouring engine piece taken as context where G2P split a long text.
SPLIT_CONTEXT_WORDS = 3


class _Phonemizer(Protocol):
    def phonemize(self, text: str, *, deadline: float | None = None) -> list[PhonemePiece]: ...


def with_context(g2p: _Phonemizer, parts: Sequence[PhonemePiece], seam: Seam, *, deadline: float | None = None) -> list[PhonemePiece]:
    """``parts`` (G2P's pieces of one text, in order) with the context of ``seam`` at the text's
    edges and each other's edges between them."""
    left = _phonemes(g2p, seam.left, deadline)
    right = _phonemes(g2p, seam.right, deadline)
    out = []
    for i, part in enumerate(parts):
        before = left if i == 0 else _edge_words(parts[i - 1], last=True)
        after = right if i == len(parts) - 1 else _edge_words(parts[i + 1], last=False)
        out.append(
            dataclasses.replace(
                part,
                left_context=before + " " if before else "",
                right_context=" " + after if after else "",
            )
        )
    return out


def _phonemes(g2p: _Phonemizer, text: str, deadline: float | None) -> str:
    if not text.strip():
        return ""
    return " ".join(p.phonemes for p in g2p.phonemize(text, deadline=deadline)).strip()


def _edge_words(part: Any, *, last: bool, words: int = SPLIT_CONTEXT_WORDS) -> str:
    """The phonemes of ``part``'s last (or first) few words, punctuation between them included."""
    spans = part.words
    if not spans:
        return ""
    if last:
        return part.phonemes[spans[max(0, len(spans) - words)].start :].strip()
    return part.phonemes[: spans[min(words, len(spans)) - 1].end].strip()
