"""Engine replicas on Ray Serve: one voxgate engine per replica (one replica per GPU), fed by many
front ends (``engines.ray_client``), with voxgate's own micro-batching scheduler inside each replica.

Why the existing ``Scheduler`` and not ``@serve.batch``: ``serve.batch`` forms FIFO batches by
count and wait time only. Pieces carry what voxgate orders by (priority, latest start from their
playback deadline, first piece of a turn, TTL) and batches must respect the token budget and the
length ratio (padding is wasted compute); the scheduler already does all of that and is tested, so
a replica runs exactly the in-process policy, over the pieces of every front end that routed to it.

Per call (one piece, from any front end)::

    __call__(item)  -> Piece(session=(front end, session), context=(front end, context)) -> Scheduler
    replica loop    -> batch -> EngineWorker thread -> results -> each caller's future
    result.extra    =  {"replica", "batch_size", "batch_front_ends", "service_s", "replica_stats"}

Deterministic across replicas: an item's seed is derived from the item (``default_seed``) and the
engine's output does not depend on the batch, so a piece retried on another replica (its replica
died) gives the same audio. ``check_health`` fails once the engine failed whole batches
``MAX_CONSECUTIVE_FAILURES`` times in a row, and Ray Serve replaces the replica.

Deploy with ``serve run configs/ray-serve.yaml`` (``import_path: gateway.engines.ray_serve:build_app``)
or ``voxgate ray up``; ``ray[serve]`` comes with ``pip install 'voxgate[ray]'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import ray
from ray import serve

from gateway.config import REPO_ROOT, Config, ConfigError, load_config
from gateway.engines import create_engine
from gateway.engines.base import SynthesisItem, SynthesisResult
from gateway.engines.worker import EngineWorker
from gateway.errors import EngineFailed
from gateway.scheduler import Batch, Piece, Scheduler

__all__ = ["EngineReplica", "build_app", "replica_config", "local_deployment", "replica_actor_names", "DEPLOYMENT_NAME", "APP_NAME"]

logger = logging.getLogger("voxgate.ray")

DEPLOYMENT_NAME = "EngineReplica"
APP_NAME = "voxgate"
#: Pieces one replica accepts at once: enough for its scheduler to have company to batch with
#: (Ray Serve's default of 5 would cap a batch at 5 pieces across all front ends).
MAX_ONGOING_PIECES = 128


def replica_config(args: Mapping[str, Any] | None) -> Config:
    """The replica's voxgate config: ``args["config"]`` (a TOML path, optional) plus ``args["set"]``
    (dotted overrides) over the defaults and the replica's ``VOXGATE_*`` environment."""
    args = dict(args or {})
    path = args.get("config") or None
    if path is not None and not Path(path).is_absolute() and not Path(path).exists():
        # A replica's working directory is Ray's, not the checkout's: configs/... means the repo's.
        path = REPO_ROOT / path
    config = load_config(path, overrides=dict(args.get("set") or {}))
    if config.engine.kind == "ray":
        raise ConfigError('an engine replica cannot use engine.kind = "ray" (it would call itself)')
    return config


