"""Piece lengths from a time-to-first-audio target and the engine's measured speed.

Kokoro cannot stream inside a piece, so the first audio of a context arrives only after its whole
first piece is synthesized. How long a first piece the latency target allows depends on the device:
on a GPU the whole first sentence fits, on a 2-core CPU a first phrase. The scheduler learns the
engine's seconds of compute per phoneme token from every batch (``Scheduler.seconds_per_token``);
one phoneme is about one Latin character of text (the segmenter's unit) and ~75 ms of speech at
speed 1. So:

- the first piece may be ``target / seconds_per_token`` units long;
- piece k+1 must be synthesized while the audio before it plays: its compute (``rtf`` x its audio)
  must fit in the audio of the piece before it, so pieces may grow by ``1 / rtf`` each, with a
  margin for other sessions sharing the engine.

Before the first batch is measured the configured character limits are used as they are.
"""

from __future__ import annotations

from gateway.config import SegmenterConfig
from gateway.text.segmenter import Segmenter

__all__ = ["AUDIO_SECONDS_PER_UNIT", "make_segmenter", "paced_limits"]

#: Seconds of speech per segmenter unit (~one phoneme) at speed 1 (Kokoro: ~13 phonemes/s).
AUDIO_SECONDS_PER_UNIT = 0.075
#: Share of the audio ahead a piece's synthesis may use: the rest is slack for other sessions.
_GROWTH_MARGIN = 0.8
_MAX_GROWTH = 64.0


def paced_limits(config: SegmenterConfig, seconds_per_token: float, speed: float = 1.0) -> tuple[int, float]:
    """(first piece's max units, growth per piece) for an engine at ``seconds_per_token``.

    ``seconds_per_token`` 0 (not measured yet) or a target of 0 keep ``first_max_chars`` and
    ``growth`` from the config.
    """
    if seconds_per_token <= 0 or config.first_audio_target_ms <= 0:
        return config.first_max_chars, config.growth
    first = int(config.first_audio_target_ms / 1000 / seconds_per_token)
    # Never under ~3 English words (2 x first_min_chars): a piece needs some context for prosody.
    low = min(config.max_chars, 2 * config.first_min_chars)
    first = max(low, min(config.max_chars, first))
    rtf = seconds_per_token * max(speed, 1e-3) / AUDIO_SECONDS_PER_UNIT
    growth = max(1.5, min(_MAX_GROWTH, _GROWTH_MARGIN / rtf))
    return first, growth


def make_segmenter(config: SegmenterConfig, seconds_per_token: float, speed: float = 1.0) -> Segmenter:
    """A context's segmenter, its first piece sized by the latency target on this engine."""
    first_max, growth = paced_limits(config, seconds_per_token, speed)
    return Segmenter(
        first_min_chars=config.first_min_chars,
        first_max_chars=first_max,
        min_chars=max(config.min_chars, first_max),
        max_chars=max(config.max_chars, first_max),
        growth=growth,
        whole_max_chars=max(config.whole_max_chars, config.first_min_chars) if config.whole_max_chars else None,
        sentence_max_cuts=config.sentence_max_cuts,
        min_tail_chars=config.min_tail_chars,
        context_words=config.context_words,
    )
