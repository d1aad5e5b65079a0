"""``voxgate bench soak``: bounded mixed load against a server subprocess; RSS over time and errors.

The server runs as its own process (``python -m gateway serve``) so its memory is measured alone.
Client loops come and go: they open sessions, stream text in fragments, cancel, send bad input,
vanish without a close frame. After warm-up the server's RSS must stay flat.

    voxgate bench soak --duration 600 --engine tiny --clients 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import connect

from gateway.bench.machine import describe_machine
from gateway.config import REPO_ROOT
from gateway.protocol import STREAM_PATH, decode_audio_frame

__all__ = ["main", "SoakReport", "run_soak"]

SENTENCES = [
    "The weather is lovely today.",
    "Please hold on while I check that for you.",
    "Thank you for waiting, here is the answer.",
    "A quick brown fox jumps over the lazy dog.",
    "We will be right back after this short break.",
    "Numbers such as forty two are spoken too.",
]
BAD_INPUTS = ["{nope", '{"type":"dance"}', '{"type":"text","context_id":"c","text":5}', '{"type":"flush","context_id":"ghost"}']


@dataclass
class SoakReport:
    duration_s: float
    engine: str
    clients: int
    sessions: int = 0
    contexts_done: int = 0
    contexts_cancelled: int = 0
    abrupt_disconnects: int = 0
    bad_inputs_answered: int = 0
    audio_s: float = 0.0
    #: Unexpected problems: seq gaps, missing answers, connection failures, server exit.
    errors: list[str] = field(default_factory=list)
    #: Largest event-loop lag the server saw (from its /metrics), seconds.
    max_loop_lag_s: float = 0.0
    #: (seconds since start, server RSS MiB)
    rss_mib: list[tuple[float, float]] = field(default_factory=list)
    warmup_rss_mib: float = 0.0
    final_rss_mib: float = 0.0
    rss_growth_pct: float = 0.0
    rss_flat: bool = False
    machine: str = ""

    def summary(self) -> str:
        return (
            f"soak {self.duration_s:.0f} s, engine {self.engine}, {self.clients} client loops: "
            f"{self.sessions} sessions, {self.contexts_done} contexts done, {self.contexts_cancelled} cancelled, "
            f"{self.abrupt_disconnects} abrupt disconnects, {self.bad_inputs_answered} bad inputs answered, "
            f"{self.audio_s:.1f} s audio; max event-loop lag {self.max_loop_lag_s:.3f} s; RSS after warm-up {self.warmup_rss_mib:.0f} MiB -> end {self.final_rss_mib:.0f} MiB "
            f"({self.rss_growth_pct:+.1f} %, {'flat' if self.rss_flat else 'GROWING'}); errors: {len(self.errors)}"
        )


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0




async def _client_loop(url: str, rng: random.Random, deadline: float, report: SoakReport) -> None:
    while time.monotonic() < deadline:
        try:
            await _one_session(url, rng, report)
        except Exception as exc:  # noqa: BLE001 - every failure is a finding to report
            report.errors.append(f"session failed: {type(exc).__name__}: {exc}")
        await asyncio.sleep(rng.uniform(0.0, 0.3))


async def _one_session(url: str, rng: random.Random, report: SoakReport) -> None:
    report.sessions += 1
    # A generous opening timeout: on a loaded 2-core machine the handshake can wait behind synthesis.
    async with connect(url, max_size=2**24, open_timeout=60) as ws:
        await ws.recv()
        seqs: list[int] = []
        for index in range(rng.randint(1, 3)):
            cid = f"c{index}"
            text = " ".join(rng.sample(SENTENCES, rng.randint(1, 3)))
            action = rng.choices(["speak", "cancel", "bad", "vanish"], weights=[6, 2, 1, 1])[0]
            if action == "bad":
                await ws.send(rng.choice(BAD_INPUTS))
                reply = await _next_json(ws, seqs)
                while reply.get("type") == "cancelled":  # a late answer to an earlier cancel that raced its context's end
                    reply = await _next_json(ws, seqs)
                if reply.get("type") != "error":
                    report.errors.append(f"bad input not answered with an error: {reply}")
                else:
                    report.bad_inputs_answered += 1
            words = text.split(" ")
            for i in range(0, len(words), 2):
                await ws.send(orjson.dumps({"type": "text", "context_id": cid, "text": " ".join(words[i : i + 2]) + " "}).decode())
            await ws.send(orjson.dumps({"type": "flush", "context_id": cid, "final": True}).decode())
            if action == "vanish":
                await asyncio.sleep(rng.uniform(0.0, 0.5))
                ws.transport.abort()
                report.abrupt_disconnects += 1
                return
            if action == "cancel":
                await asyncio.sleep(rng.uniform(0.0, 0.3))
                await ws.send(orjson.dumps({"type": "cancel", "context_id": cid}).decode())
            while True:
                event = await _next_json(ws, seqs)
                if event.get("type") == "context.done" and event.get("context_id") == cid:
                    report.contexts_done += 1
                    report.audio_s += event["audio_ms"] / 1000
                    break
                if event.get("type") == "cancelled" and event.get("context_id") == cid:
                    report.contexts_cancelled += 1
                    break
                if event.get("type") == "error":
                    report.errors.append(f"unexpected error: {event}")
                    break
        if seqs != list(range(len(seqs))):
            report.errors.append("seq gap in a session")


async def _next_json(ws: object, seqs: list[int]) -> dict:
    async with asyncio.timeout(120):
        while True:
            raw = await ws.recv()  # type: ignore[attr-defined]
            if isinstance(raw, bytes):
                seqs.append(decode_audio_frame(raw)[0].seq)
            else:
                return orjson.loads(raw)


def run_soak(*, duration_s: float, engine: str, clients: int, seed: int = 0, warmup_fraction: float = 0.25) -> SoakReport:
    """Start a server subprocess, run the client loops for ``duration_s``, sample its RSS."""
    report = SoakReport(duration_s=duration_s, engine=engine, clients=clients, machine=describe_machine())
    env = dict(os.environ, VOXGATE_SERVER_PORT="0", VOXGATE_ENGINE_KIND=engine, VOXGATE_SESSION_MAX_MESSAGES_PER_S="0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(REPO_ROOT / "configs" / ("test.toml" if engine != "kokoro" else "default.toml")), "--set", f"engine.kind={engine}", "--set", "server.port=0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        port = _wait_for_port(proc)
        url = f"ws://127.0.0.1:{port}{STREAM_PATH}"
        start = time.monotonic()

        async def sampler(deadline: float) -> None:
            while time.monotonic() < deadline:
                report.rss_mib.append((round(time.monotonic() - start, 1), round(_rss_mib(proc.pid), 1)))
                await asyncio.sleep(max(0.5, duration_s / 120))

        async def main() -> None:
            deadline = start + duration_s
            rngs = [random.Random(seed * 1000 + i) for i in range(clients)]
            await asyncio.gather(sampler(deadline), *(_client_loop(url, rng, deadline, report) for rng in rngs))

        asyncio.run(main())
        report.max_loop_lag_s = _max_loop_lag(port)
        if proc.poll() is not None:
            report.errors.append(f"server exited with {proc.returncode}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    _judge_rss(report, warmup_fraction)
    return report


def _max_loop_lag(port: int) -> float:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("voxgate_event_loop_lag_max_seconds "):
                    return float(line.split()[1])
    except OSError:
        pass
    return -1.0


def _wait_for_port(proc: subprocess.Popen[str]) -> int:
    """Read the server's output until it says where it listens, then keep draining it on a thread:
    a full pipe would block the server's logging, and with it its event loop."""
    assert proc.stdout is not None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        if "voxgate: ws://" in line:
            threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
            return int(line.split("ws://")[1].split("/")[0].rsplit(":", 1)[1])
    raise RuntimeError("server did not start within 300 s")


