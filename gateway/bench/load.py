"""``voxgate bench load``: the real server, N real WebSocket clients, three scheduler modes, one run.

What one run does::

    engine = load once (same weights, same warm-up for every cell)
    for N in --sessions:                    # N outer, modes inner: the modes of one N run back to back
        for mode in --modes:                # batched | serial | locked | batched:B (forced batch limit)
            Gateway(config, mode) on 127.0.0.1:0, sharing the engine
            one warm-up context (G2P load, engine path), not measured
            N clients in a child process speak the same seeded scripts
            -> TTFA, underruns, audio-s/s, batch size, RSS for this (mode, N) cell
    write benchmarks/results/load-<engine>-<host>-<date>.{md,json,png}

Clients. Each session streams LLM-like text: seeded sentences cut into word-piece fragments sent at
``--words-per-second`` (jittered), then ``flush(final)``; it plays its audio back in real time on a
simulated playhead and starts its next turn ``--think-seconds`` after its playback ends. Sessions
start spread uniformly over ``--ramp-seconds``. Everything random is drawn from ``--seed``, so every
mode gets byte-identical inputs at the same times.

Where the clients run (``--clients``). Default ``process``: one child process (``python -m
gateway.bench.load --client-worker``) runs all N clients on its own event loop. On 2 cores that
child takes CPU from the engine, but it does not share the server's event loop or GIL, which is
what a real deployment looks like (clients are elsewhere; the server's loop only does server work).
``inproc`` runs the clients on the server's own loop: no process start, but every client frame
decode delays server work, which inflates TTFA at large N. The child's CPU time is recorded
(``client_cpu_s``) so its share of the machine is visible.

Definitions (per context = one turn):

- TTFA: first ``text`` message sent -> first audio frame received (includes waiting for the first
  speakable piece of text, identical for all modes). ``ttfa_piece``: from the moment the client had
  sent enough text for the server's segmenter to cut the first piece (emulated client-side with the
  same ``Segmenter`` and limits) -> first frame: the part the server's scheduling and engine own.
- Playhead: starts at the first frame + ``--jitter-buffer-ms``, advances in real time; when it
  reaches a sample not yet received it stalls until that sample arrives: one underrun, its length
  added to the underrun time (stalls under 1 ms are timestamp noise and ignored).
- audio-s/s: audio received by all clients / the cell's wall time (first text sent -> last frame).
- mean batch: pieces per engine batch from the server's ``voxgate_batch_size`` histogram (warm-up
  excluded); engine busy: engine seconds / wall time.
- peak RSS: the server process's VmHWM over the cell, restarted at the cell's start by writing 5 to
  ``/proc/self/clear_refs`` (after freeing the previous cell's garbage); where that write is refused
  the peak of VmRSS sampled every 50 ms. The peak while loading the engine is reported apart
  (``load_peak_rss_mib``). The clients' process is measured apart (``client_peak_rss_mib``). GPU
  memory: ``max_memory_allocated`` after ``reset_peak_memory_stats`` per cell, on CUDA only.
- sustained: no underrun and TTFA p95 under ``--ttfa-target-ms`` (300). ``--sustain-basis piece``
  (default) judges ``ttfa_piece``, ``text`` judges TTFA from the first text; both are reported, and
  the largest N with no underrun whatever the TTFA.
- engine alone: before the cells, one ~120-phoneme item at batch 1 on the shared engine (best of
  two): the ceiling the cells' audio-s/s is compared with.
- other load: CPU cores used by other processes during a cell (``/proc/stat`` minus our own CPU
  time). On a shared machine ``--quiet-wait-s`` waits for quiet before each cell and
  ``--noisy-retries`` runs a cell again when another job took over 0.3 cores during it.
- stop rule: after a cell that clearly fails (hit ``--max-seconds``, TTFA p95 over
  ``--stop-ttfa-ms``, or underrun time over a quarter of its audio), larger N are skipped for that mode.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import datetime as _dt
import gc
import json
import logging
import math
import os
import random
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.bench.machine import machine_info
from gateway.bench.ray_mode import hop_stats, ray_front_end
from gateway.engines.base import Engine, SynthesisItem, SynthesisResult

__all__ = [
    "build_parser",
    "main",
    "make_fragments",
    "make_utterance",
    "percentile",
    "playback",
    "render_markdown",
    "run_benchmark",
    "run_clients",
    "session_script",
]

logger = logging.getLogger("voxgate.bench.load")

SAMPLE_RATE = 24_000
#: Stalls shorter than this are timestamp noise, not an audible underrun.
UNDERRUN_TOLERANCE_S = 0.001
RSS_SAMPLE_S = 0.05
#: Other processes' CPU load (cores) below which the machine counts as quiet for a cell.
QUIET_CORES = 0.3
MODES = ("batched", "serial", "locked")

# Common English words: every one is in misaki's lexicon, so G2P cost and phoneme lengths are typical.
_WORDS = tuple(
    """
