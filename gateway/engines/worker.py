"""The engine's own thread, and the G2P thread.

asyncio owns I/O; synthesis and G2P run here, one thread each, so the event loop never blocks and no
model, tokenizer or spaCy pipeline is ever touched by two threads. Callers get
``concurrent.futures.Future`` objects (``asyncio.wrap_future`` brings them back onto the loop).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.engines.base import Engine, EngineError, HeadCallback, SynthesisItem, SynthesisResult
from gateway.engines.facts import EngineFacts
from gateway.errors import EngineFailed
from gateway.text.seams import with_context
from gateway.text.segmenter import Seam

__all__ = ["EngineWorker", "G2PWorker", "BatchOutcome"]

logger = logging.getLogger("voxgate.engine")

#: Per item: its result, or the error that item failed with.
BatchOutcome = list[SynthesisResult | EngineFailed]

#: Fully failed batches in a row after which the engine is reported dead (/readyz 503).
MAX_CONSECUTIVE_FAILURES = 3


def _is_out_of_memory(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


class EngineWorker:
    """Runs one engine on one dedicated thread.

    ``start()`` builds the engine there (torch thread settings and CUDA context belong to that thread),
    ``submit(items)`` runs a batch. A batch that raises is retried item by item once, so one bad item
    does not fail its neighbours; out-of-memory splits the batch in halves first.
    """

    def __init__(self, factory: Callable[[], Engine], *, warmup: bool = True) -> None:
        self._factory = factory
        self._warmup = warmup
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxgate-engine")
        self.engine: Engine | None = None
        self.ready = False
        self.failed_batches_in_row = 0
        self.load_error: BaseException | None = None
        #: Read on this thread at load; the event loop reads these, never the engine itself.
        self.facts: EngineFacts | None = None

    def start(self) -> concurrent.futures.Future[Engine]:
        return self._executor.submit(self._load)

    def _load(self) -> Engine:
        try:
            engine = self._factory()
            if self._warmup:
                engine.warmup()
        except BaseException as exc:
            self.load_error = exc
            logger.error("engine failed to load", exc_info=True)
            raise
        self.engine = engine
        self.facts = EngineFacts.of(engine)
        self.ready = True
        logger.info("engine ready: %s", dict(self.facts.description))
        return engine

    @property
    def alive(self) -> bool:
        return self.ready and self.failed_batches_in_row < MAX_CONSECUTIVE_FAILURES

    def submit(self, items: Sequence[SynthesisItem], on_head: HeadCallback | None = None) -> concurrent.futures.Future[BatchOutcome]:
        """Run a batch on the engine thread. ``on_head`` (called there) receives the starts of items
        the engine decodes in two parts (``Engine.synthesize_with_heads``)."""
        return self._executor.submit(self._run, list(items), on_head)

    def run_blocking(self, items: Sequence[SynthesisItem]) -> BatchOutcome:
        """Same as ``submit(items).result()``: for CLI tools and benchmarks that own no event loop."""
        return self.submit(items).result()

    def _run(self, items: list[SynthesisItem], on_head: HeadCallback | None = None) -> BatchOutcome:
        assert self.engine is not None, "engine not loaded"
        outcome = self._synthesize(items, on_head)
        if all(isinstance(r, EngineFailed) for r in outcome):
            self.failed_batches_in_row += 1
        else:
            self.failed_batches_in_row = 0
        return outcome

    def _synthesize(self, items: list[SynthesisItem], on_head: HeadCallback | None = None) -> BatchOutcome:
        assert self.engine is not None
        try:
            if on_head is None:
                return list(self.engine.synthesize(items))
            return list(self.engine.synthesize_with_heads(items, on_head))
        except Exception as exc:
            if len(items) > 1 and _is_out_of_memory(exc):
                logger.warning("engine out of memory on a batch of %d; splitting", len(items))
                self._free_cache()
                half = len(items) // 2
                second = None if on_head is None else _shifted(on_head, half)
                return self._synthesize(items[:half], on_head) + self._synthesize(items[half:], second)
            # A retry sends no heads: one may have gone out already, and the session keeps the first.
            if len(items) > 1:
                logger.warning("batch of %d failed (%s); retrying items one by one", len(items), type(exc).__name__)
                return [self._solo(item) for item in items]
            logger.error("engine failed on an item", exc_info=not isinstance(exc, EngineError))
            return [EngineFailed(_client_message(exc))]

    def _solo(self, item: SynthesisItem) -> SynthesisResult | EngineFailed:
        assert self.engine is not None
        try:
            return self.engine.synthesize([item])[0]
        except Exception as exc:
            logger.error("engine failed on an item", exc_info=not isinstance(exc, EngineError))
            return EngineFailed(_client_message(exc))

    def _free_cache(self) -> None:
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover - torch is a dependency
            pass

    def stop(self) -> None:
        """Close the engine on its thread, then end the thread (pending batches finish first)."""

        def close() -> None:
            if self.engine is not None:
                self.engine.close()

        try:
            self._executor.submit(close).result(timeout=30)
        except Exception:  # noqa: BLE001 - shutting down anyway
            logger.warning("engine close failed", exc_info=True)
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.ready = False


def _shifted(on_head: HeadCallback, offset: int) -> HeadCallback:
    """``on_head`` for the second part of a split batch: its indices are ``offset`` further on."""
    return lambda index, head: on_head(index + offset, head)


def _client_message(exc: BaseException) -> str:
    # Our own errors are written for clients; anything else may carry internals, so it stays in the log.
    if isinstance(exc, EngineError):
        return str(exc)
    return "synthesis failed for this piece"


class G2PWorker:
    """Text to phonemes on one dedicated thread, fair across sessions; one G2P instance per language,
    never shared.

    Jobs are queued per ``owner`` (a session) and served round-robin, one job per owner per turn: a
    session with much or slow text delays another by at most one job, not by its whole queue.
    ``cancel(tag)`` drops the queued jobs of a context and ``cancel_owner(owner)`` those of a session,
    so that cancelled or orphaned text is never phonemized (their futures end cancelled). A job whose
    G2P runs past ``budget_s`` fails with ``G2PTooSlow`` (checked between bounded chunks of its text).
    """

    def __init__(self, factory: Callable[[str], object], *, budget_s: float = 0.0) -> None:
        self._factory = factory
        self.budget_s = budget_s
        self._g2p: dict[str, object] = {}
        #: owner -> its jobs in order; dict order is the round-robin order (served owners move last).
        self._queues: dict[Hashable, collections.deque[_G2PJob]] = {}
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="voxgate-g2p", daemon=True)
        self._thread.start()

    def preload(self, langs: Sequence[str]) -> concurrent.futures.Future[None]:
        """Load these languages now, so the first request does not pay for spaCy and friends."""

        def load() -> None:
            for lang in langs:
                g2p = self._get(lang)
                loader = getattr(g2p, "load", None)
                if loader is not None:
                    loader()

        return self._put(load, owner=None, tag=None)

    def submit(
        self, text: str, lang: str, *, owner: Hashable = None, tag: Hashable = None, seam: Seam | None = None
    ) -> concurrent.futures.Future[list]:
        """Phonemize ``text``; ``owner`` (a session) is the unit of fairness, ``tag`` (a context) the
        unit of cancellation. With a ``seam`` the pieces come back with its words
        phonemized around them (``gateway.text.seams``)."""

        def phonemize() -> list:
            g2p: Any = self._get(lang)
            # Loading a language (spaCy, dictionaries: seconds on a busy CPU) is the server's cost,
            # not this text's: the budget starts once the backend is ready.
            loader = getattr(g2p, "load", None)
            if loader is not None:
                loader()
            deadline = time.perf_counter() + self.budget_s if self.budget_s > 0 else None
            parts = g2p.phonemize(text, deadline=deadline)  # type: ignore[attr-defined]
            return parts if seam is None else with_context(g2p, parts, seam, deadline=deadline)

        return self._put(phonemize, owner=owner, tag=tag)

    def cancel(self, tag: Hashable) -> int:
        """Drop the queued jobs of ``tag``; returns how many. A running job finishes (its result is
        ignored by the caller)."""
        return self._drop(lambda job: job.tag == tag)

    def cancel_owner(self, owner: Hashable) -> int:
        with self._cond:
            queue = self._queues.pop(owner, None)
        for job in queue or ():
            job.future.cancel()
        return len(queue or ())

    @property
    def num_queued(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def _put(self, fn: Callable[[], Any], *, owner: Hashable, tag: Hashable) -> concurrent.futures.Future[Any]:
        job = _G2PJob(fn=fn, tag=tag, future=concurrent.futures.Future())
        with self._cond:
            if self._stopped:
                job.future.cancel()
                return job.future
            self._queues.setdefault(owner, collections.deque()).append(job)
            self._cond.notify()
        return job.future

    def _drop(self, match: Callable[[_G2PJob], bool]) -> int:
        dropped: list[_G2PJob] = []
        with self._cond:
            for owner, queue in list(self._queues.items()):
                kept = collections.deque(job for job in queue if not match(job))
                dropped += [job for job in queue if match(job)]
                if kept:
                    self._queues[owner] = kept
                else:
                    del self._queues[owner]
        for job in dropped:
            job.future.cancel()
        return len(dropped)

    def _next_job(self) -> _G2PJob | None:
        with self._cond:
            while not self._queues and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return None
            owner = next(iter(self._queues))
            queue = self._queues.pop(owner)
            job = queue.popleft()
            if queue:
                self._queues[owner] = queue  # back of the line: the others go first
            return job

    def _run(self) -> None:
        while (job := self._next_job()) is not None:
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                job.future.set_result(job.fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
                job.future.set_exception(exc)

    def _get(self, lang: str) -> object:
        g2p = self._g2p.get(lang)
        if g2p is None:
            g2p = self._g2p[lang] = self._factory(lang)
        return g2p

    def stop(self) -> None:
        """Cancel what is queued and end the thread (a running job finishes on its own)."""
        with self._cond:
            self._stopped = True
            queues, self._queues = self._queues, {}
            self._cond.notify_all()
        for queue in queues.values():
            for job in queue:
                job.future.cancel()


@dataclass(eq=False)
class _G2PJob:
    fn: Callable[[], Any]
    tag: Hashable
    future: concurrent.futures.Future[Any]
