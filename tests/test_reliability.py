"""Reliability: auth, origins, engine faults, disconnects, resume, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.engines.base import SynthesisItem
from gateway.engines.fake import FakeEngine
from gateway.engines.worker import EngineWorker
from gateway.errors import EngineFailed
from gateway.protocol import decode_audio_frame
from tests.test_server import http_get, msg
from tests.utils import eventually, run_client, run_server

FAST = {"engine.kind": "fake", "session.max_buffer_ms": 10_000}


async def test_a_token_is_required_when_configured_by_header_or_query() -> None:
    async with run_server(dict(FAST, **{"server.auth_token": "s3cret"})) as gw:
        base = f"ws://127.0.0.1:{gw.port}/v1/stream"
        with pytest.raises(InvalidStatus) as info:
            async with connect(base):
                pass
        assert info.value.response.status_code == 401
        with pytest.raises(InvalidStatus):
            async with connect(base + "?token=wrong"):
                pass
        async with connect(base, additional_headers={"Authorization": "Bearer s3cret"}) as ws:
            assert orjson.loads(await ws.recv())["type"] == "session.created"
        async with connect(base + "?token=s3cret") as ws:
            assert orjson.loads(await ws.recv())["type"] == "session.created"
        assert gw.metrics.sessions_refused.labels(reason="401")._value.get() == 2


async def test_browsers_from_other_origins_are_refused() -> None:
    async with run_server(dict(FAST, **{"server.allowed_origins": "http://good.example"})) as gw:
        base = f"ws://127.0.0.1:{gw.port}/v1/stream"
        with pytest.raises(InvalidStatus) as info:
            async with connect(base, origin="http://evil.example"):
                pass
        assert info.value.response.status_code == 403
        async with connect(base, origin="http://good.example") as ws:
            assert orjson.loads(await ws.recv())["type"] == "session.created"


def test_a_failing_batch_is_retried_item_by_item_so_one_bad_item_spares_its_neighbours() -> None:
    worker = EngineWorker(lambda: FakeEngine(voices=("v",), fail_on="BAD"), warmup=False)
    worker.start().result()
    try:
        items = [SynthesisItem("abc", "v"), SynthesisItem("xBADx", "v"), SynthesisItem("def", "v")]
        outcome = worker.run_blocking(items)
        assert [type(r).__name__ for r in outcome] == ["SynthesisResult", "EngineFailed", "SynthesisResult"]
        assert worker.alive
    finally:
        worker.stop()


class _OutOfMemoryEngine(FakeEngine):
    attempts: list[int]

    def synthesize(self, items: Any) -> Any:
        self.attempts = getattr(self, "attempts", []) + [len(items)]
        if len(items) > 1:
            raise type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory")
        return super().synthesize(items)


def test_out_of_memory_splits_the_batch_and_every_item_still_succeeds() -> None:
    engine = _OutOfMemoryEngine(voices=("v",))
    worker = EngineWorker(lambda: engine, warmup=False)
    worker.start().result()
    try:
        outcome = worker.run_blocking([SynthesisItem(c * 3, "v") for c in "abcd"])
        assert not any(isinstance(r, EngineFailed) for r in outcome)
        assert engine.attempts == [4, 2, 1, 1, 2, 1, 1]
    finally:
        worker.stop()


async def test_engine_failure_ends_only_the_affected_context_and_readyz_reports_a_dead_engine() -> None:
    async with run_server(FAST, engine_factory=lambda: FakeEngine(fail_on="")) as gw:  # every item fails
        url = f"ws://127.0.0.1:{gw.port}/v1/stream"
        async def doomed(ws: Any) -> None:
            await ws.send(msg(type="text", context_id="c", text="This will not work."))
            await ws.send(msg(type="flush", context_id="c", final=True))

        runs = [await run_client(url, doomed, until=lambda r: bool(r.of_type("error")), timeout=30) for _ in range(3)]
        for run in runs:
            assert [e["code"] for e in run.of_type("error")] == ["engine_failed"]
        status, body = await asyncio.to_thread(http_get, gw.port, "/readyz")
        assert status == 503 and orjson.loads(body)["ready"] is False
        assert (await asyncio.to_thread(http_get, gw.port, "/healthz"))[0] == 200


async def test_a_client_vanishing_mid_context_frees_its_queued_work_at_once() -> None:
    engine = FakeEngine(max_batch_size=1)
    async with run_server(dict(FAST, **{"session.resume_grace_s": 0}), engine_factory=lambda: engine) as gw:
        url = f"ws://127.0.0.1:{gw.port}/v1/stream"
        ws = await connect(url)
        await ws.recv()
        story = "Sentence number one is here. " * 40
        await ws.send(msg(type="text", context_id="c", text=story))
        await ws.send(msg(type="flush", context_id="c", final=True))
        while not isinstance(await ws.recv(), bytes):
            pass
        ws.transport.abort()  # vanish without a close frame
        assert gw.scheduler is not None
        await eventually(lambda: gw.scheduler.num_queued == 0 and not gw._runtimes)
        synthesized = sum(len(b) for b in engine.batches)
        await asyncio.sleep(0.5)  # nothing more is synthesized for it, however long we wait
        assert sum(len(b) for b in engine.batches) == synthesized < 40
        assert not gw._runtimes


async def test_a_client_that_reconnects_with_its_session_id_gets_missed_frames_and_the_same_numbering() -> None:
    async with run_server(FAST) as gw:
        url = f"ws://127.0.0.1:{gw.port}/v1/stream"
        ws = await connect(url)
        created = orjson.loads(await ws.recv())
        session_id, token = created["session_id"], created["resume_token"]
        await ws.send(msg(type="text", context_id="c", text="A first sentence to hear. And a second one."))
        await ws.send(msg(type="flush", context_id="c", final=True))
        seqs = []
        while True:
            raw = await ws.recv()
            if isinstance(raw, bytes):
                seqs.append(decode_audio_frame(raw)[0].seq)
            elif orjson.loads(raw)["type"] == "context.done":
                break
        ws.transport.abort()  # a lost connection, not a clean close (which ends the session)
        await asyncio.sleep(0.3)
        seen = seqs[len(seqs) // 2]  # pretend the tail was lost in transit
        async with connect(f"{url}?session_id={session_id}&resume_token={token}&last_seq={seen}") as again:
            resumed = orjson.loads(await again.recv())
            assert resumed == {"type": "session.resumed", "session_id": session_id, "replayed": len(seqs) - len(seqs) // 2 - 1}
            replayed = [decode_audio_frame(await again.recv())[0].seq for _ in range(resumed["replayed"])]
            assert replayed == seqs[len(seqs) // 2 + 1 :]
            await again.send(msg(type="text", context_id="d", text="After the reconnect."))
            await again.send(msg(type="flush", context_id="d", final=True))
            while not isinstance(raw := await again.recv(), bytes):
                pass
            assert decode_audio_frame(raw)[0].seq == seqs[-1] + 1
        async with connect(f"{url}?session_id=nope&last_seq=3") as third:
            first = orjson.loads(await third.recv())
            assert first["type"] == "error" and first["code"] == "resume_failed"
            assert orjson.loads(await third.recv())["type"] == "session.created"


def test_sigterm_finishes_in_flight_contexts_tells_clients_and_exits_0(tmp_path: Any) -> None:
    env = dict(os.environ, VOXGATE_ENGINE_KIND="fake", VOXGATE_SERVER_PORT="0", VOXGATE_SERVER_SHUTDOWN_GRACE_S="10")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", "configs/test.toml", "--set", "engine.kind=fake"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = None
        deadline = time.time() + 60
        while port is None and time.time() < deadline:
            line = proc.stdout.readline()
            if "voxgate: ws://" in line:
                port = int(line.split("ws://")[1].split("/")[0].rsplit(":", 1)[1])
        assert port is not None
        # Keep reading its output: a full pipe would block the server's logging and its event loop.
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()

        async def client() -> list[Any]:
            events: list[Any] = []
            async with connect(f"ws://127.0.0.1:{port}/v1/stream") as ws:
                await ws.recv()
                await ws.send(msg(type="text", context_id="c", text="Finish this sentence please. " * 4))
                await ws.send(msg(type="flush", context_id="c", final=True))
                while not isinstance(await ws.recv(), bytes):
                    pass
                proc.send_signal(signal.SIGTERM)
                try:
                    async for raw in ws:
                        events.append("frame" if isinstance(raw, bytes) else orjson.loads(raw)["type"])
                except Exception:
                    pass
                events.append(("close", ws.close_code))
            return events

        events = asyncio.run(client())
        assert proc.wait(timeout=30) == 0
        assert "context.done" in events
        assert events[-1] == ("close", 1012)
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_a_clean_close_ends_the_session_without_waiting_for_a_resume() -> None:
    async with run_server(FAST) as gw:
        url = f"ws://127.0.0.1:{gw.port}/v1/stream"
        async with connect(url) as ws:
            session_id = orjson.loads(await ws.recv())["session_id"]
        await eventually(lambda: session_id not in gw._runtimes)


async def test_the_session_id_alone_does_not_resume_a_session() -> None:
    async with run_server(dict(FAST, **{"server.auth_token": "s3cret"})) as gw:
        url = f"ws://127.0.0.1:{gw.port}/v1/stream"
        victim = await connect(url + "?token=s3cret")
        created = orjson.loads(await victim.recv())
        session_id, token = created["session_id"], created["resume_token"]
        assert len(token) >= 40 and token not in session_id
        victim.transport.abort()
        await asyncio.sleep(0.3)
        bearer = {"Authorization": "Bearer s3cret"}
        # Knowing the session id (it travels in URLs) is not enough, nor is a wrong token.
        for query in (f"session_id={session_id}&last_seq=-1", f"session_id={session_id}&resume_token=x{token}&last_seq=-1"):
            async with connect(f"{url}?{query}", additional_headers=bearer) as thief:
                assert orjson.loads(await thief.recv())["code"] == "resume_failed"
                assert orjson.loads(await thief.recv())["session_id"] != session_id
        async with connect(f"{url}?session_id={session_id}&resume_token={token}&last_seq=-1", additional_headers=bearer) as back:
            assert orjson.loads(await back.recv())["type"] == "session.resumed"


async def test_detached_sessions_count_toward_max_sessions() -> None:
    async with run_server(dict(FAST, **{"server.max_sessions": 2})) as gw:
        url = f"ws://127.0.0.1:{gw.port}/v1/stream"
        for _ in range(2):
            ws = await connect(url)
            await ws.recv()
            ws.transport.abort()  # detached, waiting for a resume
        await asyncio.sleep(0.3)
        async with connect(url) as third:
            assert orjson.loads(await third.recv())["code"] == "busy"


async def _first_error_after_speaking(ws: Any, context_id: str, text: str) -> dict[str, Any]:
    await ws.recv()
    await ws.send(msg(type="text", context_id=context_id, text=text))
    await ws.send(msg(type="flush", context_id=context_id, final=True))
    while (event := orjson.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] != "error":
        pass
    return event


class _MiscountingEngine(FakeEngine):
    """Returns one result too few once: ``Scheduler.complete`` raises on that batch."""

    broken = True

    def synthesize(self, items: Any) -> Any:
        results = list(super().synthesize(items))
        if self.broken:
            self.broken = False
            return results[:-1]
        return results


async def test_a_failure_while_delivering_a_batch_fails_its_contexts_and_the_scheduler_goes_on() -> None:
    async with run_server(FAST, engine_factory=_MiscountingEngine) as gw:
        url = f"ws://127.0.0.1:{gw.port}/v1/stream"
        async with connect(url) as ws:
            error = await _first_error_after_speaking(ws, "first", "Hit by the bug.")
            assert error["code"] == "engine_failed" and error["context_id"] == "first"
            assert gw.scheduler_alive
            await ws.send(msg(type="text", context_id="second", text="Heard anyway."))
            await ws.send(msg(type="flush", context_id="second", final=True))
            kinds = []
            while "context.done" not in kinds:
                raw = await asyncio.wait_for(ws.recv(), 10)
                kinds.append("frame" if isinstance(raw, bytes) else orjson.loads(raw)["type"])
            assert "frame" in kinds
        assert (await asyncio.to_thread(http_get, gw.port, "/readyz"))[0] == 200
        gw._scheduler_task.cancel()
        await eventually(lambda: not gw.scheduler_alive)
        assert (await asyncio.to_thread(http_get, gw.port, "/readyz"))[0] == 503


async def test_stop_speaks_unflushed_text_sends_context_done_then_closes_1012() -> None:
    async with run_server({"engine.kind": "tiny", "session.max_buffer_ms": 60_000}) as gw:
        url = f"ws://127.0.0.1:{gw.port}/v1/stream"
        async with connect(url) as ws:
            await ws.recv()
            # A sentence and a half without a final flush: the half waits in the segmenter.
            await ws.send(msg(type="text", context_id="c", text="First sentence here. And a half"))
            while not isinstance(await ws.recv(), bytes):
                pass
            stopping = asyncio.create_task(gw.stop(grace_s=20))
            events: list[Any] = []
            with contextlib.suppress(ConnectionClosed):
                async for raw in ws:
                    events.append("frame" if isinstance(raw, bytes) else orjson.loads(raw))
            await stopping
        done = [e for e in events if isinstance(e, dict) and e["type"] == "context.done"]
        assert done and done[0]["context_id"] == "c"
        assert ws.close_code == 1012
        # All the text was spoken: the audio covers the unflushed half too (tiny: ~duration per phoneme).
        assert done[0]["audio_ms"] > 0


async def test_a_slow_consumer_is_closed_once_and_the_server_stays_responsive(caplog: Any) -> None:
    import socket

    overrides = dict(
        FAST,
        **{"session.output_high_water_ms": 500, "session.output_low_water_ms": 250, "session.slow_consumer_timeout_s": 0.5},
    )
    caplog.set_level("INFO", logger="voxgate")
    async with run_server(overrides) as gw:
        url = f"ws://127.0.0.1:{gw.port}/v1/stream"
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", gw.port))
        hog = await connect(url, sock=sock, max_queue=1)
        await hog.recv()
        await hog.send(msg(type="session.update", format="pcm_f32le", sample_rate=48_000))
        await hog.send(msg(type="text", context_id="hog", text="Lots of audio for a client that never reads. " * 40))
        await hog.send(msg(type="flush", context_id="hog", final=True))
        # Before the fix: past the timeout the timer fired on every loop turn (a log line, an error
        # and a close each time) and the server stopped answering.
        await asyncio.sleep(3.0)
        assert (await asyncio.wait_for(asyncio.to_thread(http_get, gw.port, "/healthz"), 10))[0] == 200
        closes = [r for r in caplog.records if "slow_consumer" in r.getMessage()]
        assert len(closes) == 1
        hog.transport.abort()
        await eventually(lambda: not gw._runtimes)


async def test_a_flood_of_binary_frames_gets_a_few_answers_and_a_1008_close(caplog: Any) -> None:
    caplog.set_level("INFO", logger="voxgate")
    async with run_server(dict(FAST, **{"session.max_violations": 200})) as gw:
        url = f"ws://127.0.0.1:{gw.port}/v1/stream"
        async with connect(url) as ws:
            await ws.recv()
            with contextlib.suppress(ConnectionClosed):
                for _ in range(5_000):
                    await ws.send(b"x")
            replies = []
            with contextlib.suppress(ConnectionClosed):
                async for raw in ws:
                    replies.append(orjson.loads(raw)["code"])
        assert ws.close_code == 1008
        assert replies[-1] == "too_many_violations" and len(replies) <= 11
        assert len([r for r in caplog.records if r.name == "voxgate.session"]) <= 15


async def test_text_over_its_g2p_budget_fails_that_context_only() -> None:
    async with run_server(dict(FAST, **{"engine.g2p_budget_s": 1e-9})) as gw:
        url = f"ws://127.0.0.1:{gw.port}/v1/stream"
        async with connect(url) as ws:
            event = await _first_error_after_speaking(ws, "slow", "Any text at all.")
            assert event["code"] == "text_too_slow" and event["context_id"] == "slow"
            await ws.send(msg(type="session.update", speed=1.0))
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "session.updated"  # the session goes on
