"""``voxgate bench load``, the runner: one engine loaded once, then per (N, mode) cell a ``Gateway``
on 127.0.0.1 sharing it, the clients run against it, and the cell's figures (TTFA, underruns,
audio-s/s, batch size, CPU, RSS) summarised; ``summarize_run`` judges the whole run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as _dt
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from gateway.bench.load.clients import clients_in_child, run_clients
from gateway.bench.load.proc import QUIET_CORES, cpu_busy_s, release_garbage, reset_peak_rss, status_kib, wait_for_quiet
from gateway.bench.load.report import fmt_ms
from gateway.bench.load.workload import percentile, session_script
from gateway.bench.machine import machine_info
from gateway.bench.ray_mode import hop_stats
from gateway.engines.base import Engine, SynthesisItem, SynthesisResult
from gateway.protocol import STREAM_PATH

__all__ = ["MODES", "ModeSpec", "parse_modes", "run_benchmark", "summarize_run"]

logger = logging.getLogger("voxgate.bench.load")

RSS_SAMPLE_S = 0.05
MODES = ("batched", "serial", "locked")


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


# --- the in-process (local) session -------------------------------------------------------------
# The only place bench load opens a session without a socket: one warm-up context per cell (G2P
# load, engine path), not measured. Repoint here when local sessions move to the hub.


async def warm_up_in_process(gateway: Any) -> None:
    """Speak one short context through an in-process session of ``gateway``; returns at its
    ``context.done``."""
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
    release_garbage()  # the previous cell's gateway (G2P, spaCy) must not count in this cell's RSS
    rss_start = status_kib("VmRSS")
    hwm_reset = reset_peak_rss()
    gateway = Gateway(cell_config, engine_factory=lambda: engine)
    await gateway.start()
    try:
        await warm_up_in_process(gateway)
        hop_stats(engine.inner)  # the warm-up's Ray hops (--ray) are not the cell's
        batch_sum0, batch_count0 = _histogram(gateway.metrics.batch_size)
        busy0, _ = _histogram(gateway.metrics.batch_seconds)
        if gpu:
            import torch

            torch.cuda.reset_peak_memory_stats()
        peak_rss = [status_kib("VmRSS")]

        async def sample_rss() -> None:
            while True:
                peak_rss[0] = max(peak_rss[0], status_kib("VmRSS"))
                await asyncio.sleep(RSS_SAMPLE_S)

        sampler = asyncio.create_task(sample_rss())
        spec = {
            "url": f"ws://127.0.0.1:{gateway.port}{STREAM_PATH}",
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
        cpu0, stat0, wall0 = os.times(), cpu_busy_s(), time.monotonic()
        try:
            clients = await (clients_in_child(spec) if args.clients == "process" else run_clients(spec))
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        cpu1, stat1, wall1 = os.times(), cpu_busy_s(), time.monotonic()
        batch_sum1, batch_count1 = _histogram(gateway.metrics.batch_size)
        busy1, _ = _histogram(gateway.metrics.batch_seconds)
        gpu_peak = None
        if gpu:
            import torch

            gpu_peak = torch.cuda.max_memory_allocated() / 2**20
        peak_rss[0] = max(peak_rss[0], status_kib("VmRSS"), status_kib("VmHWM") if hwm_reset else 0)
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
    load_peak_rss = status_kib("VmHWM") / 1024
    description = engine.describe()
    gpu = "cuda" in str(description.get("device", "")) and "torch" in sys.modules
    logger.info("engine ready in %.1f s: %s", load_s, description)
    if args.quiet_wait_s > 0:
        await asyncio.to_thread(wait_for_quiet, args.quiet_wait_s)
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
                quiet = await asyncio.to_thread(wait_for_quiet, args.quiet_wait_s) if args.quiet_wait_s > 0 else None
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
                f" TTFA p95 {fmt_ms(cell['ttfa_ms']['p95'])} (piece {fmt_ms(cell['ttfa_piece_ms']['p95'])}),"
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
