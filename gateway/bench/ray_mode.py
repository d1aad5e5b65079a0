"""``voxgate bench load --ray R``: the same load against R engine replicas on a local Ray Serve;
``voxgate bench ray-hop``: the hop alone, with an instant engine.

The configured engine (``--engine``, ``--set engine.*``) and scheduler settings go to the replicas;
the benchmark's gateway becomes a front end with ``engine.kind = "ray"``. Each cell then also
records the Ray hop per piece: the front end's round trip minus the replica's own time for the
piece (queue + synthesis), i.e. what going through Ray Serve costs on top of the in-process engine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gateway.bench.machine import machine_info
from gateway.config import Config

__all__ = ["ray_front_end", "hop_stats", "measure_hop", "main"]


@contextlib.contextmanager
def ray_front_end(config: Config, replicas: int, *, num_cpus: int = 2) -> Iterator[Config]:
    """A local Ray with ``replicas`` replicas of ``config``'s engine; yields the front end's config."""
    from gateway.engines.ray_serve import local_deployment

    settings = {
        f"{section}.{key}": value
        for section in ("engine", "scheduler")
        for key, value in dataclasses.asdict(getattr(config, section)).items()
        if not key.startswith("ray_") and value is not None
    }
    args = {"set": settings, "num_replicas": replicas, "num_cpus": num_cpus / (replicas + 1)}
    with local_deployment(args, num_cpus=num_cpus):
        yield config.replace({"engine.kind": "ray"})


def hop_stats(engine: Any) -> dict[str, Any]:
    """Hop per piece since the last call (ms), for a ``RayServeEngine``; {} for any other engine."""
    take = getattr(engine, "take_hops", None)
    if take is None:
        return {}
    hops = sorted(1e3 * h for h in take())
    if not hops:
        return {"hop_pieces": 0}
    return {
        "hop_pieces": len(hops),
        "hop_ms_p50": round(statistics.median(hops), 3),
        "hop_ms_p95": round(hops[min(len(hops) - 1, int(0.95 * len(hops)))], 3),
        "hop_ms_mean": round(statistics.fmean(hops), 3),
    }


# --- voxgate bench ray-hop: the hop alone, with an instant engine --------------------------------


def measure_hop(counts: Sequence[int], *, seconds: float, replicas: int = 1, pieces_per_request: int = 1) -> dict[str, Any]:
    """Round trip minus the replica's own time, per piece, through ``replicas`` replicas of the
    instant ``fake`` engine: N pieces in flight together (one front-end batch), for ``seconds``."""
    from gateway.config import EngineConfig
    from gateway.engines.base import ScheduleHints, SynthesisItem
    from gateway.engines.ray_client import RayServeEngine
    from gateway.engines.ray_serve import local_deployment

    biggest = max(counts)
    replica_settings = {"engine.kind": "fake", "engine.warmup": False, "engine.max_batch_size": biggest, "scheduler.max_wait_ms": 0}
    cells: dict[str, Any] = {}
    with local_deployment({"set": replica_settings, "num_replicas": replicas, "num_cpus": 0.5}):
        engine = RayServeEngine.from_config(EngineConfig(kind="ray", max_batch_size=biggest, ray_pieces_per_request=pieces_per_request))
        voice = engine.voices()[0]
        phonemes = "həlˈoʊ ðˈɛɹ, hˈaʊ ɑɹ ju dˈuɪŋ tədˈeɪ?"  # a first piece's length
        for n in counts:
            def batch(round_: int, n: int = n) -> list[SynthesisItem]:
                return [SynthesisItem(phonemes, voice, seed=round_ * n + i, hints=ScheduleHints(f"s{i}", "c")) for i in range(n)]

            engine.synthesize(batch(-1))  # warm-up
            engine.take_hops()
            engine.outbound_s.clear()
            started, rounds = time.perf_counter(), 0
            while time.perf_counter() - started < seconds:
                engine.synthesize(batch(rounds))
                rounds += 1
            hops = sorted(1e3 * h for h in engine.take_hops())
            outbound = sorted(1e3 * h for h in engine.outbound_s)
            cells[str(n)] = {
                "pieces": len(hops),
                "hop_ms_p50": round(statistics.median(hops), 2),
                "hop_ms_p95": round(hops[min(len(hops) - 1, int(0.95 * len(hops)))], 2),
                "outbound_ms_p50": round(statistics.median(outbound), 2) if outbound else None,
            }
            print(f"  N={n:<3} {cells[str(n)]}", file=sys.stderr, flush=True)
        engine.close()
    return cells


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voxgate bench ray-hop", description="the Ray Serve hop per piece, with an instant engine")
    parser.add_argument("--sessions", default="1,4,16", help="pieces in flight together (default 1,4,16)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per N (default 10)")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--pieces-per-request", type=int, default=1, help="engine.ray_pieces_per_request (default 1)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.sessions.split(",")]
    started = datetime.datetime.now(datetime.UTC)
    cells = measure_hop(counts, seconds=args.seconds, replicas=args.replicas, pieces_per_request=args.pieces_per_request)
    result = {
        "started": started.isoformat(timespec="seconds"),
        "command": "voxgate bench ray-hop " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(),
        "replicas": args.replicas,
        "pieces_per_request": args.pieces_per_request,
        "seconds": args.seconds,
        "cells": cells,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"ray-hop-{started:%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(cells, indent=2))
    print(f"json: {path}")
    return 0
