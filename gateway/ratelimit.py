"""The one token bucket of voxgate; sans-I/O, time passed in.

Used by the server (a session's messages and characters per second), by the client SDK (pacing
its own sends below the server's limit) and by the danmaku policy (comments per viewer). Callers
own the clock: the server passes its loop time, tests a fake one.
"""

from __future__ import annotations

import math

__all__ = ["TokenBucket"]


class TokenBucket:
    """Allows ``rate`` per second on average, with bursts of up to ``burst`` (one second's worth
    unless given); rate 0 disables the limit."""

    def __init__(self, rate: float, now: float, *, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = rate if burst is None else burst
        self.tokens = self.burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, amount: float, now: float) -> bool:
        """Take ``amount`` if the bucket holds it (within float rounding); False leaves it as it is."""
        if self.rate <= 0:
            return True
        self._refill(now)
        if amount > self.tokens and not math.isclose(amount, self.tokens):
            return False
        self.tokens -= amount
        return True

    def wait_s(self, amount: float, now: float) -> float:
        """Seconds from ``now`` until ``amount`` can be taken (0 when it can be now). An amount over
        the burst is measured against the burst, so a caller never waits forever."""
        if self.rate <= 0:
            return 0.0
        self._refill(now)
        return max(0.0, min(amount, self.burst) - self.tokens) / self.rate
