"""Piece lengths from a time-to-first-audio target and the engine's measured speed.

Kokoro cannot stream inside a piece, so the first audio of a context arrives only after its whole
first piece is synthesized. How long a first piece the latency target allows depends on the device:
on a GPU the whole first sentence fits, on a 2-core CPU a first phrase. The scheduler learns the
engine's cost from every batch (``gateway.engine_cost``: a fixed part per piece plus a part per
phoneme token); one phoneme is about one Latin character of text (the segmenter's unit). So:

- the first piece may be as long as the engine can synthesize within the target;
- piece k must be ready before the audio ahead of it has played: the pieces after the first are
  synthesized one after another while the first ones play, so the compute of pieces 1..k must fit
  in ``margin`` x the audio of pieces 0..k-1 (``Pace``, applied by the segmenter to the pieces it
  actually cut). The margin leaves room for other sessions sharing the engine; the fixed part per
  piece is why a fast engine's pieces grow fast and a barely real-time one's hardly at all;
- yet each piece's limit is at least ``min_growth`` (1.5) x the one before it. Where the fixed part is
  large (the 2-core CPU: ~0.45 s a piece with its seam context, against ~0.8 s of audio in a
  first phrase) no piece length keeps up from a short first piece: held to what fits, pieces stay
  at a few words each, every few words a seam (measured: WER 0.29 against 0.10 spoken whole, 5-7
  pieces a sentence). Growing anyway costs one short wait of the player after the first piece
  and buys back the fixed cost of every seam it does not make.

Before the first batch is measured the configured character limits and growth are used as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import SegmenterConfig
from gateway.engine_cost import EngineCost
from gateway.text.segmenter import Segmenter
from gateway.text.words_ja import japanese_words

__all__ = ["AUDIO_SECONDS_PER_UNIT", "Pace", "make_segmenter", "paced_limits"]

#: Seconds of speech per segmenter unit at speed 1: measured 0.047-0.067 s per character on the
#: bench quality sentences (offline weights, trimmed edges; Japanese 0.054 per unit); the low end,
#: so that pieces are not sized for audio that will not be there.
AUDIO_SECONDS_PER_UNIT = 0.05
#: Share of the audio ahead that the synthesis of what follows may use: the rest is slack for other
#: sessions sharing the engine.
_MARGIN = 0.8
#: Each piece after the first is at least this many times the one before it.
_MIN_GROWTH = 1.5
#: Boundary tokens the engine adds to every piece.
_BOUNDARY_TOKENS = 2


@dataclass(frozen=True, slots=True)
class Pace:
    """How fast the engine is against the speech it makes, in segmenter units."""

    fixed_s: float
    per_unit_s: float
    audio_per_unit_s: float = AUDIO_SECONDS_PER_UNIT
    margin: float = _MARGIN
    min_growth: float = _MIN_GROWTH

    def compute_s(self, units: int) -> float:
        """Expected engine seconds for a piece of ``units`` units."""
        return self.fixed_s + self.per_unit_s * (units + _BOUNDARY_TOKENS)

    def units_within(self, seconds: float) -> int:
        """The longest piece whose expected compute fits in ``seconds`` (may be <= 0)."""
        return int((seconds - self.fixed_s) / self.per_unit_s) - _BOUNDARY_TOKENS

    def next_limit(self, audio_ahead_s: float, compute_after_first_s: float, last_limit: int) -> int:
        """Units the next piece may have: what is ready in time, given the audio of the pieces cut so
        far and the compute of those after the first (queued behind one another), and at least
        ``min_growth`` x the limit the last piece was cut under (pieces end at phrase boundaries,
        often well short of their limit: growth from their lengths would stall)."""
        fits = self.units_within(self.margin * audio_ahead_s - compute_after_first_s)
        return max(fits, int(last_limit * self.min_growth))


def _pace(cost: EngineCost, speed: float) -> Pace:
    # Faster speech: fewer audio seconds per unit; compute counted as at speed 1 (the text side does
    # not shrink), on the safe side.
    return Pace(cost.fixed_s, cost.per_token_s, AUDIO_SECONDS_PER_UNIT / max(speed, 1e-3))


def paced_limits(config: SegmenterConfig, cost: EngineCost, speed: float = 1.0) -> tuple[int, Pace | None]:
    """(first piece's max units, the pace for the pieces after it) for an engine at ``cost``.

    An unmeasured engine or a target of 0 keep ``first_max_chars`` and ``growth`` (pace None).
    """
    if not cost.measured or config.first_audio_target_ms <= 0:
        return config.first_max_chars, None
    pace = _pace(cost, speed)
    first = pace.units_within(config.first_audio_target_ms / 1000)
    # Never under ~3 English words (2 x first_min_chars): a piece needs some context for prosody.
    low = min(config.max_chars, 2 * config.first_min_chars)
    return max(low, min(config.max_chars, first)), pace


def make_segmenter(config: SegmenterConfig, cost: EngineCost, speed: float = 1.0, lang: str = "") -> Segmenter:
    """A context's segmenter, its pieces sized by the latency target on this engine; for Japanese
    (``lang`` "ja") it cuts unspaced text only between MeCab's words (``gateway.text.words_ja``)."""
    first_max, pace = paced_limits(config, cost, speed)
    return Segmenter(
        first_min_chars=config.first_min_chars,
        first_max_chars=first_max,
        min_chars=max(config.min_chars, first_max),
        max_chars=max(config.max_chars, first_max),
        growth=config.growth,
        pace=pace,
        whole_max_chars=max(config.whole_max_chars, config.first_min_chars) if config.whole_max_chars else None,
        sentence_max_cuts=config.sentence_max_cuts,
        min_tail_chars=config.min_tail_chars,
        context_words=config.context_words,
        first_context_words=config.first_context_words,
        words=japanese_words() if lang == "ja" else None,
    )
