"""``voxgate bench attack``: the attacks of issue 11 against a tiny-engine server, bounded, loopback only.

Starts ``python -m gateway serve`` (tiny engine, 127.0.0.1, an ephemeral port) as its own process,
then runs each scenario for a few seconds while a well-behaved client measures its time to first
audio. Per scenario it reports: server alive afterwards (``/healthz`` answered), the other client's
time to first audio before and during the attack, server RSS before and after, log lines written,
and what the attacker saw (status codes, close codes). Everything stops by itself (a few minutes).

    voxgate bench attack                      # all scenarios
    voxgate bench attack --only binary_flood  # one (repeatable)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import connect

from gateway.bench.machine import describe_machine
from gateway.bench.soak import _rss_mib
from gateway.config import REPO_ROOT
from gateway.protocol import STREAM_PATH

__all__ = ["main", "ScenarioResult", "SCENARIOS"]

HOST = "127.0.0.1"
#: Server settings for the run: a short slow-consumer timeout so that its close happens in-scenario.
SERVER_SETTINGS = ("engine.kind=tiny", "server.port=0", "server.host=127.0.0.1", "session.slow_consumer_timeout_s=3")
PROBE_TEXT = "Hello there, how are you today?"


@dataclass
class ScenarioResult:
    name: str
    alive: bool = False
    ttfa_before_s: float | None = None
    ttfa_during_s: float | None = None
    rss_before_mib: float = 0.0
    rss_after_mib: float = 0.0
    log_lines: int = 0
    seconds: float = 0.0
    #: What the attacker observed (status codes, close codes, counts).
    observed: dict[str, Any] = field(default_factory=dict)


class _Server:
    """The server subprocess; its output is drained on a thread and its lines counted."""

    def __init__(self, extra: Sequence[str]) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        args = [sys.executable, "-m", "gateway", "serve", "--config", str(REPO_ROOT / "configs" / "test.toml")]
        for setting in (*SERVER_SETTINGS, *extra):
            args += ["--set", setting]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, cwd=REPO_ROOT)
        self.lines = 0
        self.port = self._wait_for_port()

    def _wait_for_port(self) -> int:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} before listening")
            if "voxgate: ws://" in line:
                threading.Thread(target=self._count, daemon=True).start()
                return int(line.split("ws://")[1].split("/")[0].rsplit(":", 1)[1])
        raise RuntimeError("server did not start within 300 s")

    def _count(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            self.lines += 1

    @property
    def rss_mib(self) -> float:
        return round(_rss_mib(self.proc.pid), 1) if self.proc.poll() is None else 0.0

    def stop(self) -> float:
        """SIGTERM, then seconds until exit (SIGKILL after 30 s)."""
        started = time.monotonic()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return round(time.monotonic() - started, 2)


# --- the well-behaved client and the health check ---------------------------------------------


async def ttfa(port: int, timeout: float = 20.0) -> float | None:
    """Seconds from sending a sentence to its first audio frame; None when it did not come."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            async with connect(f"ws://{HOST}:{port}{STREAM_PATH}", open_timeout=timeout) as ws:
                await ws.recv()
                started = time.monotonic()
                await ws.send(orjson.dumps({"type": "text", "context_id": "p", "text": PROBE_TEXT}).decode())
                await ws.send(orjson.dumps({"type": "flush", "context_id": "p", "final": True}).decode())
                while not isinstance(await ws.recv(), bytes):
                    pass
                seconds = round(time.monotonic() - started, 3)
                # Read to the end before closing: a client with unread frames queued stops reading
                # and would wait its whole close timeout for the server's close frame.
                await ws.send(orjson.dumps({"type": "cancel", "context_id": "p"}).decode())
                while isinstance(raw := await ws.recv(), bytes) or orjson.loads(raw)["type"] not in ("cancelled", "context.done"):
                    pass
                return seconds
    except Exception as exc:  # noqa: BLE001 - no audio is the finding
        print(f"probe failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


async def raw_http(port: int, data: bytes, *, timeout: float = 3.0) -> str:
    """Send raw bytes; the status line answered, or what happened instead."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    except (OSError, TimeoutError) as exc:
        return f"connect failed: {type(exc).__name__}"
    try:
        writer.write(data)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        return line.decode("latin-1").strip() or "closed without an answer"
    except TimeoutError:
        return "no answer (timeout)"
    except OSError as exc:
        return f"{type(exc).__name__}"
    finally:
        writer.close()


async def healthy(port: int) -> bool:
    status = await raw_http(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=5.0)
    return " 200 " in status + " "


# --- scenarios: each runs until ``stop`` is set and returns what it observed -------------------


def _msg(**fields: Any) -> str:
    return orjson.dumps(fields).decode()


async def _non_reading_ws(port: int) -> Any:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((HOST, port))
    sock.setblocking(False)
    return await connect(f"ws://{HOST}:{port}{STREAM_PATH}", sock=sock, max_queue=1, open_timeout=20)


async def never_reading_ws(port: int, stop: asyncio.Event) -> dict[str, Any]:
    ws = await _non_reading_ws(port)
    await ws.recv()
    await ws.send(_msg(type="session.update", format="pcm_f32le", sample_rate=48_000))
    for _ in range(10):
        await ws.send(_msg(type="text", context_id="hog", text="Audio for a client that never reads. " * 50))
    await ws.send(_msg(type="flush", context_id="hog", final=True))
    await stop.wait()
    ws.transport.abort()
    return {"close_code": ws.close_code}


SLOW_TEXTS = {
    "a-a-a": "a-" * 200,
    "a/a/": "a/" * 200,
    "1-2-3": "-".join(str(i % 10) for i in range(200)),
    "a_a": "a_" * 200,
    "a+a": "a+" * 200,
    "url": "https://example.com/" + "/".join(f"p{i}?q={i}&r=s" for i in range(60)),
    "combining": "a" + "\u0301" * 3000,
}


#: The control for slow_g2p_text: ordinary prose of a similar amount of speech, in as many contexts.
PLAIN_TEXTS = {f"plain{i}": "The weather is lovely today, and we will walk along the river. " * 8 for i in range(len(SLOW_TEXTS))}


async def slow_g2p_text(port: int, stop: asyncio.Event) -> dict[str, Any]:
    """One session sends every slow-to-phonemize text, each as its own context (as in the issue: one
    client, within its own rate limits)."""
    return await _speak_contexts(port, stop, SLOW_TEXTS)


async def long_plain_text_control(port: int, stop: asyncio.Event) -> dict[str, Any]:
    """Not an attack: what the same amount of ordinary speech costs the others (engine time alone)."""
    return await _speak_contexts(port, stop, PLAIN_TEXTS)


async def _speak_contexts(port: int, stop: asyncio.Event, texts: dict[str, str]) -> dict[str, Any]:
    answers: dict[str, str] = {}
    async with connect(f"ws://{HOST}:{port}{STREAM_PATH}", max_size=2**24, open_timeout=20) as ws:
        await ws.recv()
        for name, text in texts.items():
            await ws.send(_msg(type="text", context_id=name, text=text[:4000]))
            await ws.send(_msg(type="flush", context_id=name, final=True))
            answers[name] = "pending"
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), 1.0)
            except TimeoutError:
                continue
            if isinstance(raw, bytes):
                continue
            event = orjson.loads(raw)
            if event["type"] in ("context.done", "error") and event.get("context_id") in answers:
                answers[event["context_id"]] = event.get("code", event["type"])
        ws.transport.abort()  # gone mid-speech: its queued work must be dropped
    return answers


async def _flood(port: int, stop: asyncio.Event, frame: str | bytes, limit: int) -> dict[str, Any]:
    ws = await _non_reading_ws(port)
    sent = 0
    try:
        while sent < limit and not stop.is_set():
            await asyncio.wait_for(ws.send(frame), 5)
            sent += 1
            if sent % 1_000 == 0:
                await asyncio.sleep(0)
    except Exception:  # noqa: BLE001 - the server closing on us is the expected end
        pass
    await stop.wait()
    code = ws.close_code
    ws.transport.abort()
    return {"sent": sent, "close_code": code}


async def binary_flood(port: int, stop: asyncio.Event) -> dict[str, Any]:
    return await _flood(port, stop, b"x", 200_000)


async def error_flood(port: int, stop: asyncio.Event) -> dict[str, Any]:
    return await _flood(port, stop, '{"type":"dance"}', 200_000)


async def big_replay(port: int, stop: asyncio.Event) -> dict[str, Any]:
    """Sessions with 1 s pcm_f32le 48 kHz frames fill their replay buffers, then vanish (detached)."""
    kept = 0
    for index in range(4):
        if stop.is_set():
            break
        async with asyncio.timeout(30):
            ws = await connect(f"ws://{HOST}:{port}{STREAM_PATH}", max_size=2**24, open_timeout=20)
            await ws.recv()
            await ws.send(_msg(type="session.update", format="pcm_f32le", sample_rate=48_000, frame_ms=1000))
            await ws.send(_msg(type="text", context_id=f"r{index}", text="Long speech for the replay buffer. " * 12))
            await ws.send(_msg(type="flush", context_id=f"r{index}", final=True))
            while True:
                raw = await ws.recv()
                if isinstance(raw, str) and orjson.loads(raw)["type"] in ("context.done", "error"):
                    break
            ws.transport.abort()
            kept += 1
    await stop.wait()
    return {"detached_sessions": kept}


async def idle_half_open(port: int, stop: asyncio.Event) -> dict[str, Any]:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    count = max(0, min(1_100, hard - 200))
    if soft < count + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 200), hard))
    writers = []
    for _ in range(count):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 2)
            writers.append(writer)
        except (OSError, TimeoutError):
            break
    await stop.wait()
    for writer in writers:
        writer.transport.abort()
    return {"sockets": len(writers)}


async def slowloris(port: int, stop: asyncio.Event) -> dict[str, Any]:
    writers = []
    for _ in range(50):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 2)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
            writers.append(writer)
        except (OSError, TimeoutError):
            break
    sent = 0
    while not stop.is_set():
        for writer in writers:
            if not writer.is_closing():
                writer.write(b"X-a: b\r\n")
                sent += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    alive = sum(1 for w in writers if not w.is_closing())
    for writer in writers:
        writer.transport.abort()
    # A bare-LF head and a body shorter than its Content-Length must not hang either.
    bare_lf = await raw_http(port, b"GET /healthz HTTP/1.1\nHost: x\n\n")
    short_body = await raw_http(port, b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}")
    return {"connections": len(writers), "header_lines_sent": sent, "bare_lf": bare_lf, "short_body": short_body}


def _speech(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


HTTP_PROBES: dict[str, bytes] = {
    "long_segment": b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "newline_in_path": b"GET /" + b"a" * 300 + b"%0aFORGED%20log%20line HTTP/1.1\r\nHost: x\r\n\r\n",
    "format_dict": _speech(b'{"input":"hi","voice":"x","response_format":{"a":1}}'),
    "format_list": _speech(b'{"input":"hi","response_format":["wav"]}'),
    "overflowing_number": _speech(b'{"input":"hi","speed":1e999}'),
    "two_content_lengths": b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "plus_content_length": b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n\r\n{}",
    "underscore_content_length": b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Length: 1_4\r\n\r\n{}",
    "http_9_9": b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
    "space_before_colon": b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n",
    "head_over_16k": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    "ws_duplicate_origin": (
        b"GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Origin: http://evil\r\nOrigin: http://good\r\n\r\n"
    ),
    "ws_duplicate_authorization": (
        b"GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Authorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n"
    ),
}


async def http_probes(port: int, stop: asyncio.Event) -> dict[str, Any]:
    answers = {name: await raw_http(port, data) for name, data in HTTP_PROBES.items()}
    answers["num_5xx"] = sum(1 for v in answers.values() if " 5" in v[8:12])
    await stop.wait()
    return answers


async def non_reading_speech_client(port: int, stop: asyncio.Event) -> dict[str, Any]:
    """POST /v1/audio/speech for a long text, then never read the answer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
    body = orjson.dumps({"input": "A long answer nobody reads. " * 100, "response_format": "pcm"})
    sock.send(_speech(body))
    await stop.wait()
    sock.close()
    return {}


SCENARIOS: dict[str, Callable[[int, asyncio.Event], Awaitable[dict[str, Any]]]] = {
    "never_reading_ws": never_reading_ws,
    "slow_g2p_text": slow_g2p_text,
    "long_plain_text_control": long_plain_text_control,
    "binary_flood": binary_flood,
    "error_flood": error_flood,
    "big_replay": big_replay,
    "idle_half_open": idle_half_open,
    "slowloris_partial_heads": slowloris,
    "http_500_and_duplicate_headers": http_probes,
    "non_reading_speech_client": non_reading_speech_client,
}


async def run_scenario(server: _Server, name: str, seconds: float) -> ScenarioResult:
    result = ScenarioResult(name=name)
    port = server.port
    probes = [t for t in [await ttfa(port), await ttfa(port)] if t is not None]
    result.ttfa_before_s = round(statistics.median(probes), 3) if probes else None
    result.rss_before_mib = server.rss_mib
    lines_before = server.lines
    stop = asyncio.Event()
    started = time.monotonic()
    attack = asyncio.create_task(SCENARIOS[name](port, stop))
    await asyncio.sleep(min(2.0, seconds / 3))
    result.ttfa_during_s = await ttfa(port, timeout=max(5.0, seconds))
    remaining = seconds - (time.monotonic() - started)
    if remaining > 0:
        await asyncio.sleep(remaining)
    stop.set()
    try:
        result.observed = await asyncio.wait_for(attack, 30)
    except Exception as exc:  # noqa: BLE001 - a failed attack is reported, not fatal
        result.observed = {"attack_error": f"{type(exc).__name__}: {exc}"}
    await asyncio.sleep(1.0)
    result.alive = server.proc.poll() is None and await healthy(port)
    result.rss_after_mib = server.rss_mib
    result.log_lines = server.lines - lines_before
    result.seconds = round(time.monotonic() - started, 1)
    return result


def _table(results: list[ScenarioResult]) -> str:
    rows = ["| scenario | alive | TTFA before (s) | TTFA during (s) | RSS before -> after (MiB) | log lines | observed |", "|---|---|---|---|---|---|---|"]
    for r in results:
        observed = json.dumps(r.observed, ensure_ascii=True)
        observed = observed if len(observed) < 400 else observed[:400] + "..."
        rows.append(
            f"| {r.name} | {'yes' if r.alive else 'NO'} | {r.ttfa_before_s} | {r.ttfa_during_s} | "
            f"{r.rss_before_mib:.0f} -> {r.rss_after_mib:.0f} | {r.log_lines} | {observed.replace('|', '/')} |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voxgate bench attack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run only this scenario (repeatable)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each scenario")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="extra server setting")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    names = args.only or list(SCENARIOS)
    server = _Server(args.set)
    results: list[ScenarioResult] = []
    try:
        for name in names:
            result = asyncio.run(run_scenario(server, name, args.seconds))
            print(f"{name}: alive={result.alive} ttfa {result.ttfa_before_s} -> {result.ttfa_during_s} s, "
                  f"RSS {result.rss_before_mib:.0f} -> {result.rss_after_mib:.0f} MiB, {result.log_lines} log lines", flush=True)
            results.append(result)
            if server.proc.poll() is not None:
                break
    finally:
        exit_s = server.stop()
    print(f"server exited {exit_s} s after SIGTERM")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = {"machine": describe_machine(), "server_settings": [*SERVER_SETTINGS, *args.set], "sigterm_exit_s": exit_s, "scenarios": [asdict(r) for r in results]}
    (out / f"attack-tiny-{stamp}.json").write_text(json.dumps(report, indent=1))
    md = f"# voxgate bench attack ({stamp})\n\nMachine: {report['machine']}\n\nServer exited {exit_s} s after SIGTERM.\n\n{_table(results)}\n"
    (out / f"attack-tiny-{stamp}.md").write_text(md)
    print(f"written {out / f'attack-tiny-{stamp}.md'}")
    return 0 if all(r.alive for r in results) else 1
