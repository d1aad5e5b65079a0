"""Per-session defences against a client that floods or never reads; sans-I/O, time passed in.

``ViolationGuard`` decides what to do with the n-th protocol violation of a window (a malformed
message, an over-limit message, a binary frame): answer it, stay silent, or close the session. A
flood is logged once per window, not once per message, so a client cannot fill the disk.

``ReplayBuffer`` keeps the recently sent frames for ``resume``, bounded in frames and in bytes: a
client chooses the frame size and format, so a bound in frames alone is a bound the client sets.

Not their job: sockets, timers, the wire format of errors (``gateway.session``).
"""

from __future__ import annotations

import collections
import enum
import logging
from collections.abc import Iterator

__all__ = ["Verdict", "ViolationGuard", "ReplayBuffer"]

logger = logging.getLogger("voxgate.session")


class Verdict(enum.Enum):
    REPLY = "reply"  # queue the error reply, log it
    SILENT = "silent"  # over the reply allowance of this window: no reply, no log line
    CLOSE = "close"  # too many violations in the window: close the session (1008)


class ViolationGuard:
    """Counts a session's violations in fixed windows of ``window_s`` seconds.

    The first ``max_replies`` of a window are answered; the rest are counted silently; the
    ``max_violations``-th closes the session. ``max_violations`` 0 disables closing.
    """

    def __init__(self, *, max_violations: int, window_s: float, max_replies: int = 10) -> None:
        self.max_violations = max_violations
        self.window_s = window_s
        self.max_replies = max_replies
        self.window_start = -float("inf")
        self.count = 0
        #: Violations not answered since the session began (for the flood log line and tests).
        self.num_suppressed = 0

    def record(self, now: float, *, log_tag: str, code: str) -> Verdict:
        if now >= self.window_start + self.window_s:
            if self.count > self.max_replies:
                logger.info("session %s: %d violations in %.0f s, %d not answered", log_tag, self.count, self.window_s, self.count - self.max_replies)
            self.window_start, self.count = now, 0
        self.count += 1
        if self.max_violations and self.count >= self.max_violations:
            if self.count == self.max_violations:
                logger.warning("session %s: %d violations within %.0f s (last: %s); closing it", log_tag, self.count, self.window_s, code)
            return Verdict.CLOSE
        if self.count > self.max_replies:
            if self.count == self.max_replies + 1:
                logger.info("session %s: error flood (%s); further errors in this window are counted, not answered", log_tag, code)
            self.num_suppressed += 1
            return Verdict.SILENT
        return Verdict.REPLY


class ReplayBuffer:
    """The last sent frames as (seq, bytes), at most ``max_frames`` and ``max_bytes`` in total
    (the newest frame is always kept, whatever its size)."""

    def __init__(self, *, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max(1, max_frames)
        self.max_bytes = max_bytes
        self.num_bytes = 0
        self._frames: collections.deque[tuple[int, bytes]] = collections.deque()

    def append(self, seq: int, data: bytes) -> None:
        self._frames.append((seq, data))
        self.num_bytes += len(data)
        while len(self._frames) > 1 and (len(self._frames) > self.max_frames or self.num_bytes > self.max_bytes):
            self.num_bytes -= len(self._frames.popleft()[1])

    def clear(self) -> None:
        self._frames.clear()
        self.num_bytes = 0

    def __len__(self) -> int:
        return len(self._frames)

    def __bool__(self) -> bool:
        return bool(self._frames)

    def __getitem__(self, index: int) -> tuple[int, bytes]:
        return self._frames[index]

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        return iter(self._frames)
