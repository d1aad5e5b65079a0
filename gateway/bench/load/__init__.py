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
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.bench.load.clients import client_worker, run_clients
from gateway.bench.load.report import TABLE_COLUMNS, render_markdown, render_summary, render_table, write_results
from gateway.bench.load.runner import parse_modes, run_benchmark, summarize_run
from gateway.bench.load.workload import make_fragments, make_utterance, percentile, playback, session_script
from gateway.bench.ray_mode import ray_front_end

__all__ = [
    "TABLE_COLUMNS",
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
        return client_worker()
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
