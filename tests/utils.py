"""Factories and helpers shared by the tests (like vLLM's tests/v1/core/utils.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import numpy as np
import orjson

from gateway.config import Config, SchedulerConfig, load_config
from gateway.protocol import decode_audio_frame
from gateway.scheduler import Piece, Scheduler

__all__ = ["FakeClock", "make_scheduler", "make_pieces", "test_config", "run_server", "ClientRun", "run_client", "eventually"]


class FakeClock:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def make_scheduler(**overrides: Any) -> Scheduler:
    engine_preferred = overrides.pop("engine_preferred_batch", 8)
    engine_max = overrides.pop("engine_max_batch", 8)
    config = dataclasses.replace(SchedulerConfig(max_wait_ms=0.0), **overrides)
    return Scheduler(config, engine_preferred_batch=engine_preferred, engine_max_batch=engine_max)


def make_pieces(
    session: str,
    context: str,
    lengths: list[int],
    *,
    arrival: float = 0.0,
    priority: int = 0,
    ttl: float | None = None,
) -> list[Piece]:
    """Pieces of one context, in speaking order; the first is marked as the context's first piece."""
    return [
        Piece(
            session_key=session,
            context_key=(session, context),
            phonemes="a" * n,
            voice="v",
            arrival=arrival,
            priority=priority,
            is_first=i == 0,
            start_deadline=None if ttl is None else arrival + ttl,
            payload=(session, context, i),
        )
        for i, n in enumerate(lengths)
    ]


def test_config(**overrides: Any) -> Config:
    """The test configuration: tiny random-weight Kokoro on 127.0.0.1:0, with overrides."""
    from gateway.config import REPO_ROOT

    return load_config(REPO_ROOT / "configs" / "test.toml", overrides=overrides, environ={})


test_config.__test__ = False  # type: ignore[attr-defined]  # not a test, despite its name


@contextlib.asynccontextmanager
async def run_server(overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> AsyncIterator[Any]:
    """A real gateway on 127.0.0.1 with an ephemeral port; yields the ``Gateway`` (``gw.port``)."""
    from gateway.server import Gateway

    gateway = Gateway(test_config(**dict(overrides or {})), **kwargs)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop(grace_s=0)


@dataclasses.dataclass
class ClientRun:
    """Everything one WebSocket client received, decoded."""

    messages: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    frames: list[tuple[Any, bytes]] = dataclasses.field(default_factory=list)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    def seqs(self) -> list[int]:
        return [h.seq for h, _ in self.frames]

    def audio(self, context_index: int | None = None, dtype: str = "<i2") -> np.ndarray:
        parts = [np.frombuffer(p, dtype=dtype) for h, p in self.frames if context_index is None or h.context_index == context_index]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


async def run_client(
    url: str,
    script: Callable[[Any], Any],
    *,
    until: Callable[[ClientRun], bool],
    timeout: float = 60.0,
) -> ClientRun:
    """Connect, run ``script(ws)`` (sends), and collect everything until ``until(run)`` holds."""
    from websockets.asyncio.client import connect

    run = ClientRun()
    async with connect(url, max_size=2**24) as ws:

        async def reader() -> None:
            async for raw in ws:
                if isinstance(raw, bytes):
                    run.frames.append(decode_audio_frame(raw))
                else:
                    run.messages.append(orjson.loads(raw))
                if until(run):
                    return

        read_task = asyncio.create_task(reader())
        await script(ws)
        await asyncio.wait_for(read_task, timeout)
    return run


async def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait until ``check()`` holds (polled every 50 ms): wait for an event, not for a guessed time."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


def done_contexts(n: int) -> Callable[[ClientRun], bool]:
    return lambda run: len(run.of_type("context.done")) + len(run.of_type("cancelled")) >= n


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` for the block, then restored."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
