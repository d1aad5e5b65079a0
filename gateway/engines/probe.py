"""The batch-size probe: which batch size gives the most audio per second on this device.

Batching pays only where the device has idle parallelism at batch 1: on a GPU, yes; on a small
CPU, no (measured on 2 cores: B=1 fastest, B=8 no better, mixed lengths far worse). So the answer
is measured, not assumed: ``probe_batch_sizes`` runs equal-length batches of each size through the
engine and reports audio-seconds per wall-second. The engine's warmup uses it on GPU; the
``voxgate bench engine`` command prints its table.

What it is not: a scheduler policy. It measures equal lengths only; bucketing mixed lengths is the
scheduler's job.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.engines.base import Engine, SynthesisItem

__all__ = [
    "DEFAULT_SAMPLE_PHONEMES",
    "MemoryProbe",
    "ProbeResult",
    "ProbeRow",
    "default_sizes",
    "probe_batch_sizes",
]

#: An English sentence in Kokoro's phoneme alphabet (~100 characters), repeated or cut to length.
DEFAULT_SAMPLE_PHONEMES = (
    "ðə kwˈɪk bɹˈaʊn fˈɑks dʒˈʌmps ˌoʊvɚ ðə lˈeɪzi dˈɑɡ, ænd ðˈɛn ɪt ɹˈʌnz ɐwˈeɪ ɪntʊ ðə dˈiːp ɡɹˈiːn fˈɔɹɪst. "
)


class MemoryProbe(Protocol):
    """Peak-memory measurement around one batch size: ``reset()`` before, ``peak()`` after."""

    def reset(self) -> None: ...

    def peak(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class ProbeRow:
    """One batch size's measurement, summed over its timed runs (the warm-up run excluded)."""

    batch_size: int
    runs: int
    audio_seconds: float
    wall_seconds: float
    peak_memory_bytes: int | None = None

    @property
    def throughput(self) -> float:
        """Audio-seconds produced per wall-second (higher is better)."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def rtf(self) -> float:
        """Real-time factor: wall-seconds per audio-second (lower is better)."""
        return self.wall_seconds / self.audio_seconds if self.audio_seconds > 0 else float("inf")

    @property
    def seconds_per_batch(self) -> float:
        return self.wall_seconds / self.runs if self.runs else 0.0


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The probe's table and its answer: the best batch size (ties, within ``tie_tolerance``, go to
    the smaller size: same throughput at lower latency)."""

    rows: tuple[ProbeRow, ...]
    best_batch_size: int
    num_phonemes: int
    tie_tolerance: float
    skipped: tuple[int, ...] = field(default=())

    def table(self) -> str:
        """A Markdown table: batch, audio-s/s, RTF, s/batch, runs, peak memory (when measured)."""
        lines = [
            "| batch | audio-s/s | RTF | s/batch | runs | peak MiB |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for row in self.rows:
            mem = f"{row.peak_memory_bytes / 2**20:.0f}" if row.peak_memory_bytes is not None else "-"
            best = " **best**" if row.batch_size == self.best_batch_size else ""
            lines.append(
                f"| {row.batch_size}{best} | {row.throughput:.2f} | {row.rtf:.3f} | "
                f"{row.seconds_per_batch:.2f} | {row.runs} | {mem} |"
            )
        if self.skipped:
            lines.append(f"\nskipped (over the time budget): {', '.join(map(str, self.skipped))}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return f"{self.table()}\n\nbest batch size: {self.best_batch_size} ({self.num_phonemes} phonemes per item)"


def default_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two up to ``max_batch_size``, plus ``max_batch_size`` itself."""
    sizes = [1]
    while sizes[-1] * 2 <= max_batch_size:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != max_batch_size:
        sizes.append(max_batch_size)
    return tuple(sizes)


def _phonemes_of_length(sample: str, length: int) -> str:
    if not sample:
        raise ValueError("sample_phonemes is empty")
    repeats = -(-length // len(sample))
    return (sample * repeats)[:length]


def probe_batch_sizes(
    engine: Engine,
    sizes: Sequence[int] = (1, 2, 4, 8),
    *,
    seconds_budget: float = 30.0,
    sample_phonemes: str = DEFAULT_SAMPLE_PHONEMES,
    num_phonemes: int = 100,
    voice: str | None = None,
    min_runs: int = 1,
    tie_tolerance: float = 0.05,
    memory_probe: MemoryProbe | None = None,
) -> ProbeResult:
    """Measure audio-seconds per second for each batch size in ``sizes`` on ``engine``'s device.

    Every item of a batch has the same ``num_phonemes`` phonemes (cut from ``sample_phonemes``)
    and its own seed. Each size gets one untimed warm-up batch (where ``memory_probe``, if given,
    is ``reset()`` before and read with ``peak()`` after), then timed batches go round-robin over
    the sizes until ``seconds_budget`` is spent, at least ``min_runs`` per size (so the budget can
    be overrun by one round). Sizes over ``engine.max_batch_size`` are dropped; sizes whose warm-up
    would start after the budget are skipped and listed in the result. Call from the engine's
    thread.
    """
    usable = sorted({int(n) for n in sizes if 1 <= int(n) <= engine.max_batch_size})
    if not usable:
        raise ValueError(f"no batch size in {list(sizes)} fits max_batch_size {engine.max_batch_size}")
    voice = voice or engine.voices()[0]
    phonemes = _phonemes_of_length(sample_phonemes, num_phonemes)
    deadline = time.perf_counter() + seconds_budget
    counter = 0

    def batch(batch_size: int) -> list[SynthesisItem]:
        # Fresh seeds every batch, so no run can be served from a cache of a previous one.
        nonlocal counter
        counter += batch_size
        return [SynthesisItem(phonemes, voice, seed=counter + i) for i in range(batch_size)]

    # Warm-up, one batch per size, smallest first (allocations, kernel selection); it is also
    # where peak memory is read. A size whose warm-up starts after the deadline is skipped.
    measured: list[int] = []
    peaks: dict[int, int | None] = {}
    for batch_size in usable:
        if measured and time.perf_counter() >= deadline:
            break
        if memory_probe is not None:
            memory_probe.reset()
        engine.synthesize(batch(batch_size))
        peaks[batch_size] = memory_probe.peak() if memory_probe is not None else None
        measured.append(batch_size)
    skipped = tuple(usable[len(measured) :])

    # Timed runs round-robin over the sizes, so a burst of load from elsewhere on the machine
    # spreads over all sizes instead of landing on one.
    runs = dict.fromkeys(measured, 0)
    audio_seconds = dict.fromkeys(measured, 0.0)
    wall_seconds = dict.fromkeys(measured, 0.0)
    while min(runs.values()) < min_runs or time.perf_counter() < deadline:
        for batch_size in measured:
            items = batch(batch_size)
            started = time.perf_counter()
            results = engine.synthesize(items)
            wall_seconds[batch_size] += time.perf_counter() - started
            audio_seconds[batch_size] += sum(len(r.audio) for r in results) / engine.sample_rate
            runs[batch_size] += 1
    rows = [ProbeRow(n, runs[n], audio_seconds[n], wall_seconds[n], peaks[n]) for n in measured]

    top = max(row.throughput for row in rows)
    best = min(row.batch_size for row in rows if row.throughput >= top * (1 - tie_tolerance))
    return ProbeResult(tuple(rows), best, num_phonemes, tie_tolerance, skipped)
