"""The G2P thread: fair across sessions, cancellable, never phonemizing cancelled text."""

from __future__ import annotations

import threading
import time
from typing import Any

from gateway.engines.worker import G2PWorker
from gateway.text.g2p_bounds import check_deadline


class _RecordingG2P:
    """Phonemizes instantly, recording the order; the first call waits until released."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = threading.Event()

    def phonemize(self, text: str, *, deadline: float | None = None) -> list[Any]:
        if not self.calls:
            self.calls.append(text)
            self.release.wait(10)
            return []
        self.calls.append(text)
        return []


def test_sessions_are_served_round_robin_not_first_come_first_served() -> None:
    g2p = _RecordingG2P()
    worker = G2PWorker(lambda lang: g2p)
    try:
        blocker = worker.submit("block", "en", owner="z")
        flood = [worker.submit(f"a{i}", "en", owner="a") for i in range(5)]
        other = worker.submit("b0", "en", owner="b")
        g2p.release.set()
        other.result(5)
        for f in [blocker, *flood]:
            f.result(5)
        # b's single job does not wait behind all of a's: one of a's, then b's.
        assert g2p.calls[:3] == ["block", "a0", "b0"]
    finally:
        worker.stop()


def test_cancelled_contexts_and_gone_sessions_are_never_phonemized() -> None:
    g2p = _RecordingG2P()
    worker = G2PWorker(lambda lang: g2p)
    try:
        blocker = worker.submit("block", "en", owner="s1", tag="c0")
        cancelled = [worker.submit(f"x{i}", "en", owner="s1", tag="c1") for i in range(3)]
        kept = worker.submit("keep", "en", owner="s1", tag="c2")
        orphaned = worker.submit("gone", "en", owner="s2", tag="c3")
        assert worker.cancel("c1") == 3
        assert worker.cancel_owner("s2") == 1
        g2p.release.set()
        kept.result(5)
        blocker.result(5)
        assert all(f.cancelled() for f in [*cancelled, orphaned])
        assert g2p.calls == ["block", "keep"]
    finally:
        worker.stop()


def test_stop_cancels_what_is_queued() -> None:
    g2p = _RecordingG2P()
    worker = G2PWorker(lambda lang: g2p)
    worker.submit("block", "en", owner="s")
    queued = worker.submit("never", "en", owner="s")
    worker.stop()
    g2p.release.set()
    assert queued.cancelled()
    assert worker.submit("late", "en").cancelled()


class _SlowLoadingG2P:
    """A backend that takes longer to load than the budget allows one text; its texts are instant."""

    def __init__(self, load_s: float) -> None:
        self.load_s = load_s
        self.loads = 0

    def load(self) -> None:
        if not self.loads:
            time.sleep(self.load_s)
        self.loads += 1

    def phonemize(self, text: str, *, deadline: float | None = None) -> list[Any]:
        check_deadline(deadline)
        return [text]


def test_loading_a_language_does_not_spend_the_first_texts_budget() -> None:
    # A cold language on a busy CPU once failed the first context of every session with
    # text_too_slow: the load ran inside that text's budget.
    g2p = _SlowLoadingG2P(load_s=0.3)
    worker = G2PWorker(lambda lang: g2p, budget_s=0.1)
    try:
        assert worker.submit("hello", "en-us", owner="a").result(10) == ["hello"]
        assert worker.submit("again", "en-us", owner="a").result(10) == ["again"]
    finally:
        worker.stop()
    assert g2p.loads == 2  # asked each time, loaded (slowly) once
