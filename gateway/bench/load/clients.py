"""``voxgate bench load``, the clients: N WebSocket sessions speaking their scripts and timing what
comes back, on one event loop, in a child process (``python -m gateway.bench.load --client-worker``)
or on the caller's loop.

No torch and no server imports here: this module also runs in the child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.bench.load.proc import status_kib
from gateway.bench.load.workload import playback
from gateway.protocol import SAMPLE_RATE

__all__ = ["client_worker", "clients_in_child", "run_clients"]


def _first_piece_trigger(fragments: Sequence[str], offsets: Sequence[float], seg: dict[str, int], max_buffer_s: float) -> tuple[int, float]:
    """Which message lets the server's segmenter cut the first piece: (fragment index, extra delay).

    Index ``len(fragments)`` is the final flush; a positive delay means the session's buffer timer
    (``max_buffer_ms`` without new text) fires that long after fragment ``index``.
    """
    from gateway.text.segmenter import Segmenter

    segmenter = Segmenter(**seg)
    for i, (fragment, offset) in enumerate(zip(fragments, offsets)):
        if i and offset - offsets[i - 1] > max_buffer_s and segmenter.has_pending:
            return i - 1, max_buffer_s
        if segmenter.feed(fragment):
            return i, 0.0
    return len(fragments), 0.0


async def _client_session(index: int, url: str, spec: dict[str, Any], t0: float, deadline: float) -> list[dict[str, Any]]:
    import orjson
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from gateway.protocol import decode_audio_frame

    script = spec["scripts"][index]
    jitter_s = spec["jitter_buffer_ms"] / 1000.0
    bytes_per_sample = 2
    records: list[dict[str, Any]] = []
    contexts: dict[str, dict[str, Any]] = {}
    by_index: dict[int, dict[str, Any]] = {}
    errors: list[str] = []

    async with connect(url, max_size=2**24, compression=None, open_timeout=30, ping_interval=None) as ws:

        async def reader() -> None:
            async for raw in ws:
                now = time.monotonic()
                if isinstance(raw, bytes):
                    header, payload = decode_audio_frame(raw)
                    ctx = by_index[header.context_index]
                    if ctx["first_frame"] is None:
                        ctx["first_frame"] = now
                    ctx["frames"].append((now, header.sample_offset, len(payload) // bytes_per_sample))
                    ctx["pcm"].append(payload)
                    continue
                message = orjson.loads(raw)
                kind = message.get("type")
                if kind == "context.started":
                    ctx = contexts[message["context_id"]]
                    by_index[message["index"]] = ctx
                elif kind == "context.done":
                    ctx = contexts[message["context_id"]]
                    ctx["done_at"] = now
                    ctx["done"].set()
                elif kind == "error":
                    errors.append(str(message.get("code")))
                    cid = message.get("context_id")
                    if message.get("code") == "engine_failed" and cid in contexts:
                        contexts[cid]["failed"] = True

        await ws.recv()  # session.created
        await ws.send(orjson.dumps({"type": "session.update", "format": "pcm_s16le", "sample_rate": SAMPLE_RATE, "frame_ms": spec["frame_ms"]}).decode())
        read_task = asyncio.create_task(reader())
        try:
            await asyncio.sleep(max(0.0, t0 + script["start"] - time.monotonic()))
            for number, turn in enumerate(script["turns"]):
                cid = f"s{index}t{number}"
                ctx = contexts[cid] = {
                    "frames": [],
                    "pcm": [],
                    "first_frame": None,
                    "done_at": None,
                    "done": asyncio.Event(),
                    "failed": False,
                    "first_text": time.monotonic(),
                }
                trigger, trigger_delay = _first_piece_trigger(turn["fragments"], turn["offsets"], spec["segmenter"], spec["max_buffer_s"])
                turn_start = time.monotonic()
                for i, (fragment, offset) in enumerate(zip(turn["fragments"], turn["offsets"])):
                    delay = turn_start + offset - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    sent_at = time.monotonic()
                    await ws.send(orjson.dumps({"type": "text", "context_id": cid, "text": fragment}).decode())
                    if i == 0:
                        ctx["first_text"] = sent_at
                    if i == trigger:
                        ctx["speakable"] = sent_at + trigger_delay
                ctx.setdefault("speakable", time.monotonic())
                await ws.send(orjson.dumps({"type": "flush", "context_id": cid, "final": True}).decode())
                await ctx["done"].wait()
                if number + 1 < len(script["turns"]):
                    played = playback(ctx["frames"], jitter_s=jitter_s)
                    await asyncio.sleep(max(0.0, played["end"] - time.monotonic()) + turn["think"])
        except (asyncio.CancelledError, ConnectionClosed):
            pass
        finally:
            read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await read_task
    for cid, ctx in contexts.items():
        complete = ctx["done_at"] is not None
        played = playback(ctx["frames"], jitter_s=jitter_s, complete=complete, until=None if complete else deadline)
        first = ctx["first_frame"]
        records.append(
            {
                "session": index,
                "context": cid,
                "first_text": ctx["first_text"],
                "ttfa_s": None if first is None else first - ctx["first_text"],
                "ttfa_piece_s": None if first is None or "speakable" not in ctx else max(0.0, first - ctx["speakable"]),
                "complete": complete and not ctx["failed"],
                "last_frame": ctx["frames"][-1][0] if ctx["frames"] else None,
                "audio_s": played["audio_s"],
                "underruns": played["underruns"],
                "underrun_s": played["underrun_s"],
                "longest_pause_ms": _longest_pause_ms(ctx["pcm"]),
            }
        )
    if errors:
        records.append({"session": index, "errors": errors})
    return records


def _longest_pause_ms(pcm: list[bytes]) -> float:
    """Longest silence inside a turn's audio (``bench quality``'s measure: 20 ms frames under -45 dBFS)."""
    from gateway.bench.quality import longest_inner_silence_ms
    from gateway.pcm import from_pcm16

    return longest_inner_silence_ms(from_pcm16(b"".join(pcm)), SAMPLE_RATE)


async def run_clients(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``len(spec["scripts"])`` sessions against ``spec["url"]``; returns their records.

    Stops at ``spec["max_seconds"]`` after the common start (then ``truncated`` is true).
    """
    # Room for every session's handshake before the first script starts.
    t0 = time.monotonic() + 0.3 + 0.01 * len(spec["scripts"])
    deadline = t0 + spec["max_seconds"]
    tasks = [
        asyncio.create_task(_client_session(i, spec["url"], spec, t0, deadline)) for i in range(len(spec["scripts"]))
    ]
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
    for task in pending:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    records: list[dict[str, Any]] = []
    failures: list[str] = []
    for result in results:
        if isinstance(result, BaseException):
            failures.append(f"{type(result).__name__}: {result}")
        else:
            records.extend(result)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "t0": t0,
        "truncated": bool(pending),
        "records": records,
        "client_failures": failures,
        "client_cpu_s": usage.ru_utime + usage.ru_stime,
        "client_peak_rss_mib": status_kib("VmHWM") / 1024,
    }


def client_worker() -> int:
    """Child-process entry: the spec as JSON on stdin, the result as JSON on stdout."""
    spec = json.loads(sys.stdin.read())
    try:
        import uvloop

        result = uvloop.run(run_clients(spec))
    except ImportError:
        result = asyncio.run(run_clients(spec))
    sys.stdout.write(json.dumps(result))
    return 0


async def clients_in_child(spec: dict[str, Any]) -> dict[str, Any]:
    root = str(Path(__file__).resolve().parents[3])  # the checkout holding gateway/
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("LD_PRELOAD", None)  # the allocator is the server's business
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.bench.load", "--client-worker",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await proc.communicate(json.dumps(spec).encode())
    if proc.returncode != 0:
        raise RuntimeError(f"client process failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    return json.loads(out)
