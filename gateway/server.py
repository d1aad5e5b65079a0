"""The gateway server: asyncio glue between WebSocket sessions, the scheduler and the engine thread.

Per connection: ``async for raw in ws`` -> ``Session.receive_text`` -> pieces go to the G2P thread ->
``Scheduler.add``. One scheduler task sleeps until ``next_deadline`` or a wake-up, hands each batch to
the engine thread and routes results back to the sessions that own them. One writer task per session
drains that session's outbox into its own socket; a per-session timer runs ``receive_timeout``.
Decisions about budgets, order and states live in ``scheduler`` and ``session``, not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import secrets
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from gateway.adapters import Adapter, adapter_key_refusal, find_adapter, serve_adapter
from gateway.config import Config
from gateway.engines import Engine, SynthesisItem, create_engine
from gateway.engines.base import ScheduleHints
from gateway.engines.facts import EngineFacts
from gateway.engines.worker import EngineWorker, G2PWorker
from gateway.errors import (
    CloseCode,
    EngineFailed,
    ProtocolError,
    SessionRefused,
)
from gateway.http import (
    FrontDoor,
    FrontDoorLimits,
    HttpRequest,
    HttpResponse,
    static_file_response,
)
from gateway.logsafe import install as install_log_hygiene
from gateway.metrics import CONTENT_TYPE_LATEST, Metrics
from gateway.protocol import context_id_of, dumps
from gateway.scheduler import FINISHED_REASONS, Batch, Piece, Scheduler
from gateway.session import Context, PieceRequest, Session, SessionState
from gateway.text.g2p import G2PTooSlow

__all__ = ["Gateway", "LocalConnection", "run", "STREAM_PATH"]

logger = logging.getLogger("voxgate.server")

STREAM_PATH = "/v1/stream"
#: Kokoro speaks ~12-14 phonemes per second at speed 1: an estimate for playback deadlines.
SECONDS_PER_PHONEME = 0.075


class LocalConnection:
    """An in-process session connection with a WebSocket's surface, for callers inside the server
    process (the OpenAI-style HTTP endpoint, ``voxgate say --local``, integrations): their sessions go
    through the same scheduler, limits and isolation as WebSocket ones.

    Client side: ``await conn.send_json(message)``, ``async for item in conn.events()`` (``str`` JSON
    or ``bytes`` frames, exactly as a WebSocket client would receive them), ``conn.close_input()``.
    """

    def __init__(self, *, max_queue: int = 256) -> None:
        self.request = None
        self.close_code: int | None = None
        self._to_client: asyncio.Queue[str | bytes | None] = asyncio.Queue(maxsize=max_queue)
        self._to_server: asyncio.Queue[str | bytes | None] = asyncio.Queue()

    # server side: what the gateway calls (as on a websockets ServerConnection)
    async def send(self, message: str | bytes) -> None:
        await self._to_client.put(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.close_code is None:
            self.close_code = code
            self._to_server.put_nowait(None)
            await self._to_client.put(None)

    def __aiter__(self) -> LocalConnection:
        return self

    async def __anext__(self) -> str | bytes:
        item = await self._to_server.get()
        if item is None:
            raise StopAsyncIteration
        return item

    # client side
    async def send_json(self, message: dict[str, Any]) -> None:
        await self._to_server.put(dumps(message))

    def close_input(self) -> None:
        # The client is done: a clean close, so the session ends instead of waiting for a resume.
        if self.close_code is None:
            self.close_code = CloseCode.NORMAL
        self._to_server.put_nowait(None)

    async def events(self) -> AsyncIterator[str | bytes]:
        while (item := await self._to_client.get()) is not None:
            yield item


Connection = ServerConnection | LocalConnection


@dataclass(eq=False)
class _Runtime:
    """What the server keeps per session beside the sans-I/O ``Session``."""

    session: Session
    ws: Connection | None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    writer: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None
    #: Frames replayed after a resume must leave before anything newer: the writer waits for this.
    replay: asyncio.Task[None] | None = None
    #: Digest of the auth token the session was opened with: a resume must present the same one.
    auth_digest: bytes = b""
    #: A close of this connection is under way (closing is idempotent: timers may ask again).
    closing: bool = False


class Gateway:
    """Owns the engine worker, the scheduler, the sessions and the listening socket.

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
        self.scheduler: Scheduler | None = None
        self.engine: Engine | None = None
        #: Read once on the engine thread at load (see ``EngineFacts``).
        self.engine_facts: EngineFacts | None = None
        self._front_door: FrontDoor | None = None
        self._runtimes: dict[str, _Runtime] = {}
        self._wake = asyncio.Event()
        self._scheduler_task: asyncio.Task[None] | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self._ws_server: Server | None = None
        self._draining = False
        self._stopping = False
        self._voices: list[str] = []
        self._langs: list[str] = []
        self.port = 0
        self._web_root = Path(config.server.web_demo_dir)
        self.extra_routes: dict[tuple[str, str], Callable[[HttpRequest], Any]] = {}
        self._background: set[asyncio.Task[None]] = set()
        from gateway.openai_api import register as register_openai_routes

        register_openai_routes(self)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the engine (on its thread) and G2P, then listen. Returns once serving."""
        loop = asyncio.get_running_loop()
        self.engine = await asyncio.wrap_future(self.worker.start())
        facts = self.engine_facts = self.worker.facts
        assert facts is not None
        self._voices = list(facts.voices)
        self._langs = self._available_langs()
        self.scheduler = Scheduler(
            self.config.scheduler,
            engine_preferred_batch=facts.preferred_batch_size,
            engine_max_batch=facts.max_batch_size,
        )
        preload = [lang for lang in self.config.engine.preload_langs if lang in self._langs]
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
            self.scheduler.max_batch_pieces,
            self.scheduler.mode,
        )

    async def stop(self, *, grace_s: float | None = None) -> None:
        """Graceful shutdown: stop accepting, let open contexts finish within ``grace_s``, close every
        session with 1012, stop the engine thread last."""
        grace = self.config.server.shutdown_grace_s if grace_s is None else grace_s
        if self._stopping:
            return  # idempotent: a second stop (a second signal, an outer context manager) is a no-op
        self._stopping = True
        self._draining = True
        if self._ws_server is not None:
            self._ws_server.close(close_connections=False)
        if self._front_door is not None:
            self._front_door.close()
        now = asyncio.get_running_loop().time()
        for rt in list(self._runtimes.values()):
            if rt.ws is not None and rt.session.state is SessionState.OPEN:
                # Open contexts are finished as if flushed: all their text is spoken within the grace.
                rt.session.drain(now)
                self._pump(rt)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(
            rt.session.contexts or rt.session.has_outgoing for rt in self._runtimes.values() if rt.ws is not None
        ):
            await asyncio.sleep(0.05)
        for rt in list(self._runtimes.values()):
            if rt.ws is not None:
                with contextlib.suppress(Exception):
                    await rt.ws.close(CloseCode.SERVICE_RESTART, "server shutting down")
        if self._ws_server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws_server.wait_closed(), timeout=5)
        for task in (self._scheduler_task, self._lag_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for rt in list(self._runtimes.values()):
            self._drop_runtime(rt)
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

    # --- admission ------------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        adapter = find_adapter(path)  # vendor-compatible endpoints (gateway/adapters)
        if path != STREAM_PATH and adapter is None:
            return connection.respond(404, f"WebSocket endpoint is {STREAM_PATH}\n")
        refusal = self._check_access(request.headers, parse_qs(query), adapter=adapter)
        if refusal is not None:
            status, text = refusal
            self.metrics.sessions_refused.labels(reason=str(status)).inc()
            return connection.respond(status, text + "\n")
        if self._draining:
            return connection.respond(503, "server shutting down\n")
        return None

    def _check_access(
        self, headers: Headers | dict[str, str], query: dict[str, list[str]], *, adapter: Adapter | None = None
    ) -> tuple[int, str] | None:
        """(status, text) when a request must be refused: a disallowed Origin, then a missing or wrong
        token (for a vendor-compatible endpoint, the key where that vendor sends it)."""
        # The front door refuses a request with two Origin or Authorization headers, so one
        # value (or none) is all there is to read here.
        server = self.config.server
        if server.allowed_origins:
            origin = headers.get("Origin") or headers.get("origin")
            if origin is not None and origin not in server.allowed_origins:
                return 403, "origin not allowed"
        if adapter is not None:
            return adapter_key_refusal(adapter, server.auth_token, headers, query)
        if server.auth_token and not self._authenticated(headers, query):
            return 401, "missing or wrong token"
        return None

    def _authenticated(self, headers: Headers | dict[str, str], query: dict[str, list[str]]) -> bool:
        """True when a token is configured and the request carries it (compared in constant time)."""
        token = self.config.server.auth_token
        if not token:
            return False
        return hmac.compare_digest(_presented_token(headers, query).encode(), token.encode())

    # --- WebSocket sessions ---------------------------------------------------------------------

    async def _handle_ws(self, ws: ServerConnection) -> None:
        query = ws.request.path.partition("?")[2] if ws.request is not None else ""
        adapter = find_adapter(ws.request.path.partition("?")[0]) if ws.request is not None else None
        if adapter is not None:
            await serve_adapter(self, ws, adapter)
            return
        await self._serve_session(ws, query)

    @contextlib.asynccontextmanager
    async def open_local_session(self) -> AsyncIterator[LocalConnection]:
        """An in-process session (see ``LocalConnection``); closed and cleaned up on exit."""
        conn = LocalConnection()
        task = asyncio.get_running_loop().create_task(self._serve_session(conn, ""))
        try:
            yield conn
        finally:
            conn.close_input()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, timeout=5)

    async def _serve_session(self, ws: Connection, query: str) -> None:
        loop = asyncio.get_running_loop()
        assert self.scheduler is not None
        auth_digest = _credential_digest(ws, query)
        rt = self._resume(ws, query, loop.time(), auth_digest)
        if rt is None:
            # Detached sessions hold their replay buffers and wait for a resume: they count too.
            if len(self._runtimes) >= self.config.server.max_sessions:
                self.metrics.sessions_refused.labels(reason="busy").inc()
                error = SessionRefused(f"server at its limit of {self.config.server.max_sessions} sessions; try again later")
                await ws.send(dumps({"type": "error", "code": error.code, "message": str(error)}))
                await ws.close(CloseCode.TRY_AGAIN_LATER, "busy")
                return
            session = Session(
                uuid.uuid4().hex,
                config=self.config.session,
                segmenter_config=self.config.segmenter,
                voices=self._voices,
                langs=self._langs,
                now=loop.time(),
                resume_token=secrets.token_urlsafe(32) if self.config.session.resume_grace_s > 0 else "",
                pace=self._seconds_per_token,
            )
            rt = _Runtime(session=session, ws=ws, auth_digest=auth_digest)
            self._runtimes[session.session_id] = rt
        self.metrics.active_sessions.inc()
        rt.writer = loop.create_task(self._writer(rt), name=f"voxgate-writer-{rt.session.session_id[:8]}")
        self._pump(rt)
        try:
            async for raw in ws:
                now = loop.time()
                if rt.session.state is not SessionState.OPEN:
                    break
                if rt.session.close_code is not None:
                    # Closing (violations, slow consumer): input is read and discarded until the close.
                    self._close_ws(rt)
                    continue
                if isinstance(raw, bytes):
                    rt.session.receive_binary(now)
                elif len(raw) > self.config.server.max_message_bytes:
                    rt.session.reject(
                        ProtocolError(
                            f"message over {self.config.server.max_message_bytes} bytes",
                            code="message_too_big",
                            context_id=context_id_of(raw),
                        ),
                        now,
                    )
                else:
                    rt.session.receive_text(raw, now)
                self._pump(rt)
        except ConnectionClosed:
            pass
        finally:
            self.metrics.active_sessions.dec()
            await self._detach(rt)

    def _resume(self, ws: Connection, query: str, now: float, auth_digest: bytes) -> _Runtime | None:
        """Reattach a detached session named in ``?session_id=...&resume_token=...&last_seq=N``;
        None: a new session. The resume token is the credential: it is compared in constant time,
        must come with the auth token the session was opened with, and is never logged."""
        params = parse_qs(query)
        session_id = (params.get("session_id") or [""])[0]
        if not session_id:
            return None
        rt = self._runtimes.get(session_id)
        token = (params.get("resume_token") or [""])[0]
        try:
            last_seq = int((params.get("last_seq") or ["-1"])[0])
        except ValueError:
            last_seq = -2
        replay = None
        if rt is not None and rt.ws is None and last_seq >= -1 and hmac.compare_digest(rt.auth_digest, auth_digest):
            replay = rt.session.resume(last_seq, now, token=token)
        if rt is None or replay is None:
            self._send_later(ws, {"type": "error", "code": "resume_failed", "message": "session unknown, expired or frames no longer buffered; starting a new session"})
            return None
        if rt.timer is not None:
            rt.timer.cancel()
        rt.ws = ws
        rt.closing = False
        rt.replay = self._send_later(ws, {"type": "session.resumed", "session_id": session_id, "replayed": len(replay)}, replay)
        return rt

    def _send_later(self, ws: Connection, message: dict[str, Any], frames: list[bytes] | None = None) -> asyncio.Task[None]:
        async def send() -> None:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(dumps(message))
                for frame in frames or ():
                    await ws.send(frame)

        # Sent before the writer task starts draining the outbox, so it comes first on the wire.
        return self._spawn(send())

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        """A background task kept referenced until it ends (the loop holds tasks only weakly)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _detach(self, rt: _Runtime) -> None:
        loop = asyncio.get_running_loop()
        session = rt.session
        if session.state is SessionState.OPEN:
            # A clean close from the client means it is done: only lost connections wait for a resume.
            if rt.ws is not None and rt.ws.close_code in (CloseCode.NORMAL, CloseCode.GOING_AWAY):
                for context in session.close():
                    self._cancel_context(context)
            else:
                session.detach(loop.time())
        if rt.writer is not None:
            rt.writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rt.writer
        rt.ws = None
        self._pump(rt)
        if session.state is SessionState.DETACHED:
            if rt.timer is not None:
                rt.timer.cancel()
            rt.timer = loop.call_later(self.config.session.resume_grace_s, self._expire_detached, rt)
        else:
            self._drop_runtime(rt)

    def _expire_detached(self, rt: _Runtime) -> None:
        if rt.ws is None:
            rt.session.close()
            self._drop_runtime(rt)

    def _drop_runtime(self, rt: _Runtime) -> None:
        for context in rt.session.close():
            self._cancel_context(context)
        if self.scheduler is not None:
            self.scheduler.cancel_session(rt.session)
        self.g2p.cancel_owner(rt.session)
        if rt.timer is not None:
            rt.timer.cancel()
        if rt.writer is not None:
            rt.writer.cancel()
        self._runtimes.pop(rt.session.session_id, None)

    def _pump(self, rt: _Runtime) -> None:
        """Move a session's pending work on: pieces to G2P, cancels and closes to the scheduler,
        backpressure, its timer, its writer."""
        assert self.scheduler is not None
        session = rt.session
        for context in session.contexts_to_cancel():
            self._cancel_context(context)
        for request in session.pieces_to_schedule():
            self._phonemize(rt, request)
        for context in session.contexts_finished():
            self.scheduler.finish_context(context)
        paused = session.take_pause_change()
        if paused is not None:
            self.scheduler.set_paused(session, paused)
            self._wake.set()
        self._arm_timer(rt)
        if rt.ws is not None and (session.has_outgoing or session.close_code is not None):
            rt.wake.set()
        if session.close_code is not None:
            # The writer may be stuck on a client that does not read: close from here too.
            self._close_ws(rt)

    def _cancel_context(self, context: Context) -> None:
        assert self.scheduler is not None
        self.g2p.cancel(context)  # queued text of a cancelled context is never phonemized
        dropped = self.scheduler.cancel_context(context)
        self.metrics.pieces.labels(outcome="cancelled").inc(len(dropped))
        self._update_queue_depth()

    def _arm_timer(self, rt: _Runtime) -> None:
        if rt.ws is None:
            return
        deadline = rt.session.next_deadline()
        if rt.timer is not None:
            if deadline is not None and abs(rt.timer.when() - deadline) < 1e-4:
                return
            rt.timer.cancel()
            rt.timer = None
        if deadline is not None:
            rt.timer = asyncio.get_running_loop().call_at(deadline, self._on_timer, rt)

    def _on_timer(self, rt: _Runtime) -> None:
        rt.timer = None
        if rt.session.state is not SessionState.OPEN:
            return
        rt.session.receive_timeout(asyncio.get_running_loop().time())
        self._pump(rt)

    def _close_ws(self, rt: _Runtime) -> None:
        """Close the session's connection with its close code; idempotent. The writer gets a moment
        to send what is queued (the error saying why); a client that does not read is closed anyway."""
        ws, code = rt.ws, rt.session.close_code
        if rt.closing or ws is None or code is None:
            return
        rt.closing = True
        reason, writer = rt.session.close_reason, rt.writer

        async def close() -> None:
            if writer is not None:
                await asyncio.wait({writer}, timeout=1.0)
            with contextlib.suppress(Exception):
                await ws.close(code, reason)

        self._spawn(close())

    async def _writer(self, rt: _Runtime) -> None:
        """The only code that writes to this session's socket."""
        loop = asyncio.get_running_loop()
        session = rt.session
        ws = rt.ws
        assert ws is not None
        try:
            if rt.replay is not None:
                await rt.replay
                rt.replay = None
            while True:
                await rt.wake.wait()
                rt.wake.clear()
                while (message := session.next_outgoing(loop.time())) is not None:
                    await ws.send(message)
                    for seconds in session.take_ttfa():
                        self.metrics.ttfa.observe(seconds)
                    paused = session.take_pause_change()
                    if paused is not None and self.scheduler is not None:
                        self.scheduler.set_paused(session, paused)
                        self._wake.set()
                if session.close_code is not None:
                    await ws.close(session.close_code, session.close_reason)
                    return
        except ConnectionClosed:
            return

    # --- G2P and scheduling ---------------------------------------------------------------------

    def _phonemize(self, rt: _Runtime, request: PieceRequest) -> None:
        loop = asyncio.get_running_loop()
        future = self.g2p.submit(request.text, request.context.settings.lang, owner=rt.session, tag=request.context, seam=request.context.segmenter.seam(request.ordinal))
        # The G2P thread completes a session's jobs in submission order (round-robin across sessions),
        # and call_soon_threadsafe keeps that order.
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(self._on_phonemes, rt, request, f))

    def _on_phonemes(self, rt: _Runtime, request: PieceRequest, future: Any) -> None:
        assert self.scheduler is not None
        now = asyncio.get_running_loop().time()
        context = request.context
        if future.cancelled() or context.state.is_finished():
            return
        if isinstance(future.exception(), G2PTooSlow):
            logger.info("session %s: G2P over its budget on a %d-character piece", rt.session.log_tag, len(request.text))
            error = ProtocolError(str(future.exception()), code="text_too_slow")
            rt.session.receive_failure(request, error, now)
            self.metrics.errors.labels(code="text_too_slow").inc()
            self._pump(rt)
            return
        if future.exception() is not None:
            logger.error("G2P failed", exc_info=future.exception())
            rt.session.receive_failure(request, EngineFailed("could not turn this text into phonemes"), now)
            self.metrics.errors.labels(code="engine_failed").inc()
            self._pump(rt)
            return
        parts = [p for p in future.result() if p.phonemes]
        rt.session.set_parts(request, len(parts), now)
        ttl = context.ttl_ms
        for index, part in enumerate(parts):
            first = request.is_first and index == 0
            # A context's first piece is due at once; a later one when the audio before it will have
            # played, counted from the first frame. Until playback starts it is not urgent at all:
            # guessing an early start made waiting turns jump ahead of turns already playing.
            deadline: float | Callable[[], float] = now if first else _playback_deadline(context, context.estimated_audio_s)
            context.estimated_audio_s += len(part.phonemes) * SECONDS_PER_PHONEME / context.settings.speed
            self.scheduler.add(
                Piece(
                    session_key=rt.session,
                    context_key=context,
                    phonemes=part.phonemes,
                    voice=context.settings.voice,
                    speed=context.settings.speed,
                    arrival=now,
                    priority=context.priority,
                    is_first=first,
                    start_deadline=None if ttl is None else request.created_at + ttl / 1000,
                    deadline=deadline,
                    payload=(rt, request, index, part),
                    text=part.text,
                    left_context=part.left_context, right_context=part.right_context,
                )
            )
        self._update_queue_depth()
        self._pump(rt)
        self._wake.set()

    def _seconds_per_token(self) -> float:
        return self.scheduler.seconds_per_token if self.scheduler is not None else 0.0

    def _update_queue_depth(self) -> None:
        if self.scheduler is not None:
            self.metrics.queue_depth.set(self.scheduler.num_queued)

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
        scheduler = self.scheduler
        assert scheduler is not None
        while True:
            self._wake.clear()
            now = loop.time()
            try:
                batch = scheduler.schedule(now)
                self._report_expired(scheduler.take_expired(), now)
            except Exception:
                # A bug, not a client's doing; the loop must outlive it (everyone's audio needs it).
                logger.error("scheduler step failed", exc_info=True)
                await asyncio.sleep(0.05)
                continue
            if batch is None:
                deadline = scheduler.next_deadline(now)
                timeout = None if deadline is None else max(0.0, deadline - now)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            await self._run_batch(batch)

    async def _run_batch(self, batch: Batch) -> None:
        assert self.scheduler is not None
        loop = asyncio.get_running_loop()
        self._update_queue_depth()
        self.metrics.batch_size.observe(len(batch.pieces))
        sent_at = loop.time()
        # Only an engine that schedules remotely (Ray Serve replicas) needs the ordering facts.
        remote = self.engine is not None and self.engine.schedules_remotely
        trim = self.config.segmenter.trim_edges
        items = [
            SynthesisItem(
                phonemes=p.phonemes,
                voice=p.voice,
                speed=p.speed,
                seed=p.seed,
                text=p.text,
                hints=_schedule_hints(p, sent_at) if remote else None,
                trim_start=trim,
                trim_end=trim,
                left_context=p.left_context, right_context=p.right_context,
            )
            for p in batch.pieces
        ]
        started = time.perf_counter()
        try:
            outcome: list[Any] = await asyncio.wrap_future(self.worker.submit(items))
        except Exception:
            logger.error("engine worker failed", exc_info=True)
            outcome = [EngineFailed("synthesis failed") for _ in items]
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.engine_ready.set(1 if self.worker.alive else 0)
        now = loop.time()
        touched: dict[int, _Runtime] = {}
        try:
            for piece, result in self.scheduler.complete(batch, outcome, now=now):
                rt, request, part, phoneme_piece = piece.payload
                touched[id(rt)] = rt
                if isinstance(result, EngineFailed):
                    self.metrics.pieces.labels(outcome="failed").inc()
                    self.metrics.errors.labels(code="engine_failed").inc()
                    rt.session.receive_failure(request, result, now)
                else:
                    self.metrics.pieces.labels(outcome="done").inc()
                    self.metrics.audio_seconds.inc(len(result.audio) / 24_000)
                    rt.session.receive_audio(request, part, result, now, words=phoneme_piece.words)
        except Exception:
            logger.error("delivering a batch failed; failing its contexts", exc_info=True)
            touched.update(self._fail_batch(batch, now))
        for rt in touched.values():
            self._pump(rt)

    def _fail_batch(self, batch: Batch, now: float) -> dict[int, _Runtime]:
        """Fail the contexts of a batch whose results could not be delivered; others are untouched."""
        assert self.scheduler is not None
        touched: dict[int, _Runtime] = {}
        for piece in self.scheduler.abort(batch):
            rt, request, _, _ = piece.payload
            touched[id(rt)] = rt
            self.metrics.errors.labels(code="engine_failed").inc()
            with contextlib.suppress(Exception):
                rt.session.receive_failure(request, EngineFailed("synthesis failed"), now)
        return touched

    def _report_expired(self, pieces: list[Piece], now: float) -> None:
        touched: dict[int, _Runtime] = {}
        for piece in pieces:
            rt, request, part, _ = piece.payload
            rt.session.receive_dropped(request, part, FINISHED_REASONS[piece.status], now)
            self.metrics.pieces.labels(outcome="expired").inc()
            touched[id(rt)] = rt
        for rt in touched.values():
            self._pump(rt)

    # --- plain HTTP -----------------------------------------------------------------------------

    async def _handle_http(self, request: HttpRequest) -> HttpResponse:
        route = self.extra_routes.get((request.method, request.path))
        if route is not None:
            refusal = self._check_access(request.headers, request.query)
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
            server = self.config.server
            if server.auth_token and not server.metrics_public and not self._authenticated(request.headers, request.query):
                return HttpResponse.text(401, "missing or wrong token")
            if self.scheduler is not None:
                self.metrics.queue_depth.set(self.scheduler.num_queued)
            return HttpResponse(200, self.metrics.render(), content_type=CONTENT_TYPE_LATEST)
        if request.path == STREAM_PATH:
            return HttpResponse.text(426, "this endpoint speaks WebSocket")
        path = request.path.removeprefix("/web-demo")
        response = static_file_response(self._web_root, path)
        return response or HttpResponse.text(404, "not found")

    def _readiness(self, request: HttpRequest) -> HttpResponse:
        """``/readyz``: ready or not for anyone; engine facts without paths when no token is set,
        the engine's full description (device, weights source) only with the token."""
        ready = (
            self.worker.alive
            and self.scheduler is not None
            and not self._draining
            and self.scheduler_alive
        )
        body: dict[str, Any] = {"ready": ready}
        facts = self.engine_facts
        if facts is not None:
            if not self.config.server.auth_token:
                body["engine"] = facts.public()
            elif self._authenticated(request.headers, request.query):
                body["engine"] = dict(facts.description)
        return HttpResponse.json(200 if ready else 503, body)


