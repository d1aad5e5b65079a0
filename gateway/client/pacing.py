"""Pacing outgoing text below the server's per-session character rate, on the one token bucket."""

from __future__ import annotations

import asyncio

from gateway.ratelimit import TokenBucket

__all__ = ["Pacer"]


class Pacer:
    """Waits until ``amount`` characters may be sent: a ``TokenBucket`` a margin below the server's
    ``session.max_chars_per_s`` (one second of burst), on the event loop's clock."""

    def __init__(self, rate: float) -> None:
        # A margin below the server's rate: its bucket refills from its own (later) arrival times.
        self.rate = 0.9 * rate
        self._bucket: TokenBucket | None = None

    async def take(self, amount: float) -> None:
        loop = asyncio.get_running_loop()
        if self._bucket is None:
            self._bucket = TokenBucket(self.rate, loop.time())
        amount = min(amount, self.rate)
        while not self._bucket.take(amount, loop.time()):
            await asyncio.sleep(self._bucket.wait_s(amount, loop.time()))
