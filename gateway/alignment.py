"""Word and phoneme timings from the engine's per-token durations.

Timings are computed per piece from its own durations and shifted by the context's audio already
produced, so they stay right however the client fragmented its text (the usual way timestamps break
under streaming: offsets counted from the fragment instead of the audio).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from gateway.engines.base import SAMPLE_RATE, SAMPLES_PER_FRAME

__all__ = ["WordLike", "piece_alignment", "FRAME_MS"]

#: Milliseconds of audio per duration unit.
FRAME_MS = SAMPLES_PER_FRAME * 1000.0 / SAMPLE_RATE


class WordLike(Protocol):
    """What G2P says about a word: its text and its phoneme span [start, end) in the piece."""

    text: str
    start: int
    end: int


def piece_alignment(
    words: Sequence[WordLike],
    phonemes: str,
    durations: np.ndarray,
    offset_ms: float,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Timings of one piece, in ms from the start of its context's audio.

    ``durations`` has one entry per token of ``[BOS, *phonemes, EOS]``, as engines return them; the
    BOS token's frames come before the first phoneme.
    """
    durations = np.asarray(durations, dtype=np.int64)
    if len(durations) != len(phonemes) + 2:
        raise ValueError(f"{len(durations)} durations for {len(phonemes)} phonemes (+2 boundary tokens)")
    # edges[i] is where phoneme i starts; edges[i + 1] where it ends.
    edges = offset_ms + FRAME_MS * np.cumsum(np.concatenate([[0], durations[:-1]]))[1:]
    phoneme_times = [
        {"phoneme": ch, "start_ms": round(float(edges[i]), 1), "end_ms": round(float(edges[i + 1]), 1)}
        for i, ch in enumerate(phonemes)
    ]
    word_times = [
        {
            "word": word.text,
            "start_ms": round(float(edges[word.start]), 1),
            "end_ms": round(float(edges[word.end]), 1),
        }
        for word in words
        if 0 <= word.start < word.end <= len(phonemes)
    ]
    return word_times, phoneme_times