def _schedule_hints(piece: Piece, now: float) -> ScheduleHints:
    """The piece's ordering facts, relative to now, for an engine that schedules remotely."""
    due = piece.arrival if piece.deadline is None else piece.deadline() if callable(piece.deadline) else piece.deadline
    return ScheduleHints(
        session_id=piece.session_key.session_id,
        context_id=piece.context_key.context_id,
        priority=piece.priority,
        is_first=piece.is_first,
        due_in_s=due - now,
        start_within_s=None if piece.start_deadline is None else piece.start_deadline - now,
    )


def _credential_digest(ws: Connection, query: str) -> bytes:
    """A digest of the auth token this connection presented (bearer header or ``?token=``), so that
    a session can be bound to it without keeping the token itself."""
    request = getattr(ws, "request", None)
    headers: Headers | dict[str, str] = request.headers if request is not None else {}
    return hashlib.sha256(_presented_token(headers, parse_qs(query)).encode()).digest()


def _presented_token(headers: Headers | dict[str, str], query: dict[str, list[str]]) -> str:
    """The token a request presents: a bearer ``Authorization`` header, else ``?token=``."""
    auth = headers.get("Authorization") or headers.get("authorization") or ""
    supplied = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    return supplied or (query.get("token") or [""])[0]


def _playback_deadline(context: Context, audio_before_s: float) -> Callable[[], float]:
    def deadline() -> float:
        if context.first_frame_at is None:
            return math.inf
        return context.first_frame_at + audio_before_s

    return deadline


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