the a an and or but so because if when while then that this these those it its they them their we
our you your he she his her i my me is are was were be been being have has had do does did can could
will would should might must not no yes very really just also only even still already about after
before over under into onto from with without between through during around across along near far
time day night week year people person friend family child world city country house home room door
window table water food coffee music book story question answer idea reason problem plan way part
place point case system number group company money work job team game line word name hand head eye
voice sound light color morning evening weather rain river mountain road street car train station
good great small large long short new old big little high low early late easy hard simple clear
quick slow warm cold bright quiet happy ready sure important different possible certain public
make take give find think know want need help try call tell ask show feel seem leave keep start
turn move live believe hold bring begin write read learn change follow stop speak listen play run
walk open close watch meet send build stay wait understand remember explain describe consider
today tomorrow yesterday always never often sometimes usually maybe perhaps probably together
first second next last every other another each many much more most some few several enough
""".split()  # noqa: SIM905 - a word list reads better as text
)

_OPENERS = ["Sure", "Okay", "Well", "Alright", "So", "Right", "Of course", "Good question", "Honestly"]


# --- scripts: seeded LLM-like text ----------------------------------------------------------------


def make_utterance(rng: random.Random, *, min_words: int = 20) -> str:
    """One assistant turn: sentences of 5-16 words until at least ``min_words`` words."""
    sentences: list[str] = []
    num_words = 0
    if rng.random() < 0.5:
        sentences.append(rng.choice(_OPENERS) + ",")
    while num_words < min_words:
        n = rng.randint(5, 16)
        words = [rng.choice(_WORDS) for _ in range(n)]
        if n > 7 and rng.random() < 0.4:
            at = rng.randint(3, n - 3)
            words[at] += ","
        words[0] = words[0][0].upper() + words[0][1:]
        words[-1] += rng.choices([".", "?", "!"], weights=[7, 2, 1])[0]
        sentences.append(" ".join(words))
        num_words += n
    return " ".join(sentences)


def make_fragments(text: str, rng: random.Random) -> list[tuple[str, int]]:
    """Cut text into LLM-token-like fragments: (fragment, word index it belongs to).

    Short words are one token (with their leading space), longer ones two or three; trailing
    punctuation is sometimes its own token.
    """
    fragments: list[tuple[str, int]] = []
    for index, word in enumerate(text.split(" ")):
        lead = " " if index else ""
        core, punct = word, ""
        while core and not core[-1].isalnum():
            core, punct = core[:-1], core[-1] + punct
        if punct and rng.random() < 0.5:
            core, punct = core + punct, ""
        pieces: list[str] = []
        rest = core
        while len(rest) > 5:
            cut = rng.randint(2, 4)
            pieces.append(rest[:cut])
            rest = rest[cut:]
        pieces.append(rest)
        pieces[0] = lead + pieces[0]
        fragments.extend((piece, index) for piece in pieces if piece)
        if punct:
            fragments.append((punct, index))
    return fragments


def session_script(
    seed: int,
    session_index: int,
    *,
    utterances: int,
    words_per_second: float,
    min_words: int,
    think_seconds: float,
    ramp_seconds: float,
) -> dict[str, Any]:
    """Everything session ``session_index`` will do, drawn from (seed, index) only, so a session's
    inputs do not depend on N or the mode: start offset, and per turn the fragments with their send
    offsets (seconds from the turn's start) and the pause after the turn's playback."""
    rng = random.Random(f"voxgate-load:{seed}:{session_index}")
    start = rng.uniform(0.0, ramp_seconds) if ramp_seconds > 0 else 0.0
    turns = []
    for _ in range(utterances):
        text = make_utterance(rng, min_words=min_words)
        fragments = make_fragments(text, rng)
        per_word: dict[int, int] = {}
        for _, word in fragments:
            per_word[word] = per_word.get(word, 0) + 1
        offsets: list[float] = []
        t = 0.0
        word_start: dict[int, float] = {}
        seen: dict[int, int] = {}
        for _, word in fragments:
            if word not in word_start:
                word_start[word] = t
                t += rng.uniform(0.6, 1.4) / words_per_second
            k = seen.get(word, 0)
            seen[word] = k + 1
            duration = t - word_start[word]
            offsets.append(word_start[word] + duration * k / per_word[word])
        turns.append(
            {
                "text": text,
                "fragments": [f for f, _ in fragments],
                "offsets": offsets,
                "think": rng.uniform(0.5, 1.5) * think_seconds,
            }
        )
    return {"start": start, "turns": turns}


# --- the playback model ---------------------------------------------------------------------------


def playback(
    frames: Sequence[tuple[float, int, int]],
    *,
    sample_rate: int = SAMPLE_RATE,
    jitter_s: float = 0.0,
    complete: bool = True,
    until: float | None = None,
) -> dict[str, float]:
    """Simulate real-time playback of one context's frames, ``(arrival, sample_offset, num_samples)``
    in order. Returns ``underruns``, ``underrun_s``, ``audio_s`` and ``end`` (when playback ends).

    An incomplete context (cut by the deadline ``until``) whose playhead ran dry before ``until``
    counts one more underrun lasting until ``until``.
    """
    if not frames:
        return {"underruns": 0, "underrun_s": 0.0, "audio_s": 0.0, "end": until or 0.0}
    start = frames[0][0] + jitter_s
    stall = 0.0
    underruns = 0
    for arrival, offset, _ in frames:
        need = start + offset / sample_rate + stall
        if arrival > need + UNDERRUN_TOLERANCE_S:
            underruns += 1
            stall += arrival - need
    _, last_offset, last_n = frames[-1]
    total = (last_offset + last_n) / sample_rate
    end = start + total + stall
    if not complete and until is not None and end < until:
        underruns += 1
        stall += until - end
        end = until
    return {"underruns": underruns, "underrun_s": stall, "audio_s": total, "end": end}


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# --- clients (no torch, no server imports: they also run in the child process) -----------------------


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
    import numpy as np

    from gateway.bench.quality import longest_inner_silence_ms

    samples = np.frombuffer(b"".join(pcm), dtype="<i2").astype(np.float32) / 32768.0
    return longest_inner_silence_ms(samples, SAMPLE_RATE)


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
        "client_peak_rss_mib": _status_kib("VmHWM") / 1024,
    }


def _client_worker() -> int:
    """Child-process entry: the spec as JSON on stdin, the result as JSON on stdout."""
    spec = json.loads(sys.stdin.read())
    try:
        import uvloop

        result = uvloop.run(run_clients(spec))
    except ImportError:
        result = asyncio.run(run_clients(spec))
    sys.stdout.write(json.dumps(result))
    return 0


async def _clients_in_child(spec: dict[str, Any]) -> dict[str, Any]:
    root = str(Path(__file__).resolve().parents[2])
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


# --- the server side ------------------------------------------------------------------------------


class _SharedEngine(Engine):
    """One loaded engine lent to one ``Gateway`` after another.

    ``Gateway.stop()`` closes its engine on the worker thread; this wrapper makes that a no-op, so the
    weights are loaded and warmed once per run. ``simulate_rtf`` (development only) stretches each
    batch to at least rtf x its audio seconds, to exercise the modes with the instant fake engine.
    """

    def __init__(self, inner: Engine, *, simulate_rtf: float = 0.0) -> None:
        self.inner = inner
        self.simulate_rtf = simulate_rtf
        self.name = inner.name
        self.vocab = inner.vocab
        self.sample_rate = inner.sample_rate
        self.max_batch_size = inner.max_batch_size
        self.preferred_batch_size = inner.preferred_batch_size
        self.schedules_remotely = inner.schedules_remotely

    def voices(self) -> list[str]:
        return self.inner.voices()

    def synthesize(self, items: Sequence[SynthesisItem]) -> list[SynthesisResult]:
        started = time.perf_counter()
        results = self.inner.synthesize(items)
        if self.simulate_rtf > 0:
            audio_s = sum(len(r.audio) for r in results) / self.sample_rate
            time.sleep(max(0.0, self.simulate_rtf * audio_s - (time.perf_counter() - started)))
        return results

    def describe(self) -> dict[str, object]:
        return self.inner.describe()


def _status_kib(field: str, pid: str = "self") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_busy_s() -> float | None:
    """Seconds of non-idle CPU time of the whole machine so far (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _reset_peak_rss() -> bool:
    """Restart VmHWM at the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _release_garbage() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc: hand freed arenas back, so RSS starts low


def _histogram(histogram: Any) -> tuple[float, float]:
    """(sum, count) of a prometheus_client histogram."""
    total = count = 0.0
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_sum"):
                total = sample.value
            elif sample.name.endswith("_count"):
                count = sample.value
    return total, count


@dataclasses.dataclass(frozen=True)
class ModeSpec:
    label: str  # as given: "batched", "batched:4", "serial", "locked"
    mode: str
    batch_limit: int  # 0: engine's preferred size (batched) / 1 (others)


def parse_modes(text: str, default_limit: int) -> list[ModeSpec]:
    specs = []
    for token in (t.strip() for t in text.split(",") if t.strip()):
        mode, _, limit = token.partition(":")
        if mode not in MODES or (limit and mode != "batched"):
            raise argparse.ArgumentTypeError(f"unknown mode {token!r}: use batched, batched:B, serial, locked")
        specs.append(ModeSpec(token, mode, int(limit) if limit else default_limit if mode == "batched" else 0))
    return specs


async def _warmup(gateway: Any) -> None:
    async with gateway.open_local_session() as conn:
        await conn.send_json({"type": "text", "context_id": "warmup", "text": "Hello there, this warms the path up."})
        await conn.send_json({"type": "flush", "context_id": "warmup", "final": True})
        async for item in conn.events():
            if isinstance(item, str) and '"context.done"' in item:
                return


async def _run_cell(engine: _SharedEngine, config: Any, mode: ModeSpec, n: int, args: argparse.Namespace, gpu: bool) -> dict[str, Any]:
    from gateway.server import Gateway

    overrides: dict[str, Any] = {
        "scheduler.mode": mode.mode,
        "server.host": "127.0.0.1",
        "server.port": 0,
        "server.max_sessions": max(config.server.max_sessions, n + 1),
        "engine.warmup": False,
    }
    if mode.mode == "batched" and mode.batch_limit:
        overrides["scheduler.max_batch_pieces"] = mode.batch_limit
    cell_config = config.replace(overrides)
    _release_garbage()  # the previous cell's gateway (G2P, spaCy) must not count in this cell's RSS
    rss_start = _status_kib("VmRSS")
    hwm_reset = _reset_peak_rss()
    gateway = Gateway(cell_config, engine_factory=lambda: engine)
    await gateway.start()
    try:
        await _warmup(gateway)
        hop_stats(engine.inner)  # the warm-up's Ray hops (--ray) are not the cell's
        batch_sum0, batch_count0 = _histogram(gateway.metrics.batch_size)
        busy0, _ = _histogram(gateway.metrics.batch_seconds)
        if gpu:
            import torch

            torch.cuda.reset_peak_memory_stats()
        peak_rss = [_status_kib("VmRSS")]

        async def sample_rss() -> None:
            while True:
                peak_rss[0] = max(peak_rss[0], _status_kib("VmRSS"))
                await asyncio.sleep(RSS_SAMPLE_S)

        sampler = asyncio.create_task(sample_rss())
        spec = {
            "url": f"ws://127.0.0.1:{gateway.port}/v1/stream",
            "scripts": [
                session_script(
                    args.seed,
                    i,
                    utterances=args.utterances_per_session,
                    words_per_second=args.words_per_second,
                    min_words=args.words_per_utterance,
                    think_seconds=args.think_seconds,
                    ramp_seconds=args.ramp_seconds,
                )
                for i in range(n)
            ],
            "jitter_buffer_ms": args.jitter_buffer_ms,
            "frame_ms": args.frame_ms,
            "max_seconds": args.max_seconds,
            "max_buffer_s": cell_config.session.max_buffer_ms / 1000.0,
            "segmenter": {
                "first_min_chars": cell_config.segmenter.first_min_chars,
                "first_max_chars": cell_config.segmenter.first_max_chars,
                "min_chars": cell_config.segmenter.min_chars,
                "max_chars": cell_config.segmenter.max_chars,
            },
        }
        cpu0, stat0, wall0 = os.times(), _cpu_busy_s(), time.monotonic()
        try:
            clients = await (_clients_in_child(spec) if args.clients == "process" else run_clients(spec))
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        cpu1, stat1, wall1 = os.times(), _cpu_busy_s(), time.monotonic()
        batch_sum1, batch_count1 = _histogram(gateway.metrics.batch_size)
        busy1, _ = _histogram(gateway.metrics.batch_seconds)
        gpu_peak = None
        if gpu:
            import torch

            gpu_peak = torch.cuda.max_memory_allocated() / 2**20
        peak_rss[0] = max(peak_rss[0], _status_kib("VmRSS"), _status_kib("VmHWM") if hwm_reset else 0)
    finally:
        await gateway.stop(grace_s=0)
    cell = _summarize(clients, args)
    num_batches = batch_count1 - batch_count0
    ours = (cpu1.user + cpu1.system + cpu1.children_user + cpu1.children_system) - (
        cpu0.user + cpu0.system + cpu0.children_user + cpu0.children_system
    )
    if args.clients == "inproc" or clients.get("client_cpu_s") is None:
        pass
    elif cpu1.children_user + cpu1.children_system == cpu0.children_user + cpu0.children_system:
        ours += clients["client_cpu_s"]  # the child was not reaped into os.times() yet
    window = wall1 - wall0
    cell.update(
        mode=mode.label,
        sessions=n,
        batch_limit=gateway.scheduler.max_batch_pieces if gateway.scheduler else None,
        mean_batch=(batch_sum1 - batch_sum0) / num_batches if num_batches else None,
        num_batches=int(num_batches),
        engine_busy=(busy1 - busy0) / cell["wall_s"] if cell["wall_s"] else None,
        server_cpu_s=(cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
        client_cpu_s=clients["client_cpu_s"] if args.clients == "process" else None,
        client_peak_rss_mib=clients["client_peak_rss_mib"] if args.clients == "process" else None,
        peak_rss_mib=peak_rss[0] / 1024,
        rss_peak_method="VmHWM since cell start" if hwm_reset else "VmRSS sampled every 50 ms",
        rss_start_mib=rss_start / 1024,
        gpu_peak_mib=gpu_peak,
        # CPU used by processes other than the server and its clients, in cores, over the cell:
        # another job on the machine makes every timing of the cell suspect.
        foreign_cores=(max(0.0, (stat1 - stat0) - ours) / window) if stat0 is not None and stat1 is not None and window > 0 else None,
        **hop_stats(engine.inner),
    )
    return cell


def _summarize(clients: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    contexts = [r for r in clients["records"] if "context" in r]
    errors = [code for r in clients["records"] for code in r.get("errors", ())]
    ttfa = [r["ttfa_s"] * 1000 for r in contexts if r["ttfa_s"] is not None]
    ttfa_piece = [r["ttfa_piece_s"] * 1000 for r in contexts if r["ttfa_piece_s"] is not None]
    starts = [r["first_text"] for r in contexts]
    ends = [r["last_frame"] for r in contexts if r["last_frame"] is not None]
    wall = (max(ends) - min(starts)) if starts and ends else 0.0
    audio = sum(r["audio_s"] for r in contexts)
    underruns = sum(r["underruns"] for r in contexts)
    underrun_s = sum(r["underrun_s"] for r in contexts)
    incomplete = sum(1 for r in contexts if not r["complete"])
    cell = {
        "contexts": len(contexts),
        "incomplete": incomplete,
        "truncated": bool(clients["truncated"]) or bool(clients["client_failures"]),
        "client_failures": clients["client_failures"],
        "errors": sorted(set(errors)),
        "ttfa_ms": {f"p{q}": percentile(ttfa, q) for q in (50, 95, 99)},
        "ttfa_piece_ms": {f"p{q}": percentile(ttfa_piece, q) for q in (50, 95, 99)},
        "longest_pause_ms": {q: percentile([r["longest_pause_ms"] for r in contexts], v) for q, v in (("p50", 50), ("max", 100))},
        "underruns": underruns,
        "underrun_s": underrun_s,
        "audio_s": audio,
        "wall_s": wall,
        "audio_per_s": audio / wall if wall else 0.0,
        "records": [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k not in ("first_text", "last_frame")}
            for r in contexts
        ],
    }
    basis = cell["ttfa_piece_ms" if args.sustain_basis == "piece" else "ttfa_ms"]["p95"]
    cell["sustained"] = bool(
        not cell["truncated"] and not incomplete and not errors and underruns == 0 and basis is not None and basis < args.ttfa_target_ms
    )
    text_p95 = cell["ttfa_ms"]["p95"]
    piece_p95 = cell["ttfa_piece_ms"]["p95"]
    ok = not cell["truncated"] and not incomplete and not errors and underruns == 0
    cell["sustained_text"] = bool(ok and text_p95 is not None and text_p95 < args.ttfa_target_ms)
    cell["sustained_piece"] = bool(ok and piece_p95 is not None and piece_p95 < args.ttfa_target_ms)
    cell["sustained_no_underrun"] = bool(ok and contexts)
    cell["clear_fail"] = bool(
        cell["truncated"]
        or incomplete
        or basis is None
        or (args.stop_ttfa_ms > 0 and (basis > args.stop_ttfa_ms or underrun_s > 0.25 * max(audio, 1e-9)))
    )
    return cell


#: ~120 phonemes of ordinary English (misaki's symbols), ~8 s of speech: the calibration item.
_CALIBRATION_PHONEMES = (
    "ðə wˈɛðəɹ ɪz lˈʌvli tədˈA, ænd wi kʊd ɡˈO fɔɹ ə lˈɔŋ wˈɔk əlˈɔŋ ðə ɹˈɪvəɹ bəfˈɔɹ dˈɪnəɹ. "
    "plˈiz hˈOld ˈɔn wˈIl I ʧˈɛk ðæt fɔɹ ju."
)


def _calibrate(engine: _SharedEngine, *, repeats: int = 2) -> dict[str, float] | None:
    """The engine alone on one ~120-phoneme item (batch 1), best of ``repeats``: the yardstick for
    the cells' audio-s/s. Runs on the calling thread, between cells, with no server running."""
    phonemes = _CALIBRATION_PHONEMES
    if engine.vocab:
        phonemes = "".join(ch for ch in phonemes if ch in engine.vocab)
    voice = engine.voices()[0]
    best = None
    for _ in range(repeats):
        started = time.perf_counter()
        result = engine.synthesize([SynthesisItem(phonemes, voice, seed=0)])[0]
        elapsed = time.perf_counter() - started
        audio_s = len(result.audio) / engine.sample_rate
        if elapsed > 0 and (best is None or audio_s / elapsed > best["audio_per_s"]):
            best = {"phonemes": len(phonemes), "audio_s": round(audio_s, 3), "seconds": round(elapsed, 3), "audio_per_s": audio_s / elapsed}
    return best


def _wait_for_quiet(max_wait_s: float, *, threshold_cores: float = QUIET_CORES) -> float | None:
    """Wait (up to ``max_wait_s``) until the machine's CPU, measured over 1 s, is below
    ``threshold_cores`` busy; we are idle between cells, so that is other processes' load.
    Returns the last load seen (cores), None where /proc/stat is unreadable."""
    deadline = time.monotonic() + max_wait_s
    while True:
        before, t0 = _cpu_busy_s(), time.monotonic()
        time.sleep(1.0)
        after, t1 = _cpu_busy_s(), time.monotonic()
        if before is None or after is None:
            return None
        load = (after - before) / (t1 - t0)
        if load < threshold_cores or time.monotonic() >= deadline:
            return load


def _load_engine(config: Any, simulate_rtf: float) -> _SharedEngine:
    from gateway.engines import create_engine

    engine = create_engine(config.engine)
    if config.engine.warmup:
        engine.warmup()
    return _SharedEngine(engine, simulate_rtf=simulate_rtf)


async def run_benchmark(args: argparse.Namespace, config: Any) -> dict[str, Any]:
    """Every (N, mode) cell of one run, sharing one engine; returns the JSON-able result."""
    modes = args.mode_specs
    started = time.time()
    engine_loaded_at = time.perf_counter()
    # The engine is built on a thread of its own, as the server's worker does (it may load weights).
    engine = await asyncio.to_thread(_load_engine, config, args.simulate_rtf)
    load_s = time.perf_counter() - engine_loaded_at
    load_peak_rss = _status_kib("VmHWM") / 1024
    description = engine.describe()
    gpu = "cuda" in str(description.get("device", "")) and "torch" in sys.modules
    logger.info("engine ready in %.1f s: %s", load_s, description)
    if args.quiet_wait_s > 0:
        await asyncio.to_thread(_wait_for_quiet, args.quiet_wait_s)
    calibration = await asyncio.to_thread(_calibrate, engine)
    if calibration:
        print(f"  engine alone: {calibration['audio_per_s']:.2f} audio-s/s (batch 1, {calibration['phonemes']} phonemes)", file=sys.stderr)
    cells: list[dict[str, Any]] = []
    stopped: dict[str, int] = {}
    for n in args.session_counts:
        for mode in modes:
            if mode.label in stopped:
                cells.append({"mode": mode.label, "sessions": n, "skipped": f"failed at N={stopped[mode.label]}"})
                continue
            for attempt in range(1 + args.noisy_retries):
                quiet = await asyncio.to_thread(_wait_for_quiet, args.quiet_wait_s) if args.quiet_wait_s > 0 else None
                print(f"  {mode.label:>10}  N={n:<3} ...", end="", flush=True, file=sys.stderr)
                try:
                    cell = await _run_cell(engine, config, mode, n, args, gpu)
                except Exception as exc:  # one broken cell must not lose the run
                    logger.exception("cell %s N=%d failed", mode.label, n)
                    print(f" failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                    cell = {"mode": mode.label, "sessions": n, "skipped": f"error: {type(exc).__name__}"}
                    break
                noisy = (cell.get("foreign_cores") or 0.0) > QUIET_CORES
                if noisy and attempt < args.noisy_retries:
                    print(f" other processes used {cell['foreign_cores']:.2f} cores: again", file=sys.stderr)
                    continue
                cell["attempts"] = attempt + 1
                break
            if "skipped" in cell:
                cells.append(cell)
                stopped[mode.label] = n
                continue
            cell["load_before_cores"] = quiet
            cells.append(cell)
            print(
                f" TTFA p95 {_fmt_ms(cell['ttfa_ms']['p95'])} (piece {_fmt_ms(cell['ttfa_piece_ms']['p95'])}),"
                f" underruns {cell['underruns']} ({cell['underrun_s']:.2f} s), {cell['audio_per_s']:.2f} audio-s/s",
                file=sys.stderr,
            )
            if cell["clear_fail"]:
                stopped[mode.label] = n
    return {
        "benchmark": "load",
        "started": _dt.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "command": "voxgate bench load " + " ".join(args.argv),
        "machine": machine_info(),
        "engine": {**{k: _jsonable(v) for k, v in description.items()}, "load_s": round(load_s, 2)},
        "calibration": calibration,
        "settings": {
            "sessions": args.session_counts,
            "modes": [m.label for m in modes],
            "engine": config.engine.kind,
            "voice": config.session.default_voice or engine.voices()[0],
            "words_per_second": args.words_per_second,
            "words_per_utterance": args.words_per_utterance,
            "utterances_per_session": args.utterances_per_session,
            "think_seconds": args.think_seconds,
            "ramp_seconds": args.ramp_seconds,
            "jitter_buffer_ms": args.jitter_buffer_ms,
            "frame_ms": args.frame_ms,
            "max_seconds": args.max_seconds,
            "ttfa_target_ms": args.ttfa_target_ms,
            "sustain_basis": args.sustain_basis,
            "stop_ttfa_ms": args.stop_ttfa_ms,
            "clients": args.clients,
            "seed": args.seed,
            "quiet_wait_s": args.quiet_wait_s,
            "noisy_retries": args.noisy_retries,
            "simulate_rtf": args.simulate_rtf,
            "segmenter": dataclasses.asdict(config.segmenter),
            "scheduler": dataclasses.asdict(config.scheduler),
        },
        "load_peak_rss_mib": load_peak_rss,
        "cells": cells,
        "summary": summarize_run(cells, [m.label for m in modes], args.session_counts),
    }


def summarize_run(cells: list[dict[str, Any]], modes: list[str], counts: list[int]) -> dict[str, Any]:
    """Largest sustained N per mode, and ratios between modes at each N."""
    by = {(c["mode"], c["sessions"]): c for c in cells if "skipped" not in c}
    sustained: dict[str, dict[str, Any]] = {}
    for mode in modes:
        for key in ("sustained", "sustained_text", "sustained_piece", "sustained_no_underrun"):
            best = 0
            for n in counts:
                cell = by.get((mode, n))
                if cell is None or not cell.get(key):
                    break
                best = n
            tested = [n for n in counts if (mode, n) in by]
            sustained.setdefault(mode, {})[key] = {"max_n": best, "all_tested_pass": bool(tested) and best == max(tested)}
    ratios = []
    base = modes[0] if modes else None
    for n in counts:
        row: dict[str, Any] = {"sessions": n}
        ref = by.get((base, n))
        for mode in modes[1:]:
            other = by.get((mode, n))
            if ref is None or other is None:
                continue
            row[f"ttfa_p95_{mode}_over_{base}"] = _ratio(other["ttfa_ms"]["p95"], ref["ttfa_ms"]["p95"])
            row[f"ttfa_piece_p95_{mode}_over_{base}"] = _ratio(other["ttfa_piece_ms"]["p95"], ref["ttfa_piece_ms"]["p95"])
            row[f"audio_per_s_{base}_over_{mode}"] = _ratio(ref["audio_per_s"], other["audio_per_s"])
            row[f"underrun_s_{mode}_minus_{base}"] = other["underrun_s"] - ref["underrun_s"]
        if len(row) > 1:
            ratios.append(row)
    return {"reference_mode": base, "sustained": sustained, "ratios": ratios}


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)


# --- reports ----------------------------------------------------------------------------------------


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms" if value < 10_000 else f"{value / 1000:.1f} s"


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


TABLE_COLUMNS = [
    "N",
    "mode",
    "ctx",
    "TTFA p50",
    "TTFA p95",
    "TTFA p99",
    "piece p50",
    "piece p95",
    "longest pause p50",
    "longest pause max",
    "underruns",
    "underrun s",
    "audio-s/s",
    "mean batch",
    "busy",
    "peak RSS MiB",
    "GPU MiB",
    "other load",
    "status",
]


def render_table(result: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for cell in result["cells"]:
        if "skipped" in cell:
            row = [str(cell["sessions"]), cell["mode"]] + ["-"] * (len(TABLE_COLUMNS) - 3) + [f"skipped ({cell['skipped']})"]
        else:
            if cell["sustained"]:
                status = "ok"
            else:
                reasons = []
                if cell["truncated"]:
                    reasons.append("hit max-seconds")
                if cell["incomplete"]:
                    reasons.append(f"{cell['incomplete']} incomplete")
                if cell["errors"]:
                    reasons.append("errors: " + ",".join(cell["errors"]))
                if cell["underruns"]:
                    reasons.append("underruns")
                basis = cell["ttfa_piece_ms" if result["settings"]["sustain_basis"] == "piece" else "ttfa_ms"]["p95"]
                if basis is None or basis >= result["settings"]["ttfa_target_ms"]:
                    reasons.append("TTFA")
                status = "FAIL: " + ", ".join(reasons)
            row = [
                str(cell["sessions"]),
                cell["mode"],
                str(cell["contexts"]),
                _fmt_ms(cell["ttfa_ms"]["p50"]),
                _fmt_ms(cell["ttfa_ms"]["p95"]),
                _fmt_ms(cell["ttfa_ms"]["p99"]),
                _fmt_ms(cell["ttfa_piece_ms"]["p50"]),
                _fmt_ms(cell["ttfa_piece_ms"]["p95"]),
                _fmt_ms(cell.get("longest_pause_ms", {}).get("p50")),
                _fmt_ms(cell.get("longest_pause_ms", {}).get("max")),
                str(cell["underruns"]),
                _fmt(cell["underrun_s"]),
                _fmt(cell["audio_per_s"]),
                _fmt(cell["mean_batch"]),
                "-" if cell["engine_busy"] is None else f"{100 * cell['engine_busy']:.0f}%",
                _fmt(cell["peak_rss_mib"], ".0f"),
                _fmt(cell["gpu_peak_mib"], ".0f"),
                _fmt(cell.get("foreign_cores"), ".2f"),
                status,
            ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def render_summary(result: dict[str, Any]) -> str:
    summary = result["summary"]
    basis = result["settings"]["sustain_basis"]
    target = result["settings"]["ttfa_target_ms"]
    lines = [
        f"Largest N sustained (no underrun, TTFA p95 < {target:.0f} ms; judged on `{basis}` TTFA, the other basis alongside):",
        "",
        "| mode | max N (piece TTFA) | max N (text TTFA) | max N without underrun (any TTFA) |",
        "|---|---|---|---|",
    ]
    for mode, entry in summary["sustained"].items():
        def show(e: dict[str, Any]) -> str:
            return (f">= {e['max_n']}" if e["all_tested_pass"] else str(e["max_n"])) if e["max_n"] else "0 (none)"

        no_underrun = show(entry["sustained_no_underrun"]) if "sustained_no_underrun" in entry else "-"
        lines.append(f"| {mode} | {show(entry['sustained_piece'])} | {show(entry['sustained_text'])} | {no_underrun} |")
    if summary["ratios"]:
        base = summary["reference_mode"]
        others = [m for m in result["settings"]["modes"] if m != base]
        header = ["N"]
        for mode in others:
            header += [f"TTFA p95 {mode}/{base}", f"piece p95 {mode}/{base}", f"audio-s/s {base}/{mode}"]
        lines += ["", f"Ratios against `{base}`, same run, same inputs:", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in summary["ratios"]:
            out = [str(row["sessions"])]
            for mode in others:
                out += [
                    _fmt(row.get(f"ttfa_p95_{mode}_over_{base}"), ".2f"),
                    _fmt(row.get(f"ttfa_piece_p95_{mode}_over_{base}"), ".2f"),
                    _fmt(row.get(f"audio_per_s_{base}_over_{mode}"), ".2f"),
                ]
            lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


def render_markdown(result: dict[str, Any], png_name: str | None) -> str:
    m = result["machine"]
    s = result["settings"]
    e = result["engine"]
    machine = (
        f"{m['cpu']} ({', '.join(m['cpu_flags'])}), {m['usable_cores']} usable of {m['logical_cores']} logical cores, "
        f"{m['ram_gib']} GiB RAM, {m['os']}, Python {m['python']}, torch {m.get('torch', '-')}"
        f"{' (' + str(m['torch_threads']) + ' threads)' if 'torch_threads' in m else ''}, allocator {m['allocator']}"
    )
    if "gpu" in m:
        machine += f", GPU {m['gpu']} ({m['gpu_memory_gib']} GiB)"
    engine = ", ".join(f"{k} {v}" for k, v in e.items())
    parts = [
        f"# voxgate load benchmark: {s['engine']} on {m['host']}, {result['started']}",
        "",
        f"`{result['command']}` ({result['duration_s']} s in all)",
        "",
        f"- Machine: {machine}.",
        f"- Engine: {engine}. Loaded once, shared by every cell.",
        (
            f"- Engine alone (batch 1, {result['calibration']['phonemes']} phonemes, {result['calibration']['audio_s']} s of audio): "
            f"{result['calibration']['audio_per_s']:.2f} audio-s/s, the ceiling for the cells' audio-s/s."
            if result.get("calibration")
            else "- Engine alone: not measured."
        ),
        (
            f"- Clients: {s['clients']}; voice {s.get('voice', '-')}; per session {s['utterances_per_session']} turns of >= {s['words_per_utterance']} words "
            f"at {s['words_per_second']} words/s in LLM-token fragments, next turn {s['think_seconds']} s (±50 %) after "
            f"playback ends; sessions start over {s['ramp_seconds']} s; seed {s['seed']}; frames {s['frame_ms']} ms; "
            f"jitter buffer {s['jitter_buffer_ms']} ms; at most {s['max_seconds']} s per cell."
        ),
        f"- Peak RSS while loading the engine: {result['load_peak_rss_mib']:.0f} MiB (the table's is per cell).",
    ]
    if s["simulate_rtf"]:
        parts.append(f"- **Simulated engine speed**: every batch stretched to {s['simulate_rtf']} x its audio seconds.")
    parts += ["", render_table(result), "", render_summary(result), ""]
    if png_name:
        parts += [f"![TTFA p95 and audio-s/s against N]({png_name})", ""]
    parts += [
        (
            "Columns: TTFA = first text sent -> first audio frame (p50/p95/p99 over all turns); piece = from when the "
            "text held the server's first speakable piece; underruns / underrun s = playhead stalls and their total "
            "length; audio-s/s = audio received by all clients / cell wall time; mean batch = pieces per engine batch; "
            "busy = engine time / wall time; peak RSS = the server process's peak during the cell; other load = "
            "CPU cores used by other processes on the machine during the cell (anything well above 0 makes that "
            "cell's timings suspect)."
        ),
        "",
    ]
    return "\n".join(parts)


def plot(result: dict[str, Any], path: Path) -> bool:
    """TTFA p95 (both bases), audio-s/s and underrun time against N, one line per mode."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        logger.warning("matplotlib not installed: no plot (pip install matplotlib)")
        return False
    cells = [c for c in result["cells"] if "skipped" not in c]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for mode in result["settings"]["modes"]:
        mine = sorted((c for c in cells if c["mode"] == mode), key=lambda c: c["sessions"])
        if not mine:
            continue
        n = [c["sessions"] for c in mine]
        (line,) = axes[0].plot(n, [c["ttfa_ms"]["p95"] or float("nan") for c in mine], marker="o", label=f"{mode}")
        axes[0].plot(n, [c["ttfa_piece_ms"]["p95"] or float("nan") for c in mine], marker="x", linestyle="--", color=line.get_color(), label=f"{mode} (piece)")
        axes[1].plot(n, [c["audio_per_s"] for c in mine], marker="o", label=mode, color=line.get_color())
        axes[2].plot(n, [c["underrun_s"] for c in mine], marker="o", label=mode, color=line.get_color())
    axes[0].axhline(result["settings"]["ttfa_target_ms"], color="grey", linewidth=0.8, linestyle=":")
    axes[0].set(title="TTFA p95 (solid: from first text; dashed: from first piece)", xlabel="sessions N", ylabel="ms")
    if any((c["ttfa_ms"]["p95"] or 0) > 0 for c in cells):
        axes[0].set_yscale("log")
        axes[0].yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axes[0].yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[1].set(title="aggregate audio-seconds per second", xlabel="sessions N", ylabel="audio-s/s")
    axes[2].set(title="total underrun time", xlabel="sessions N", ylabel="s")
    counts = sorted({c["sessions"] for c in cells}) or [1]
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.minorticks_off() if ax is not axes[0] else None
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"voxgate bench load: {result['settings']['engine']} on {result['machine']['cpu']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_results(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in result["machine"]["host"]) or "host"
    stamp = _dt.datetime.fromisoformat(result["started"]).strftime("%Y%m%d-%H%M%S")
    stem = f"load-{result['settings']['engine']}-{host}-{stamp}"
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md", "png": out_dir / f"{stem}.png"}
    has_png = plot(result, paths["png"])
    if not has_png:
        del paths["png"]
    paths["md"].write_text(render_markdown(result, paths["png"].name if has_png else None))
    paths["json"].write_text(json.dumps(result, indent=1))
    return paths


# --- command line ---------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"want comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("session counts must be >= 1")
    return sorted(set(values))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voxgate bench load", description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=_int_list, default=_int_list("1,2,4,8,16,32,64"), help="N values (default 1,2,4,8,16,32,64)")
    p.add_argument("--modes", default="batched,serial,locked", help="scheduler modes; batched:B forces batch limit B (default batched,serial,locked)")
    p.add_argument("--engine", choices=["kokoro", "tiny", "fake", "realtimetts"], help="engine.kind (default from config)")
    p.add_argument("--weights", help="engine.weights: auto, offline, hub or a path")
    p.add_argument("--device", help="engine.device: auto, cpu, cuda ...")
    p.add_argument("--config", help="TOML config (default: $VOXGATE_CONFIG or configs/default.toml)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override any setting; repeatable")
    p.add_argument("--batch-limit", type=int, default=0, help="batch limit for mode batched: 0 = the engine's preferred size (1 on CPU); >0 forces it (and the engine's max/preferred size)")
    p.add_argument("--words-per-second", type=float, default=20.0, help="LLM text rate (default 20)")
    p.add_argument("--words-per-utterance", type=int, default=20, help="at least this many words per turn (default 20, ~7 s of speech)")
    p.add_argument("--utterances-per-session", type=int, default=3, help="turns per session (default 3)")
    p.add_argument("--think-seconds", type=float, default=1.0, help="pause between a turn's playback end and the next turn (±50%%; default 1)")
    p.add_argument("--ramp-seconds", type=float, default=2.0, help="sessions start uniformly spread over this (default 2)")
    p.add_argument("--jitter-buffer-ms", type=float, default=0.0, help="playhead starts this long after the first frame (default 0)")
    p.add_argument("--frame-ms", type=int, default=20, help="audio frame length the clients ask for (default 20)")
    p.add_argument("--max-seconds", type=float, default=90.0, help="per (mode, N) cell; a cell hitting it fails clearly (default 90)")
    p.add_argument("--ttfa-target-ms", type=float, default=300.0, help="sustained: TTFA p95 below this (default 300)")
    p.add_argument("--sustain-basis", choices=["piece", "text"], default="piece", help="which TTFA the target judges (default piece; both are reported)")
    p.add_argument("--stop-ttfa-ms", type=float, default=3000.0, help="clear failure: TTFA p95 above this (or underrun time over 25%% of the audio) skips larger N for the mode; 0: only a cell hitting --max-seconds stops a mode (default 3000)")
    p.add_argument("--clients", choices=["process", "inproc"], default="process", help="clients in a child process (default) or on the server's loop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noisy-retries", type=int, default=0, help="run a cell again (up to this many times) when other processes used over 0.3 cores during it (default 0)")
    p.add_argument("--quiet-wait-s", type=float, default=0.0, help="before each cell wait up to this long for other processes' CPU load to drop below 0.3 cores (shared machines; default 0: do not wait)")
    p.add_argument("--ray", type=int, default=0, metavar="REPLICAS", help="serve through REPLICAS engine replicas on a local Ray Serve (the configured engine runs in each; cells record the hop per piece); 0: in-process (default)")
    p.add_argument("--simulate-rtf", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--out", default="benchmarks/results", help="output folder (default benchmarks/results)")
    p.add_argument("--render", metavar="JSON", help="only rewrite the .md and .png of an earlier run's .json (into --out)")
    p.add_argument("--client-worker", action="store_true", help=argparse.SUPPRESS)
    return p


def _config(args: argparse.Namespace) -> Any:
    from gateway.config import load_config

    from gateway.config import ConfigError, parse_overrides

    try:
        overrides: dict[str, Any] = dict(parse_overrides(args.set))
    except ConfigError as exc:
        raise SystemExit(f"voxgate bench load: {exc}") from None
    for key, value in (("engine.kind", args.engine), ("engine.weights", args.weights), ("engine.device", args.device)):
        if value is not None:
            overrides[key] = value
    config = load_config(args.config, overrides=overrides)
    limits = [m.batch_limit for m in args.mode_specs if m.mode == "batched" and m.batch_limit]
    engine_overrides: dict[str, Any] = {}
    if limits:
        engine_overrides["engine.max_batch_size"] = max(config.engine.max_batch_size, *limits)
    if args.batch_limit:
        engine_overrides["engine.preferred_batch_size"] = args.batch_limit
    return config.replace(engine_overrides) if engine_overrides else config


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.client_worker:
        return _client_worker()
    if args.render:
        result = json.loads(Path(args.render).read_text())
        for cell in result["cells"]:  # runs recorded before this verdict existed
            if "skipped" not in cell and "sustained_no_underrun" not in cell:
                cell["sustained_no_underrun"] = bool(
                    cell["contexts"] and not cell["truncated"] and not cell["incomplete"] and not cell["errors"] and not cell["underruns"]
                )
        result["summary"] = summarize_run(result["cells"], result["settings"]["modes"], result["settings"]["sessions"])
        paths = write_results(result, Path(args.out))
        print("\n".join(f"{kind}: {path}" for kind, path in paths.items()))
        return 0
    args.argv = argv
    try:
        args.mode_specs = parse_modes(args.modes, args.batch_limit)
        args.session_counts = args.sessions
        config = _config(args)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        print(f"voxgate bench load: {exc}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    with contextlib.suppress(ImportError):
        from loguru import logger as loguru_logger

        loguru_logger.disable("kokoro")
    print(
        f"voxgate bench load: engine {config.engine.kind}, modes {args.modes}, N {args.sessions}, clients {args.clients}",
        file=sys.stderr,
    )
    runner = asyncio.run
    if config.server.use_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            runner = uvloop.run
    with ray_front_end(config, args.ray) if args.ray else contextlib.nullcontext(config) as config:
        result = runner(run_benchmark(args, config))
    paths = write_results(result, Path(args.out))
    print(render_table(result))
    print()
    print(render_summary(result))
    print()
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
