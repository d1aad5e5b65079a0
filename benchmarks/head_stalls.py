"""Where a listener's player stalls: whole-mode sentences of ``bench quality`` through a running server.

Written to see why first-piece heads (``engine.stream_heads``) raised ``bench quality``'s playback
stalls: a player that starts with the first audio and plays in real time is simulated, and each
stall is reported as (piece, ms of that piece's audio already played, stall ms). Piece 0 stalling
after some of its audio is the head/rest seam; piece 1 stalling at 0 ms is the second piece late.

    voxgate serve --port 8792 --set engine.stream_heads=true &
    PYTHONPATH=. python benchmarks/head_stalls.py ws://127.0.0.1:8792/v1/stream 12
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from websockets.asyncio.client import connect

from gateway.bench.quality import SENTENCES
from gateway.protocol import decode_audio_frame

RATE = 24_000


async def speak_whole(url: str, text: str, lang: str) -> tuple[float, list[tuple[int, int, int]]]:
    """(seconds to first audio, stalls) for ``text`` sent whole."""
    async with connect(url, max_size=2**24) as ws:
        await ws.send(json.dumps({"type": "session.update", "format": "pcm_f32le", "sample_rate": RATE, "alignment": True, "lang": lang}))
        await ws.recv()
        t0 = time.perf_counter()
        await ws.send(json.dumps({"type": "text", "context_id": "q", "text": text}))
        await ws.send(json.dumps({"type": "flush", "context_id": "q", "final": True}))
        events: list[tuple[float, int]] = []  # (seconds, samples); samples -1: a piece's alignment
        while True:
            raw = await ws.recv()
            at = time.perf_counter() - t0
            if isinstance(raw, bytes):
                _, payload = decode_audio_frame(raw)
                if payload:
                    events.append((at, len(payload) // 4))
                continue
            message = json.loads(raw)
            if message["type"] == "alignment":
                events.append((at, -1))
            elif message["type"] == "context.done":
                break
    played_until: float | None = None
    piece, into_piece, stalls = -1, 0, []
    for at, samples in events:
        if samples < 0:  # the alignment goes out just before its piece's first audio
            piece, into_piece = piece + 1, 0
            continue
        if played_until is None:
            played_until = at
        if at > played_until + 1e-3:
            stalls.append((piece, round(into_piece * 1000 / RATE), round((at - played_until) * 1000)))
            played_until = at
        played_until += samples / RATE
        into_piece += samples
    first = next(at for at, samples in events if samples >= 0)
    return first, stalls


async def main(url: str, count: int) -> None:
    for lang, _, text in SENTENCES[:count]:
        first, stalls = await speak_whole(url, text, lang)
        audible = [s for s in stalls if s[2] > 15]
        print(f"ttfa {first * 1000:5.0f}  stalls (piece, ms of audio into it, stall ms): {audible}  {text[:40]}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10))
