"""``voxgate bench load --ray R``: the same load against R engine replicas on a local Ray Serve.

The configured engine (``--engine``, ``--set engine.*``) and scheduler settings go to the replicas;
the benchmark's gateway becomes a front end with ``engine.kind = "ray"``. Each cell then also
records the Ray hop per piece: the front end's round trip minus the replica's own time for the
piece (queue + synthesis), i.e. what going through Ray Serve costs on top of the in-process engine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
from collections.abc import Iterator
from typing import Any

from gateway.config import Config

__all__ = ["ray_front_end", "hop_stats"]


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
