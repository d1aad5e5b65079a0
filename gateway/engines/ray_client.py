"""``engine.kind = "ray"``: a front end's engine that is a Ray Serve deployment of engine replicas.

A front end is a plain ``voxgate serve`` process: sessions, segmentation, G2P, encoding and its own
scheduler stay here, and the scheduler's batches go to ``synthesize`` as usual. This engine sends
each item of a batch as its own request through a Serve deployment handle (Ray Serve's router picks
the replica with the shortest queue), so the replica's scheduler can merge it with the pieces of
every other front end. Why not an ingress deployment: the WebSocket sessions and their state belong
in a process the balancer routes to by session id (resume), and keeping them in ``voxgate serve``
keeps one code path for one process and for many.

Faults: a replica that dies or is removed while it holds a piece raises ``RayActorError`` /
``ActorUnavailableError`` on the handle (or the deployment is briefly unavailable); the piece is then
sent again, and Serve's router sends it to a live replica. Seeds are per item, so the retried piece
gives the same audio, and a piece is delivered once: from the one request that returned. Only after
``engine.ray_retry_s`` of failures does the piece fail (``engine_failed``).

Runs on the front end's engine thread (``EngineWorker``) with a private event loop, so that the
items of one batch are in flight together and each one's arrival time is measured when it arrives:
``hop`` = round trip - the replica's own time for the piece (queue + synthesis) is the transport
cost of the Ray hop, per piece.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import statistics
import time
import uuid
from collections.abc import Sequence
from typing import Any

from gateway.config import EngineConfig
from gateway.engines.base import Engine, SynthesisItem, SynthesisResult
from gateway.errors import EngineFailed

__all__ = ["RayServeEngine", "retryable_errors"]

logger = logging.getLogger("voxgate.ray")

#: Recent per-piece hop samples kept for ``describe()`` and the load benchmark.
HOP_SAMPLES = 4_096


def retryable_errors() -> tuple[type[BaseException], ...]:
    """The handle errors that mean "this replica is gone or unreachable; another one may serve"."""
    from ray import exceptions as ray_errors

    errors: list[type[BaseException]] = [ray_errors.RayActorError]
    for name in ("ActorUnavailableError", "ActorDiedError"):
        if hasattr(ray_errors, name):
            errors.append(getattr(ray_errors, name))
    try:
        from ray.serve.exceptions import DeploymentUnavailableError

        errors.append(DeploymentUnavailableError)
    except ImportError:  # older Ray: the handle waits for a replica instead
        pass
    return tuple(errors)


class RayServeEngine(Engine):
    """Forwards items to the engine replicas of a Ray Serve application."""

    name = "ray"
    schedules_remotely = True

    def __init__(
        self, handle: Any, *, max_batch_size: int, preferred_batch_size: int, retry_s: float = 60.0, pieces_per_request: int = 1
    ) -> None:
        self.handle = handle
        #: 1: every piece is its own request (finest balancing and retry); k: a batch goes out in
        #: requests of up to k pieces (fewer requests, less Ray overhead per piece).
        self.pieces_per_request = pieces_per_request
        self.front_end = uuid.uuid4().hex[:12]
        self.max_batch_size = max_batch_size
        self.preferred_batch_size = preferred_batch_size
        self.retry_s = retry_s
        self._retryable = retryable_errors()
        self._loop = asyncio.new_event_loop()
        remote = self._loop.run_until_complete(self._call(handle.describe.remote()))
        self._remote = remote
        self._voices: list[str] = list(remote["voices"])
        self.vocab = frozenset(remote["vocab"])
        self.sample_rate = int(remote["sample_rate"])
        #: Latest counters of every replica that answered (from the results they sent).
        self.replicas: dict[str, dict[str, Any]] = {}
        self.retries = 0
        self.pieces = 0
        #: Pieces sent to a replica and not answered yet.
        self.in_flight = 0
        self.hops_s: collections.deque[float] = collections.deque(maxlen=HOP_SAMPLES)
        #: The outbound half of each hop (caller's wall clock -> replica's; same machine or NTP).
        self.outbound_s: collections.deque[float] = collections.deque(maxlen=HOP_SAMPLES)

    @classmethod
    def from_config(cls, config: EngineConfig) -> RayServeEngine:
        import ray
        from ray import serve

        if not ray.is_initialized():
            ray.init(address=config.ray_address or "auto", log_to_driver=False)
        handle = serve.get_deployment_handle(config.ray_deployment, app_name=config.ray_app)
        # The front end's batch is what it hands over at once; the replicas batch across front ends.
        return cls(
            handle,
            max_batch_size=config.max_batch_size,
            preferred_batch_size=config.preferred_batch_size or config.max_batch_size,
            retry_s=config.ray_retry_s,
            pieces_per_request=config.ray_pieces_per_request,
        )

    def voices(self) -> list[str]:
        return list(self._voices)

    def synthesize(self, items: Sequence[SynthesisItem]) -> list[SynthesisResult]:
        return self._loop.run_until_complete(self._batch(items))

    def close(self) -> None:
        self._loop.close()

    def describe(self) -> dict[str, object]:
        hops = sorted(self.hops_s)
        return {
            "name": self.name,
            "front_end": self.front_end,
            "max_batch_size": self.max_batch_size,
            "preferred_batch_size": self.preferred_batch_size,
            "replica_engine": self._remote.get("name"),
            "pieces": self.pieces,
            "retries": self.retries,
            "in_flight": self.in_flight,
            "hop_ms_p50": round(1e3 * statistics.median(hops), 3) if hops else None,
            "replicas": {rid: dict(stats) for rid, stats in self.replicas.items()},
        }

    def take_hops(self) -> list[float]:
        """Per-piece hop samples (seconds) since the last call; for ``voxgate bench load --ray``."""
        hops = list(self.hops_s)
        self.hops_s.clear()
        return hops

    # --- internals ------------------------------------------------------------------------------

    async def _call(self, response: Any) -> Any:
        return await response

    async def _batch(self, items: Sequence[SynthesisItem]) -> list[Any]:
        size = max(1, self.pieces_per_request)
        groups = [list(items[i : i + size]) for i in range(0, len(items), size)]
        results = await asyncio.gather(*(self._group(group) for group in groups))
        return [result for group in results for result in group]

    async def _group(self, items: list[SynthesisItem]) -> list[Any]:
        """Pieces in one request to some replica; sent again while replicas die, for up to ``retry_s``."""
        self.in_flight += len(items)
        try:
            return await self._send(items)
        finally:
            self.in_flight -= len(items)

    async def _send(self, items: list[SynthesisItem]) -> list[Any]:
        give_up = time.monotonic() + self.retry_s
        attempt = 0
        while True:
            sent = time.perf_counter()
            try:
                if len(items) == 1:
                    results = [await self.handle.remote(items[0], self.front_end, time.time())]
                else:
                    results = await self.handle.synthesize_many.remote(items, self.front_end, time.time())
            except self._retryable as exc:
                attempt += 1
                self.retries += len(items)
                if time.monotonic() >= give_up:
                    logger.error("%d pieces failed on %d replicas in %.0f s; giving up", len(items), attempt, self.retry_s)
                    return [EngineFailed("no engine replica could synthesize this piece") for _ in items]
                logger.warning("engine replica lost (%s); sending %d pieces again (attempt %d)", type(exc).__name__, len(items), attempt + 1)
                await asyncio.sleep(min(0.05 * attempt, 1.0))
                continue
            except Exception:
                logger.error("engine replica call failed", exc_info=True)
                return [EngineFailed("synthesis failed for this piece") for _ in items]
            self._record(results, time.perf_counter() - sent)
            return results

    def _record(self, results: list[Any], round_trip: float) -> None:
        """Hop (round trip - the replica's time for the request) and the replicas' counters."""
        self.pieces += len(results)
        done = [r for r in results if isinstance(r, SynthesisResult)]
        services = [r.extra["service_s"] for r in done if isinstance(r.extra.get("service_s"), float)]
        if services:
            hop = max(0.0, round_trip - max(services))
            self.hops_s.extend([hop] * len(done))
        for result in done:
            outbound = result.extra.get("outbound_s")
            if isinstance(outbound, float):
                self.outbound_s.append(max(0.0, outbound))
            stats = result.extra.get("replica_stats")
            if isinstance(stats, dict):
                self.replicas[str(result.extra.get("replica"))] = stats
