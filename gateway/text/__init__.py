"""Text handling: where to cut a stream of text, and how to turn a piece into phonemes.

``Segmenter`` (pure, one per context) cuts streamed fragments into speakable pieces, short first
for a low time to first audio; ``G2P`` (one per language, one thread each) turns a piece into
``PhonemePiece`` values the engine accepts (at most 510 phonemes, with word spans).
"""

from __future__ import annotations

from gateway.text.g2p import (
    G2P,
    LANGUAGES,
    PhonemePiece,
    UnsupportedLanguage,
    WordSpan,
    available_languages,
    load_vocab,
)
from gateway.text.segmenter import Segmenter, text_units

__all__ = [
    "G2P",
    "LANGUAGES",
    "PhonemePiece",
    "Segmenter",
    "UnsupportedLanguage",
    "WordSpan",
    "available_languages",
    "load_vocab",
    "text_units",
]