@serve.deployment(
    name=DEPLOYMENT_NAME,
    max_ongoing_requests=MAX_ONGOING_PIECES,
    health_check_period_s=5,
    health_check_timeout_s=30,
    graceful_shutdown_timeout_s=10,
    # One access-log line per piece is CPU spent on every hop; errors are still logged.
    logging_config={"enable_access_log": False},
)
class EngineReplica:
    """One engine, one scheduler, pieces from any number of front ends."""

    def __init__(self, args: Mapping[str, Any] | None = None) -> None:
        self.config = replica_config(args)
        self.replica_id = _replica_id()
        engine_config = self.config.engine
        self.worker = EngineWorker(lambda: create_engine(engine_config), warmup=engine_config.warmup)
        self.engine = self.worker.start().result()
        self.scheduler = Scheduler(
            self.config.scheduler,
            engine_preferred_batch=self.engine.preferred_batch_size,
            engine_max_batch=self.engine.max_batch_size,
        )
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._in_flight: dict[tuple[str, str], int] = {}
        self.stats: dict[str, Any] = {
            "replica": self.replica_id,
            "batches": 0,
            "pieces": 0,
            "multi_front_end_batches": 0,
            "max_batch_front_ends": 0,
            "max_batch_size": 0,
            "expired": 0,
            "failed": 0,
            "front_ends": [],
        }
        logger.info("engine replica %s ready: %s", self.replica_id, self.engine.describe())

    # --- what front ends call --------------------------------------------------------------------

    async def describe(self) -> dict[str, Any]:
        """What a front end needs before serving: voices, vocabulary, batch limits, sample rate."""
        return {
            **self.engine.describe(),
            "voices": self.engine.voices(),
            "vocab": "".join(sorted(self.engine.vocab)),
            "sample_rate": self.engine.sample_rate,
            "replica": self.replica_id,
        }

    async def get_stats(self) -> dict[str, Any]:
        """This replica's counters (the one the router picked; every result carries them too)."""
        return self._snapshot()

    async def __call__(self, item: SynthesisItem, front_end: str = "", sent_at: float = 0.0) -> SynthesisResult | EngineFailed:
        """Synthesize one piece, batched with whatever else this replica has queued. ``sent_at``: the
        caller's wall clock when it sent the piece (for the outbound half of the hop)."""
        received = time.perf_counter()
        outbound_s = time.time() - sent_at if sent_at else None
        loop = asyncio.get_running_loop()
        self._ensure_loop()
        now = loop.time()
        hints = item.hints
        session = (front_end, hints.session_id if hints else uuid.uuid4().hex)
        done: asyncio.Future[SynthesisResult | EngineFailed] = loop.create_future()
        self.scheduler.add(
            Piece(
                session_key=session,
                # Context ids are the client's: unique within its session only.
                context_key=(*session, hints.context_id if hints else ""),
                phonemes=item.phonemes,
                voice=item.voice,
                speed=item.speed,
                arrival=now,
                priority=hints.priority if hints else 0,
                is_first=hints.is_first if hints else False,
                start_deadline=None if hints is None or hints.start_within_s is None else now + hints.start_within_s,
                deadline=now + hints.due_in_s if hints else None,
                # The item itself rides along: the engine gets it whole (trim flags, seed, text).
                payload=(done, front_end, item),
                seed=item.effective_seed(),
                text=item.text,
            )
        )
        self._in_flight[session] = self._in_flight.get(session, 0) + 1
        assert self._wake is not None
        self._wake.set()
        try:
            result = await done
        finally:
            self._release(session)
        if isinstance(result, SynthesisResult):
            extra = {**result.extra, "service_s": time.perf_counter() - received, "outbound_s": outbound_s}
            result = dataclasses.replace(result, extra=extra)
        return result

    async def synthesize_many(self, items: list[SynthesisItem], front_end: str = "", sent_at: float = 0.0) -> list[SynthesisResult | EngineFailed]:
        """Several pieces in one request (``engine.ray_pieces_per_request`` > 1): one hop for all."""
        return list(await asyncio.gather(*(self(item, front_end, sent_at) for item in items)))

    def check_health(self) -> None:
        """Ray Serve calls this periodically; raising takes the replica out and starts a new one."""
        if not self.worker.alive:
            raise RuntimeError(f"engine replica {self.replica_id}: engine failed {self.worker.failed_batches_in_row} batches in a row")
        if self._loop_task is not None and self._loop_task.done():
            raise RuntimeError(f"engine replica {self.replica_id}: scheduler loop ended")

    async def close(self) -> None:
        """Stop the scheduler loop and the engine (Serve calls ``__del__`` at shutdown)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        await asyncio.to_thread(self.worker.stop)

    def __del__(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        self.worker.stop()

    # --- the replica's scheduler loop (mirrors ``Gateway._scheduler_loop``) --------------------------

    def _ensure_loop(self) -> None:
        if self._loop_task is None:
            self._wake = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._scheduler_loop(), name="voxgate-replica-scheduler")
            self._loop_task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        # A bug, not a bad piece: say so; check_health then has Ray Serve replace this replica.
        if not task.cancelled() and task.exception() is not None:
            logger.error("engine replica %s: scheduler loop failed", self.replica_id, exc_info=task.exception())

    def _release(self, session: tuple[str, str]) -> None:
        left = self._in_flight.get(session, 1) - 1
        if left > 0:
            self._in_flight[session] = left
            return
        # Nothing of this session is queued or running here: forget it, so the scheduler's tables
        # do not grow with every session any front end ever had.
        self._in_flight.pop(session, None)
        self.scheduler.cancel_session(session)

    async def _scheduler_loop(self) -> None:
        loop = asyncio.get_running_loop()
        scheduler = self.scheduler
        assert self._wake is not None
        while True:
            self._wake.clear()
            now = loop.time()
            batch = scheduler.schedule(now)
            for piece in scheduler.take_expired():
                self.stats["expired"] += 1
                _settle(piece, EngineFailed("time to live ran out before this piece could start", code="ttl_expired"))
            if batch is None:
                deadline = scheduler.next_deadline(now)
                timeout = None if deadline is None else max(0.0, deadline - now)
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    pass
                continue
            await self._run_batch(batch)

    async def _run_batch(self, batch: Batch) -> None:
        loop = asyncio.get_running_loop()
        items: list[SynthesisItem] = [p.payload[2] for p in batch.pieces]
        try:
            outcome: list[Any] = await asyncio.wrap_future(self.worker.submit(items))
        except Exception:
            logger.error("engine replica %s: engine worker failed", self.replica_id, exc_info=True)
            outcome = [EngineFailed("synthesis failed") for _ in items]
        front_ends = {p.payload[1] for p in batch.pieces}
        self._count(batch, front_ends, outcome)
        snapshot = self._snapshot()
        for piece, result in self.scheduler.complete(batch, outcome, now=loop.time()):
            if isinstance(result, SynthesisResult):
                result = dataclasses.replace(
                    result,
                    extra={
                        **result.extra,
                        "replica": self.replica_id,
                        "batch_size": len(batch.pieces),
                        "batch_front_ends": len(front_ends),
                        "replica_stats": snapshot,
                    },
                )
            _settle(piece, result)
            self.scheduler.finish_context(piece.context_key)

    def _count(self, batch: Batch, front_ends: set[str], outcome: list[Any]) -> None:
        stats = self.stats
        stats["batches"] += 1
        stats["pieces"] += len(batch.pieces)
        stats["failed"] += sum(1 for r in outcome if isinstance(r, EngineFailed))
        stats["max_batch_size"] = max(stats["max_batch_size"], len(batch.pieces))
        stats["max_batch_front_ends"] = max(stats["max_batch_front_ends"], len(front_ends))
        if len(front_ends) > 1:
            stats["multi_front_end_batches"] += 1
        known = set(stats["front_ends"])
        stats["front_ends"] = sorted(known | front_ends)

    def _snapshot(self) -> dict[str, Any]:
        return {**self.stats, "front_ends": list(self.stats["front_ends"]), "queued": self.scheduler.num_queued}


def _settle(piece: Piece, result: Any) -> None:
    done: asyncio.Future[Any] = piece.payload[0]
    if not done.done():
        done.set_result(result)


def _replica_id() -> str:
    """Ray Serve's id of this replica (unique across restarts), or a fresh one outside Serve."""
    try:
        context = serve.get_replica_context()
        replica = getattr(context, "replica_id", None)
        return str(getattr(replica, "unique_id", None) or getattr(context, "replica_tag", None) or uuid.uuid4().hex[:8])
    except Exception:  # noqa: BLE001 - not inside a replica (unit use)
        return uuid.uuid4().hex[:8]


