"""How long the engine takes for a batch, learned from the batches it ran.

A batch costs a fixed amount per item (the text side, the boundary tokens, the launch of each
stage) plus an amount per padded phoneme token (the decoder, which makes every audio frame). One
number per token, as the scheduler used to learn, folds the fixed part into the per-token rate:
short pieces then look expensive per token, the first piece is sized too short and later pieces
grow too slowly, and a long piece looks cheaper than it is (measured on the 2-core CPU, offline
weights, 2 threads: 8 tokens 0.57 s, 16 tokens 0.53 s, 64 tokens 1.58 s, 128 tokens 3.1 s, i.e.
~0.15 s per item + ~23 ms per token; benchmarks/README.md).

``CostModel`` fits ``seconds = fixed_s * items + per_token_s * padded_tokens`` by least squares over
the last ``window`` batches. Until it has seen two batches of different shapes it cannot tell the
two apart and puts everything in the per-token rate (the old estimate), so it is never worse than
that. Pure arithmetic, no clock, no I/O.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

__all__ = ["CostModel", "EngineCost"]


@dataclass(frozen=True, slots=True)
class EngineCost:
    """The engine's measured speed: seconds per item and per padded phoneme token (0: not measured)."""

    fixed_s: float = 0.0
    per_token_s: float = 0.0

    @property
    def measured(self) -> bool:
        return self.per_token_s > 0.0

    def seconds(self, tokens: int, items: int = 1) -> float:
        """Expected compute for ``items`` items padded to ``tokens`` tokens in all."""
        return self.fixed_s * items + self.per_token_s * tokens


class CostModel:
    """Online least-squares fit of batch compute time to (items, padded tokens)."""

    def __init__(self, window: int = 32) -> None:
        if window < 2:
            raise ValueError("window must be >= 2")
        self._samples: collections.deque[tuple[int, int, float]] = collections.deque(maxlen=window)
        self.estimate = EngineCost()

    def observe(self, items: int, padded_tokens: int, seconds: float) -> EngineCost:
        """Add one finished batch and return the new estimate."""
        if items <= 0 or padded_tokens <= 0 or seconds < 0:
            return self.estimate
        self._samples.append((items, padded_tokens, seconds))
        self.estimate = self._fit()
        return self.estimate

    def _fit(self) -> EngineCost:
        s_ii = s_it = s_tt = s_is = s_ts = 0.0
        for items, tokens, seconds in self._samples:
            s_ii += items * items
            s_it += items * tokens
            s_tt += tokens * tokens
            s_is += items * seconds
            s_ts += tokens * seconds
        det = s_ii * s_tt - s_it * s_it
        # Nearly collinear (every batch the same shape): the two parts cannot be told apart.
        if det > 1e-6 * s_ii * s_tt:
            fixed = (s_is * s_tt - s_ts * s_it) / det
            per_token = (s_ii * s_ts - s_it * s_is) / det
            if fixed >= 0.0 and per_token > 0.0:
                return EngineCost(fixed, per_token)
        # Through the origin: all of the cost per token (never negative parts).
        return EngineCost(0.0, s_ts / s_tt)
