"""Join a context's pieces with the pause a speaker makes at each cut.

An engine that trimmed a piece's trailing silence (``SynthesisResult.extra["edges_trimmed"]``, see
``gateway.engines.edges``) hands back speech that ends at its last phoneme. The pause that belongs
after it depends on where the text was cut: none inside a phrase (the next piece goes on in the same
breath; the engine's few-ms fade is all that separates them), a short one after a clause mark (, ; :
— and the CJK 、，), a longer one after a sentence end (. ! ? … and 。！？). The lengths come from
what Kokoro itself makes at that punctuation inside a sentence spoken whole (``docs/pauses.md``).

The pause is appended as digital silence and counted on the piece's end token, so ``len(audio) ==
durations.sum() * 600`` holds and word/phoneme timings, sample offsets and ``context.done`` totals
stay exact. Pure: one result in, one result out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

import numpy as np

from gateway.engines.base import SAMPLE_RATE, SAMPLES_PER_FRAME, SynthesisResult

__all__ = ["CutClass", "PauseLengths", "cut_class", "with_pause"]

_SENTENCE_END = frozenset(".!?…。！？．")
_CLAUSE_END = frozenset(",;:—–、，；：")
# Closing quotes and brackets after the mark do not change the class: 'he said "no."'.
_TRAILING_SKIP = frozenset(" \"'”’)]}»」』）】")


class CutClass(Enum):
    PHRASE = "phrase"  # no punctuation at the cut
    CLAUSE = "clause"
    SENTENCE = "sentence"


@dataclass(frozen=True, slots=True)
class PauseLengths:
    """Silence after a piece, by how it ends (ms; rounded to whole 25 ms frames)."""

    phrase_ms: float = 0.0
    clause_ms: float = 100.0
    sentence_ms: float = 175.0

    def frames(self, cut: CutClass) -> int:
        ms = {CutClass.PHRASE: self.phrase_ms, CutClass.CLAUSE: self.clause_ms, CutClass.SENTENCE: self.sentence_ms}[cut]
        return max(0, round(ms * SAMPLE_RATE / 1000 / SAMPLES_PER_FRAME))


def cut_class(text: str) -> CutClass:
    """The kind of cut that ``text`` (a piece's phonemes or graphemes) ends with."""
    for ch in reversed(text):
        if ch in _TRAILING_SKIP:
            continue
        if ch in _SENTENCE_END:
            return CutClass.SENTENCE
        if ch in _CLAUSE_END:
            return CutClass.CLAUSE
        return CutClass.PHRASE
    return CutClass.PHRASE


def with_pause(result: SynthesisResult, pauses: PauseLengths) -> SynthesisResult:
    """``result`` followed by the pause its end calls for, if the engine trimmed its end; else as is."""
    trimmed = result.extra.get("edges_trimmed")
    if not (isinstance(trimmed, tuple) and len(trimmed) == 2 and trimmed[1]):
        return result
    frames = pauses.frames(cut_class(result.phonemes))
    if frames == 0 or len(result.durations) == 0:
        return result
    audio = np.concatenate([result.audio, np.zeros(frames * SAMPLES_PER_FRAME, dtype=result.audio.dtype)])
    durations = np.array(result.durations, dtype=np.int64, copy=True)
    durations[-1] += frames  # the end token: silence after the last phoneme
    return replace(result, audio=audio, durations=durations, extra={**result.extra, "pause_frames": frames})
