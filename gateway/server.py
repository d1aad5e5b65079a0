"""The gateway server: asyncio glue around the sans-I/O ``Hub`` (``gateway.hub``).

It moves bytes and futures, and decides nothing: per connection, ``async for raw in ws`` ->
``hub.receive``; one writer task per session sends what ``hub.next_outgoing`` gives; one timer per
session fires ``hub.timeout`` at ``hub.deadline_of``; G2P jobs go to the G2P thread and batches to
the engine thread, their results come back as ``hub.phonemes_ready`` / ``hub.batch_done``. After
every input ``_carry_out()`` does what the hub asked. Admission, resume, detach vs end, pieces and
their deadlines, failures and the drain live in the hub (and in ``session`` and ``scheduler``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from gateway.adapters import find_adapter, serve_adapter
from gateway.config import Config
from gateway.engines import Engine, create_engine
from gateway.engines.base import Head
from gateway.engines.facts import EngineFacts
from gateway.engines.worker import EngineWorker, G2PWorker
from gateway.errors import CloseCode
from gateway.http import (
    FrontDoor,
    FrontDoorLimits,
    HttpRequest,
    HttpResponse,
    static_file_response,
)
from gateway.hub import (
    STREAM_PATH,
    BatchJob,
    Hub,
    PhonemizeJob,
    Refusal,
    SessionEntry,
    authenticated,
    check_access,
)
from gateway.local import LocalConnection, LocalSession, LocalTransport
from gateway.logsafe import install as install_log_hygiene
from gateway.metrics import CONTENT_TYPE_LATEST, Metrics
from gateway.scheduler import Scheduler

__all__ = ["STREAM_PATH", "Gateway", "LocalConnection", "run"]

logger = logging.getLogger("voxgate.server")

Connection = ServerConnection | LocalConnection


@dataclass(eq=False)
class _Link:
    """What the server keeps per attached connection: the socket and its writer."""

    ws: Connection
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    writer: asyncio.Task[None] | None = None


class Gateway:
    """Owns the engine worker, the G2P worker, the hub and the listening socket.

    Use ``async with Gateway(config) as gw: await gw.serve_forever()`` or ``start()``/``stop()``;
    ``gw.port`` is the bound port (useful with port 0 in tests).
    """

    def __init__(self, config: Config, *, engine_factory: Callable[[], Engine] | None = None) -> None:
        self.config = config
        install_log_hygiene([config.server.auth_token])
        self.metrics = Metrics()
        self._engine_factory = engine_factory or (lambda: create_engine(config.engine))
        self.worker = EngineWorker(self._engine_factory, warmup=config.engine.warmup)
        self.g2p = G2PWorker(self._make_g2p, budget_s=config.engine.g2p_budget_s)
        self.hub: Hub | None = None
        self.engine: Engine | None = None
        #: Read once on the engine thread at load (see ``EngineFacts``).
        self.engine_facts: EngineFacts | None = None
        self._front_door: FrontDoor | None = None
        self._links: dict[SessionEntry, _Link] = {}
        self._timers: dict[SessionEntry, asyncio.TimerHandle] = {}
        self._wake = asyncio.Event()
        self._scheduler_task: asyncio.Task[None] | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self._ws_server: Server | None = None
        self._stopping = False
        self.port = 0
        self._web_root = Path(config.server.web_demo_dir)
        self.extra_routes: dict[tuple[str, str], Callable[[HttpRequest], Any]] = {}
        self._background: set[asyncio.Task[None]] = set()
        from gateway.openai_api import register as register_openai_routes

        register_openai_routes(self)

    @property
    def scheduler(self) -> Scheduler | None:
        return self.hub.scheduler if self.hub is not None else None

    @property
    def _runtimes(self) -> dict[str, SessionEntry]:
        """Every session by id, attached or detached (tests look here)."""
        return self.hub.sessions if self.hub is not None else {}

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the engine (on its thread) and G2P, then listen. Returns once serving."""
        loop = asyncio.get_running_loop()
        self.engine = await asyncio.wrap_future(self.worker.start())
        facts = self.engine_facts = self.worker.facts
        assert facts is not None
        self.hub = Hub(
            self.config,
            voices=facts.voices,
            langs=self._available_langs(),
            engine_preferred_batch=facts.preferred_batch_size,
            engine_max_batch=facts.max_batch_size,
            schedules_remotely=self.engine.schedules_remotely,
            metrics=self.metrics,
        )
        preload = [lang for lang in self.config.engine.preload_langs if lang in self.hub.langs]
        await asyncio.wrap_future(self.g2p.preload(preload))
        self.metrics.engine_ready.set(1)
        self._scheduler_task = loop.create_task(self._scheduler_loop(), name="voxgate-scheduler")
        self._lag_task = loop.create_task(self._watch_loop_lag(), name="voxgate-loop-lag")
        server_config = self.config.server
        self._front_door = FrontDoor(self._handle_http, FrontDoorLimits.from_config(server_config))
        self._ws_server = await serve(
            self._handle_ws,
            server_config.host,
            server_config.port,
            create_connection=self._front_door.connection_class,
            process_request=self._process_request,
            # Our own limit (max_message_bytes) answers with an error and keeps the session; this hard
            # limit, far above it, closes with 1009 before a huge message is even buffered.
            max_size=4 * server_config.max_message_bytes,
            ping_interval=server_config.ping_interval_s or None,
            write_limit=2**16,
            logger=logging.getLogger("voxgate.websockets"),
        )
        self.port = self._ws_server.sockets[0].getsockname()[1]
        logger.info(
            "voxgate listening on ws://%s:%d%s (engine %s, batch limit %d, mode %s)",
            server_config.host,
            self.port,
            STREAM_PATH,
            facts.name,
            self.hub.scheduler.max_batch_pieces,
            self.hub.scheduler.mode,
        )

    async def stop(self, *, grace_s: float | None = None) -> None:
        """Graceful shutdown: stop accepting, let open contexts finish within ``grace_s``, close every
        session with 1012, stop the engine thread last."""
        grace = self.config.server.shutdown_grace_s if grace_s is None else grace_s
        if self._stopping:
            return  # idempotent: a second stop (a second signal, an outer context manager) is a no-op
        self._stopping = True
        if self._ws_server is not None:
            self._ws_server.close(close_connections=False)
        if self._front_door is not None:
            self._front_door.close()
        hub = self.hub
        if hub is not None:
            hub.drain(asyncio.get_running_loop().time())
            self._carry_out()
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and hub.has_pending_work:
                await asyncio.sleep(0.05)
            for entry in hub.attached():
                link = self._links.get(entry)
                if link is not None:
                    with contextlib.suppress(Exception):
                        await link.ws.close(CloseCode.SERVICE_RESTART, "server shutting down")
        if self._ws_server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws_server.wait_closed(), timeout=5)
        for task in (self._scheduler_task, self._lag_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if hub is not None:
            hub.stop()
            self._carry_out()
        self.g2p.stop()
        await asyncio.to_thread(self.worker.stop)
        self.metrics.engine_ready.set(0)

    @property
    def scheduler_alive(self) -> bool:
        """Whether the scheduler loop runs (readiness: without it no session gets audio)."""
        return self._scheduler_task is not None and not self._scheduler_task.done()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(grace_s=0)

    # --- engine-side helpers --------------------------------------------------------------------

    def _make_g2p(self, lang: str) -> Any:
        from gateway.text.g2p import G2P

        vocab = self.engine.vocab if self.engine is not None and self.engine.vocab else None
        return G2P(lang, vocab=vocab)

    def _available_langs(self) -> list[str]:
        from gateway.text.g2p import available_languages

        langs = list(available_languages())
        default = self.config.session.default_lang
        return sorted(langs, key=lambda lang: (lang != default, lang))

    # --- connections ----------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        assert self.hub is not None
        path, _, query = request.path.partition("?")
        refusal = self.hub.check_handshake(path, request.headers, parse_qs(query), adapter=find_adapter(path))
        return None if refusal is None else connection.respond(refusal[0], refusal[1] + "\n")

    async def _handle_ws(self, ws: ServerConnection) -> None:
        path, _, query = ws.request.path.partition("?") if ws.request is not None else ("", "", "")
        adapter = find_adapter(path)
        if adapter is not None:
            await serve_adapter(self, ws, adapter)
            return
        await self._serve_session(ws, query)

    @contextlib.asynccontextmanager
    async def open_local_session(self, *, max_queue: int = 256) -> AsyncIterator[LocalSession]:
        """An in-process session on the hub (see ``gateway.local.LocalSession``), ended on exit;
        ``max_queue`` messages wait unread before the session's writer waits (backpressure)."""
        conn = LocalConnection(max_queue=max_queue)
        task = asyncio.get_running_loop().create_task(self._serve_session(conn, ""))
        try:
            yield LocalSession(conn)
        finally:
            conn.close_input()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, timeout=5)

    async def open_transport(self) -> LocalTransport:
        """An in-process session as a ``gateway.client`` transport (``VoxgateClient.local``)."""
        stack = contextlib.AsyncExitStack()
        session = await stack.enter_async_context(self.open_local_session())
        return LocalTransport(session, stack)

    async def _serve_session(self, ws: Connection, query: str) -> None:
        loop = asyncio.get_running_loop()
        hub = self.hub
        assert hub is not None
        request = getattr(ws, "request", None)
        opened = hub.open(headers=request.headers if request is not None else {}, query=query, now=loop.time())
        if isinstance(opened, Refusal):
            with contextlib.suppress(ConnectionClosed):
                for message in opened.messages:
                    await ws.send(message)
                await ws.close(opened.close_code, opened.reason)
            return
        entry = opened
        link = self._links[entry] = _Link(ws)
        link.writer = loop.create_task(self._writer(entry, link), name=f"voxgate-writer-{entry.session.log_tag}")
        self._carry_out()
        try:
            async for raw in ws:
                if not hub.receive(entry, raw, loop.time()):
                    break
                self._carry_out()
        except ConnectionClosed:
            pass
        finally:
            if link.writer is not None:
                link.writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await link.writer
            if self._links.get(entry) is link:
                del self._links[entry]
            hub.connection_lost(entry, ws.close_code, loop.time())
            self._carry_out()

    async def _writer(self, entry: SessionEntry, link: _Link) -> None:
        """The only code that writes to this session's socket."""
        loop = asyncio.get_running_loop()
        hub = self.hub
        assert hub is not None
        try:
            while True:
                await link.wake.wait()
                link.wake.clear()
                while (message := hub.next_outgoing(entry, loop.time())) is not None:
                    await link.ws.send(message)
                    if hub.take_scheduler_wake():
                        self._wake.set()
                close = entry.close_request
                if close is not None:
                    await link.ws.close(*close)
                    return
        except ConnectionClosed:
            return

    def _carry_out(self) -> None:
        """Do what the hub asked after its last input: G2P jobs, timers, writers, closes."""
        hub = self.hub
        assert hub is not None
        tags, owners = hub.phonemize_to_cancel()
        for tag in tags:
            self.g2p.cancel(tag)
        for owner in owners:
            self.g2p.cancel_owner(owner)
        for job in hub.phonemize_to_run():
            self._phonemize(job)
        for entry, deadline in hub.timers_to_arm():
            self._arm_timer(entry, deadline)
        for entry in hub.sessions_to_write():
            link = self._links.get(entry)
            if link is not None:
                link.wake.set()
        for entry, code, reason in hub.connections_to_close():
            self._close_connection(entry, code, reason)
        for entry in hub.sessions_ended():
            timer = self._timers.pop(entry, None)
            if timer is not None:
                timer.cancel()
            link = self._links.pop(entry, None)
            if link is not None and link.writer is not None:
                link.writer.cancel()
        if hub.take_scheduler_wake():
            self._wake.set()

    def _arm_timer(self, entry: SessionEntry, deadline: float | None) -> None:
        timer = self._timers.get(entry)
        if timer is not None:
            if deadline is not None and abs(timer.when() - deadline) < 1e-4:
                return
            timer.cancel()
            del self._timers[entry]
        if deadline is not None:
            self._timers[entry] = asyncio.get_running_loop().call_at(deadline, self._on_timer, entry)

    def _on_timer(self, entry: SessionEntry) -> None:
        self._timers.pop(entry, None)
        assert self.hub is not None
        self.hub.timeout(entry, asyncio.get_running_loop().time())
        self._carry_out()

    def _close_connection(self, entry: SessionEntry, code: int, reason: str) -> None:
        """Close a session's connection. The writer gets a moment to send what is queued (the error
        saying why); a client that does not read is closed anyway."""
        link = self._links.get(entry)
        if link is None:
            return
        ws, writer = link.ws, link.writer

        async def close() -> None:
            if writer is not None:
                await asyncio.wait({writer}, timeout=1.0)
            with contextlib.suppress(Exception):
                await ws.close(code, reason)

        self._spawn(close())

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        """A background task kept referenced until it ends (the loop holds tasks only weakly)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # --- G2P and engine threads -----------------------------------------------------------------

    def _phonemize(self, job: PhonemizeJob) -> None:
        loop = asyncio.get_running_loop()
        request = job.request
        future = self.g2p.submit(job.text, job.lang, owner=job.entry.session, tag=request.context, seam=request.context.segmenter.seam(request.ordinal))
        # The G2P thread completes a session's jobs in submission order (round-robin across sessions),
        # and call_soon_threadsafe keeps that order.
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(self._on_phonemes, job, f))

    def _on_phonemes(self, job: PhonemizeJob, future: Any) -> None:
        if future.cancelled() or self.hub is None:
            return
        error = future.exception()
        self.hub.phonemes_ready(job, error if error is not None else future.result(), asyncio.get_running_loop().time())
        self._carry_out()

    async def _watch_loop_lag(self, period_s: float = 0.25) -> None:
        """Measure how late the loop wakes up: anything blocking it shows here."""
        loop = asyncio.get_running_loop()
        worst = 0.0
        while True:
            expected = loop.time() + period_s
            await asyncio.sleep(period_s)
            lag = max(0.0, loop.time() - expected)
            self.metrics.loop_lag.observe(lag)
            if lag > worst:
                worst = lag
                self.metrics.loop_lag_max.set(lag)
            if lag > 1.0:
                logger.warning("event loop ran %.2f s late", lag)

    async def _scheduler_loop(self) -> None:
        loop = asyncio.get_running_loop()
        hub = self.hub
        assert hub is not None
        while True:
            self._wake.clear()
            now = loop.time()
            try:
                job = hub.next_batch(now)
            except Exception:
                # A bug, not a client's doing; the loop must outlive it (everyone's audio needs it).
                logger.error("scheduler step failed", exc_info=True)
                await asyncio.sleep(0.05)
                continue
            finally:
                self._carry_out()
            if job is None:
                deadline = hub.next_batch_deadline(now)
                timeout = None if deadline is None else max(0.0, deadline - now)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            await self._run_batch(job)

    async def _run_batch(self, job: BatchJob) -> None:
        assert self.hub is not None
        started = time.perf_counter()
        loop = asyncio.get_running_loop()

        def on_head(index: int, head: Head) -> None:
            # The engine thread: the head goes to the loop, ahead of the batch's result (FIFO).
            loop.call_soon_threadsafe(self._deliver_head, job, index, head)

        wants_heads = any(item.stream_head for item in job.items)
        try:
            outcome: list[Any] | None = await asyncio.wrap_future(self.worker.submit(job.items, on_head if wants_heads else None))
        except Exception:
            logger.error("engine worker failed", exc_info=True)
            outcome = None
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.engine_ready.set(1 if self.worker.alive else 0)
        now = asyncio.get_running_loop().time()
        if outcome is None:
            self.hub.batch_failed(job, now)
        else:
            self.hub.batch_done(job, outcome, now)
        self._carry_out()

    def _deliver_head(self, job: BatchJob, index: int, head: Head) -> None:
        assert self.hub is not None
        try:
            self.hub.piece_head(job, index, head, asyncio.get_running_loop().time())
        except Exception:
            # A bug, not a client's doing: the piece's result still carries all of its audio.
            logger.error("delivering a head failed", exc_info=True)
        self._carry_out()

    # --- plain HTTP -----------------------------------------------------------------------------

    async def _handle_http(self, request: HttpRequest) -> HttpResponse:
        server = self.config.server
        route = self.extra_routes.get((request.method, request.path))
        if route is not None:
            refusal = check_access(server, request.headers, request.query)
            if refusal is not None:
                return HttpResponse.text(*refusal)
            return await route(request)
        if request.method not in ("GET", "HEAD"):
            return HttpResponse.text(405, "method not allowed")
        # Health probes stay open (load balancers carry no token) but say nothing internal; the
        # demo page and its files are public too (the page needs the token, ?token=, to open a
        # session); metrics need the token unless server.metrics_public.
        if request.path == "/healthz":
            return HttpResponse.json(200, {"status": "ok"})
        if request.path == "/readyz":
            return self._readiness(request)
        if request.path == "/metrics":
            if server.auth_token and not server.metrics_public and not authenticated(server, request.headers, request.query):
                return HttpResponse.text(401, "missing or wrong token")
            if self.hub is not None:
                self.metrics.queue_depth.set(self.hub.scheduler.num_queued)
            return HttpResponse(200, self.metrics.render(), content_type=CONTENT_TYPE_LATEST)
        if request.path == STREAM_PATH:
            return HttpResponse.text(426, "this endpoint speaks WebSocket")
        path = request.path.removeprefix("/web-demo")
        response = static_file_response(self._web_root, path)
        return response or HttpResponse.text(404, "not found")

    def _readiness(self, request: HttpRequest) -> HttpResponse:
        """``/readyz``: ready or not for anyone; engine facts without paths when no token is set,
        the engine's full description (device, weights source) only with the token."""
        hub = self.hub
        ready = self.worker.alive and hub is not None and not hub.draining and self.scheduler_alive
        body: dict[str, Any] = {"ready": ready}
        facts = self.engine_facts
        if facts is not None:
            if not self.config.server.auth_token:
                body["engine"] = facts.public()
            elif authenticated(self.config.server, request.headers, request.query):
                body["engine"] = dict(facts.description)
        return HttpResponse.json(200 if ready else 503, body)


def run(config: Config) -> int:
    """Serve until SIGINT/SIGTERM, then shut down gracefully. Returns the process exit code."""

    async def main() -> int:
        gateway = Gateway(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await gateway.start()
        print(
            f"voxgate: ws://{config.server.host}:{gateway.port}{STREAM_PATH}  demo: http://{config.server.host}:{gateway.port}/",
            flush=True,
        )
        await stop.wait()
        logger.info("shutting down (grace %.1f s)", config.server.shutdown_grace_s)
        await gateway.stop()
        return 0

    if config.server.use_uvloop:
        try:
            import uvloop

            return uvloop.run(main())
        except ImportError:
            logger.warning("uvloop not installed; using asyncio's default loop")
    return asyncio.run(main())