def build_app(args: Mapping[str, Any] | None = None) -> serve.Application:
    """The Serve application (``import_path: gateway.engines.ray_serve:build_app``).

    ``args``: ``config`` (TOML path) and ``set`` (dotted overrides) for the replicas' voxgate config;
    ``num_replicas`` (default 1), ``num_gpus`` per replica (default 1 when the config's device is
    CUDA or "auto" on a cluster with GPUs, else 0) and ``num_cpus`` per replica (default 1).
    Deployment options in a Serve config file (``deployments:``) override these.
    """
    args = dict(args or {})
    config = replica_config(args)
    num_gpus = args.get("num_gpus")
    if num_gpus is None:
        num_gpus = 1 if config.engine.device.startswith("cuda") else 0
    options: dict[str, Any] = {
        "num_replicas": int(args.get("num_replicas", 1)),
        "ray_actor_options": {"num_gpus": float(num_gpus), "num_cpus": float(args.get("num_cpus", 1))},
    }
    replica_args = {"config": args.get("config"), "set": dict(args.get("set") or {})}
    return EngineReplica.options(**options).bind(replica_args)


@contextlib.contextmanager
def local_deployment(app_args: Mapping[str, Any], *, num_cpus: int = 2) -> Iterator[None]:
    """A local Ray (no dashboard) with the engine replicas deployed as ``APP_NAME``; shut down on exit.

    For tests, ``voxgate bench load --ray`` and trying it out: front ends in this process then use
    ``engine.kind = "ray"`` (``ray_address`` is ignored: Ray is already initialized). Workers import
    ``gateway`` from this checkout (``PYTHONPATH``), whatever is installed.
    """
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}},
    )
    try:
        serve.start(proxy_location="Disabled")  # no HTTP proxy: front ends call handles
        serve.run(build_app(app_args), name=APP_NAME, route_prefix=None)
        yield
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


def replica_actor_names(app: str = APP_NAME, deployment: str = DEPLOYMENT_NAME) -> list[str]:
    """Names of the live engine replica actors (namespace ``serve``), e.g. to ``ray.kill`` one."""
    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix))
