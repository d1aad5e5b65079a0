"""Protocol fuzzing against a live server: >= 10,000 valid and invalid messages per run.

Each hypothesis example is one connection sending a message sequence built from a small model of
the protocol, so the exact error codes expected are known in advance. Checked: no crash, no hung
session, every invalid message answered with its code (in order), every valid one applied (no
error), seq gap-free, and a well-behaved session running in parallel hears exactly the reference.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from gateway.protocol import decode_audio_frame
from tests.utils import run_server

EXAMPLES = 125
MESSAGES_PER_EXAMPLE = 80  # 125 x ~80 = 10,000 messages

CONTEXTS = ["a", "b", "c"]
WORDS = ["hello", "world", "voice", "gate", "stream", "token", "日本", "ok"]

INVALID: list[tuple[Any, str]] = [
    ("{broken", "bad_json"),
    ("[]", "bad_json"),
    ('"just a string"', "bad_json"),
    (orjson.dumps({"type": "yell"}).decode(), "unknown_type"),
    (orjson.dumps({"no": "type"}).decode(), "unknown_type"),
    (orjson.dumps({"type": "text", "context_id": "a", "text": None}).decode(), "bad_field"),
    (orjson.dumps({"type": "text", "context_id": 5, "text": "x"}).decode(), "bad_field"),
    (orjson.dumps({"type": "text", "context_id": "a", "text": "x", "speed": -1}).decode(), "bad_field"),
    (orjson.dumps({"type": "session.update", "frame_ms": 3}).decode(), "bad_field"),
    (orjson.dumps({"type": "session.update", "format": "flac"}).decode(), "bad_field"),
    (orjson.dumps({"type": "text", "context_id": "a", "text": ""}).decode(), "empty_text"),
    (orjson.dumps({"type": "text", "context_id": "z", "text": "x", "voice": "ghost"}).decode(), "unknown_voice"),
    (b"\x00binary\xff", "binary_not_allowed"),
    ("x" * 70_000, "message_too_big"),
]

message_step = st.one_of(
    st.tuples(st.just("text"), st.sampled_from(CONTEXTS), st.lists(st.sampled_from(WORDS), min_size=1, max_size=3)),
    st.tuples(st.just("flush"), st.sampled_from(CONTEXTS), st.just(None)),
    st.tuples(st.just("cancel"), st.sampled_from(CONTEXTS), st.just(None)),
    st.tuples(st.just("update"), st.sampled_from(["pcm_s16le", "pcm_f32le", "ulaw"]), st.sampled_from([10, 20, 40])),
    st.tuples(st.just("invalid"), st.integers(0, len(INVALID) - 1), st.just(None)),
)


@pytest.fixture(scope="module")
def live_server() -> Iterator[tuple[int, asyncio.AbstractEventLoop]]:
    """A gateway running on its own loop thread for the whole module (hypothesis examples are sync)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        overrides = {
            "engine.kind": "fake",
            "session.max_buffer_ms": 60_000,
            "session.max_messages_per_s": 0,
            # Every error answered (the flood guard answers 10 a window and closes at 100 by default).
            "session.max_error_replies": 100_000,
            "session.max_violations": 0,
            "session.max_chars_per_s": 0,
        }
        async with run_server(overrides) as gw:
            holder["port"] = gw.port
            holder["stop"] = asyncio.Event()
            started.set()
            await holder["stop"].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(60)
    yield holder["port"], loop
    loop.call_soon_threadsafe(holder["stop"].set)
    thread.join(30)


async def well_behaved(url: str) -> np.ndarray:
    async with connect(url) as ws:
        await ws.recv()
        await ws.send(orjson.dumps({"type": "text", "context_id": "w", "text": "A calm and steady voice."}).decode())
        await ws.send(orjson.dumps({"type": "flush", "context_id": "w", "final": True}).decode())
        chunks = []
        async for raw in ws:
            if isinstance(raw, bytes):
                chunks.append(np.frombuffer(decode_audio_frame(raw)[1], dtype="<i2"))
            elif orjson.loads(raw)["type"] == "context.done":
                return np.concatenate(chunks)
    raise AssertionError("well-behaved session ended early")


async def fuzz_one(url: str, steps: list[tuple[str, Any, Any]]) -> None:
    open_contexts: set[str] = set()
    expected_errors: list[str] = []
    async with connect(url, max_size=2**24) as ws:
        assert orjson.loads(await ws.recv())["type"] == "session.created"
        for kind, a, b in steps:
            if kind == "text":
                await ws.send(orjson.dumps({"type": "text", "context_id": a, "text": " ".join(b) + " "}).decode())
                open_contexts.add(a)
            elif kind == "flush":
                await ws.send(orjson.dumps({"type": "flush", "context_id": a}).decode())
                if a not in open_contexts:
                    expected_errors.append("unknown_context")
            elif kind == "cancel":
                await ws.send(orjson.dumps({"type": "cancel", "context_id": a}).decode())
                open_contexts.discard(a)
            elif kind == "update":
                await ws.send(orjson.dumps({"type": "session.update", "format": a, "frame_ms": b}).decode())
            else:
                raw, code = INVALID[a]
                await ws.send(raw)
                expected_errors.append(code)
        for cid in sorted(open_contexts):
            await ws.send(orjson.dumps({"type": "flush", "context_id": cid, "final": True}).decode())
        # Sentinel: a frame_ms the fuzz never sends; the server answers in order, so every error comes before it.
        await ws.send(orjson.dumps({"type": "session.update", "frame_ms": 999}).decode())
        errors: list[str] = []
        finished: set[str] = set()
        seqs: list[int] = []
        sentinel_seen = False
        async with asyncio.timeout(60):
            while not (sentinel_seen and finished >= open_contexts):
                raw = await ws.recv()
                if isinstance(raw, bytes):
                    seqs.append(decode_audio_frame(raw)[0].seq)
                    continue
                event = orjson.loads(raw)
                if event["type"] == "error":
                    errors.append(event["code"])
                elif event["type"] == "context.done":
                    finished.add(event["context_id"])
                elif event["type"] == "session.updated" and event["settings"]["frame_ms"] == 999:
                    sentinel_seen = True
        assert errors == expected_errors
        assert seqs == list(range(len(seqs)))


def test_ten_thousand_fuzzed_messages_crash_nothing_and_leave_other_sessions_untouched(live_server: Any) -> None:
    port, loop = live_server
    url = f"ws://127.0.0.1:{port}/v1/stream"
    reference = asyncio.run_coroutine_threadsafe(well_behaved(url), loop).result(60)
    counter = {"examples": 0, "messages": 0}

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(steps=st.lists(message_step, min_size=MESSAGES_PER_EXAMPLE, max_size=MESSAGES_PER_EXAMPLE))
    def run(steps: list[tuple[str, Any, Any]]) -> None:
        counter["examples"] += 1
        counter["messages"] += len(steps)

        async def both() -> np.ndarray | None:
            if counter["examples"] % 10:
                await fuzz_one(url, steps)
                return None
            _, audio = await asyncio.gather(fuzz_one(url, steps), well_behaved(url))
            return audio

        audio = asyncio.run_coroutine_threadsafe(both(), loop).result(120)
        if audio is not None:
            assert np.array_equal(audio, reference)

    run()
    assert counter["messages"] >= 10_000
    assert asyncio.run_coroutine_threadsafe(well_behaved(url), loop).result(60).tobytes() == reference.tobytes()