def _drain(stream: Any) -> None:
    for _ in stream:
        pass


def _judge_rss(report: SoakReport, warmup_fraction: float) -> None:
    """Flat: the median RSS of the last quarter is within 10 % (and 40 MiB) of the median just after
    warm-up. Allocators keep freed memory, so steady state is a plateau, not a return to the start."""
    after = [rss for t, rss in report.rss_mib if t >= report.duration_s * warmup_fraction]
    if len(after) < 4:
        report.errors.append("too few RSS samples")
        return
    quarter = max(1, len(after) // 4)
    report.warmup_rss_mib = statistics.median(after[:quarter])
    report.final_rss_mib = statistics.median(after[-quarter:])
    growth = report.final_rss_mib - report.warmup_rss_mib
    report.rss_growth_pct = 100 * growth / max(report.warmup_rss_mib, 1)
    report.rss_flat = growth <= max(40.0, 0.10 * report.warmup_rss_mib)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voxgate bench soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (10-30 minutes for a real soak)")
    parser.add_argument("--engine", default="tiny", choices=["kokoro", "tiny", "fake"])
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    report = run_soak(duration_s=args.duration, engine=args.engine, clients=args.clients, seed=args.seed)
    print(report.summary())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out / f"soak-{args.engine}-{int(args.duration)}s-{stamp}.json"
    path.write_text(json.dumps(asdict(report), indent=1))
    print(f"written {path}")
    return 0 if report.rss_flat and not report.errors else 1
