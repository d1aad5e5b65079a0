"""``voxgate bench codecs``: CPU cost of each output encoder, per second of speech.

The OpenAI endpoint and the vendor adapters encode on the event loop (one encoder per context, as
gateway/codecs.py explains), so an encoder's cost per chunk is time the loop is not serving others.
This measures it: a 24 kHz speech-like signal (a gliding harmonic tone with pauses) pushed in 100 ms
chunks, as the HTTP endpoint does, plus protocol v1 frames of 20 ms for opus and mp3. Writes a
Markdown table to ``benchmarks/results/codecs-<host>.md`` naming the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gateway.bench.machine import describe_machine
from gateway.codecs import HTTP_FORMATS, PACKET_FORMATS, PacketEncoder, StreamEncoder
from gateway.config import REPO_ROOT
from gateway.protocol import SAMPLE_RATE

__all__ = ["main", "measure"]

RATE = SAMPLE_RATE


def _signal(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    gate = (np.sin(2 * np.pi * 0.9 * t) > -0.6).astype(np.float64)
    return (0.2 * voice * gate).astype(np.float32)


def measure(seconds: float = 10.0, repeats: int = 3) -> list[dict[str, object]]:
    """One row per format: median ms of CPU per second of audio, and the worst single chunk."""
    audio = _signal(seconds)
    rows: list[dict[str, object]] = []
    for name in HTTP_FORMATS:
        chunk = RATE // 10
        totals, worst = [], 0.0
        for _ in range(repeats):
            encoder = StreamEncoder(name, sample_rate=RATE)
            total = 0.0
            for i in range(0, len(audio), chunk):
                t0 = time.perf_counter()
                encoder.push(audio[i : i + chunk])
                dt = time.perf_counter() - t0
                total, worst = total + dt, max(worst, dt)
            t0 = time.perf_counter()
            encoder.finish()
            totals.append(total + time.perf_counter() - t0)
        rows.append({"path": f"HTTP {name}, 100 ms chunks", "ms_per_s": 1000 * statistics.median(totals) / seconds, "worst_chunk_ms": 1000 * worst})
    for name in PACKET_FORMATS:
        frame = RATE // 50
        totals, worst = [], 0.0
        for _ in range(repeats):
            packets = PacketEncoder(name, sample_rate=RATE, frame_ms=20)
            total = 0.0
            for i in range(0, len(audio) - frame + 1, frame):
                t0 = time.perf_counter()
                packets.encode(audio[i : i + frame])
                dt = time.perf_counter() - t0
                total, worst = total + dt, max(worst, dt)
            packets.finish(audio[:0])
            totals.append(total)
        rows.append({"path": f"protocol v1 {name}, 20 ms frames", "ms_per_s": 1000 * statistics.median(totals) / seconds, "worst_chunk_ms": 1000 * worst})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voxgate bench codecs", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = measure(args.seconds)
    import socket

    out = args.out or REPO_ROOT / "benchmarks" / "results" / f"codecs-{socket.gethostname()}.md"
    lines = [
        "# Encoder cost per second of speech (voxgate bench codecs)",
        "",
        f"Machine: {describe_machine()}",
        "",
        f"{args.seconds:g} s of a 24 kHz speech-like signal, median of 3 runs, one thread.",
        "",
        "| path | CPU ms per s of audio | worst chunk (ms) |",
        "|---|---|---|",
        *(f"| {r['path']} | {r['ms_per_s']:.2f} | {r['worst_chunk_ms']:.2f} |" for r in rows),
        "",
    ]
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
