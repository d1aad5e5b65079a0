"""``voxgate danmaku`` live: comments in (stdin, HTTP, WebSocket), voice and captions out (OBS).

``LiveDanmaku`` owns one ``DanmakuResponder`` (one voxgate session, one audio stream) and feeds it
comments as they arrive:

- **stdin**: JSON lines (``read_json_lines``), one comment per line, admitted as each line arrives
  (a chat bot piped in: ``bot | voxgate danmaku --stdin``); at end of input the queue is spoken out;
- **HTTP** ``POST /comments``: a JSON object, an array of objects, or JSON lines (``Content-Type:
  application/json``; a browser page on another site cannot post it without a CORS preflight, which
  is never granted); answers 202 with what happened to each comment;
- **WebSocket** ``/comments``: each text message is what a POST body would be; each gets an
  ``{"type": "admitted", "results": [...]}`` reply, or ``{"type": "error", ...}``;
- platform adapters feed ``submit`` too (``danmaku_twitch``).

Out: the ``OverlayHub`` sink serves ``/overlay`` (an OBS browser source: the comment being read over
a transparent background, and its voice) through ``/overlay/ws``: per utterance an
``utterance.started`` message (who, what they typed, what is said), its audio as protocol-v1 binary
frames (``docs/protocol.md``; the page decodes them with ``web-demo/voxgate.js``), then
``utterance.done``. Other sinks (a WAV, a player command) go alongside through ``FanOutSink``.

The comment schema is ``docs/danmaku.md``. One HTTP/WebSocket port serves all of it
(``[danmaku] listen_host``/``listen_port``, 127.0.0.1 by default), plus ``/healthz`` and ``/report``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from gateway.audio import encode_samples
from gateway.config import REPO_ROOT, DanmakuConfig
from gateway.http import (
    FrontDoor,
    FrontDoorLimits,
    HttpRequest,
    HttpResponse,
    static_file_response,
)
from gateway.http11 import ExchangeLimits
from gateway.integrations.danmaku import (
    Admission,
    AudioSink,
    Comment,
    DanmakuPolicy,
    DanmakuResponder,
    FanOutSink,
    StreamClock,
    Utterance,
    parse_comment_line,
    parse_comment_lines,
)
from gateway.protocol import SAMPLE_RATE, FrameFlags, encode_audio_frame

__all__ = ["LiveDanmaku", "OverlayHub", "parse_comments_body", "read_json_lines", "COMMENTS_PATH", "OVERLAY_PATH"]

logger = logging.getLogger("voxgate.integrations.danmaku")

COMMENTS_PATH = "/comments"
OVERLAY_PATH = "/overlay"
OVERLAY_WS_PATH = "/overlay/ws"
WEB_ROOT = REPO_ROOT / "web-demo"
#: Samples per binary frame sent to overlay pages (20 ms at 24 kHz).
FRAME_SAMPLES = 480


def parse_comments_body(body: bytes, *, id_prefix: str) -> list[Comment]:
    """A POST body or WebSocket message as comments: one JSON object, an array of them, or JSON
    lines. Comments without an ``id`` get ``{id_prefix}-{n}``. Raises ``ValueError`` naming the
    record at fault; nothing is admitted then."""
    text = body.strip()
    if not text:
        raise ValueError("empty body: send a comment as JSON")
    if text[:1] == b"[":
        try:
            records = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        lines = [orjson.dumps(record) for record in records]
    else:
        lines = text.split(b"\n")
    return parse_comment_lines(lines, id_prefix=f"{id_prefix}-")


async def read_json_lines(stream: BinaryIO) -> AsyncIterator[bytes]:
    """Lines of ``stream`` as they arrive, without blocking the event loop and without a reader
    thread left blocked at exit: pipes, sockets and terminals through the loop's selector; a regular
    file (``< comments.jsonl``) is read directly (it never blocks)."""
    fd = stream.fileno()
    if stat.S_ISREG(os.fstat(fd).st_mode):
        for line in stream:
            yield line
            await asyncio.sleep(0)
        return
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(fd), "rb", 0))
    try:
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # a line over the limit: skip it
                logger.warning("stdin: a line over 1 MiB was skipped")
                continue
            if not line:
                return
            yield line
    finally:
        transport.close()


@dataclass(slots=True)
class _Viewer:
    """One overlay page's queue: messages (bytes for audio, str for JSON) and audio seconds queued."""

    queue: asyncio.Queue[bytes | str | None]
    seq: itertools.count
    queued_s: float = 0.0


class OverlayHub:
    """An ``AudioSink`` that streams the responder's utterances to every connected overlay page.

    Each page gets ``utterance.started``, the utterance's audio frames, ``utterance.done``. A page that
    connects mid-utterance starts with the next one. A page that falls more than
    ``max_buffer_s`` of audio behind is closed (1008): OBS must not make the stream stall.
    """

    def __init__(self, *, max_buffer_s: float = 30.0) -> None:
        self.max_buffer_s = max_buffer_s
        self._viewers: dict[int, _Viewer] = {}
        self._ids = itertools.count(1)
        self._context_index = 0
        self._offset = 0
        self._current: Utterance | None = None
        self._announced = False
        self._sample_rate = SAMPLE_RATE
        #: Utterances sent to pages, for ``/report``-style checks.
        self.num_utterances = 0

    @property
    def num_viewers(self) -> int:
        return len(self._viewers)

    def begin_utterance(self, utterance: Utterance, start_s: float) -> None:
        self._context_index += 1
        self._offset = 0
        self._current = utterance
        self._announced = False
        self.num_utterances += 1

    def _announce(self, utterance: Utterance, sample_rate: int) -> None:
        # Sent with the first audio, which tells the sample rate.
        message = orjson.dumps(
            {
                "type": "utterance.started",
                "context_index": self._context_index,
                "id": utterance.id,
                "name": utterance.name,
                "text": utterance.source_text,
                "said": utterance.text,
                "kind": utterance.kind,
                "count": utterance.count,
                "lang": utterance.lang,
                "sample_rate": sample_rate,
            }
        ).decode()
        for viewer in self._viewers.values():
            viewer.queue.put_nowait(message)
        self._announced = True

    def write(self, samples: np.ndarray, sample_rate: int, start_s: float) -> None:
        if self._current is None:
            return
        if not self._announced:
            self._announce(self._current, sample_rate)
        self._sample_rate = sample_rate
        for begin in range(0, len(samples), FRAME_SAMPLES):
            part = samples[begin : begin + FRAME_SAMPLES]
            payload = encode_samples(np.asarray(part, dtype=np.float32), "pcm_s16le")
            flags = FrameFlags.FIRST if self._offset == 0 else 0
            for key, viewer in list(self._viewers.items()):
                viewer.queued_s += len(part) / sample_rate
                if viewer.queued_s > self.max_buffer_s:
                    logger.warning("overlay page %d is %.0f s behind: closing it", key, viewer.queued_s)
                    self._viewers.pop(key)
                    viewer.queue.put_nowait(None)
                    continue
                viewer.queue.put_nowait(encode_audio_frame(next(viewer.seq), self._context_index, self._offset, flags, payload))
            self._offset += len(part)

    def end_utterance(self, utterance: Utterance) -> None:
        if self._current is None or not self._announced:
            self._current = None
            return
        message = orjson.dumps({"type": "utterance.done", "context_index": self._context_index, "id": utterance.id}).decode()
        for viewer in self._viewers.values():
            viewer.queue.put_nowait(message)
        self._current = None

    async def serve_page(self, ws: ServerConnection) -> None:
        """One overlay page until it disconnects."""
        key = next(self._ids)
        viewer = self._viewers[key] = _Viewer(asyncio.Queue(), itertools.count())
        logger.info("overlay page %d connected", key)
        try:
            await ws.send(orjson.dumps({"type": "overlay.hello", "format": "pcm_s16le"}).decode())
            while True:
                message = await viewer.queue.get()
                if message is None:
                    await ws.close(1008, "overlay page too slow")
                    return
                if isinstance(message, bytes):
                    viewer.queued_s = max(0.0, viewer.queued_s - (len(message) - 16) / 2 / self._sample_rate)
                await ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            self._viewers.pop(key, None)
            logger.info("overlay page %d gone", key)


class LiveDanmaku:
    """Live comments through one responder: ``start()``, then ``submit()`` (or the endpoints and
    ``feed_lines()``), ``drain()``, ``stop()``.

    Responsibilities: the listener (``/comments``, ``/overlay``, ``/overlay/ws``, static files, ``/report``,
    ``/healthz``), the responder task, admission logging. Not its job: choosing (``DanmakuPolicy``),
    speaking (``DanmakuResponder``), connecting to voxgate (pass a connected ``VoxgateClient``).
    """

    def __init__(
        self,
        config: DanmakuConfig,
        client: Any,
        *,
        sinks: tuple[AudioSink, ...] = (),
        listen: bool = True,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        web_root: Path = WEB_ROOT,
    ) -> None:
        self.config = config
        self.client = client
        self.clock = StreamClock(1.0)
        langs = [lang for lang in client.langs if lang in ("en", "zh", "ja")] or ["en"]
        self.policy = DanmakuPolicy(config, langs=langs, clock=self.clock)
        self.overlay = OverlayHub(max_buffer_s=config.overlay_max_buffer_s)
        self._events = on_event
        sink = FanOutSink(self.overlay, _EventSink(self._emit), *sinks)
        self.responder = DanmakuResponder(
            client, self.policy, sink, clock=self.clock, lookahead_s=config.lookahead_s, voice=config.voice or None
        )
        self.listen = listen
        self.web_root = web_root
        self.port: int | None = None
        self._server: Server | None = None
        self._front_door: FrontDoor | None = None
        self._runner: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self.responder.run(), name="danmaku-responder")
        if self.listen:
            cfg = self.config
            # The same front door as the gateway's (h11, head/body/write deadlines, connection caps):
            # this port faces chat bots and an OBS page, but anything on the machine can reach it.
            self._front_door = FrontDoor(
                self._handle_http, FrontDoorLimits(exchange=ExchangeLimits(max_body_bytes=cfg.max_post_bytes))
            )
            self._server = await serve(
                self._handle_ws,
                cfg.listen_host,
                cfg.listen_port,
                create_connection=self._front_door.connection_class,
                max_size=cfg.max_post_bytes,
                logger=logging.getLogger("voxgate.websockets"),
            )
            self.port = self._server.sockets[0].getsockname()[1]
            logger.info("danmaku listening on http://%s:%d (comments %s, overlay %s)", cfg.listen_host, self.port, COMMENTS_PATH, OVERLAY_PATH)

    @property
    def base_url(self) -> str:
        return f"http://{self.config.listen_host}:{self.port}"

    async def drain(self) -> None:
        """Wait until every queued comment is spoken or dropped."""
        await self.responder.drain()

    async def stop(self) -> None:
        if self._front_door is not None:
            self._front_door.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        await self.responder.close()
        if self._runner is not None:
            await self._runner

    # --- input ----------------------------------------------------------------------------------

    def submit(self, comment: Comment, *, source: str = "api") -> Admission:
        admission = self.responder.submit(comment)
        self._emit({"event": admission.outcome, "comment_id": comment.id, "group_id": admission.group_id,
                    "reason": admission.reason, "source": source})
        return admission

    async def feed_lines(self, lines: AsyncIterator[bytes], *, source: str = "stdin") -> int:
        """Admit each JSON line as it arrives; a bad line is reported and skipped. Returns how many
        comments were admitted (in any outcome)."""
        count = 0
        number = 0
        async for line in lines:
            number += 1
            try:
                comment = parse_comment_line(line, default_id=f"{source}-{number}")
            except ValueError as exc:
                logger.warning("%s line %d: %r", source, number, str(exc))
                self._emit({"event": "error", "source": source, "line": number, "message": str(exc)})
                continue
            if comment is not None:
                self.submit(comment, source=source)
                count += 1
        return count

    def _admit_body(self, body: bytes, source: str) -> list[dict[str, Any]]:
        comments = parse_comments_body(body, id_prefix=f"{source}{next(self._ids)}")
        return [_admission_json(c, self.submit(c, source=source)) for c in comments]

    # --- the listener ---------------------------------------------------------------------------

    async def _handle_http(self, request: HttpRequest) -> HttpResponse:
        if request.path == COMMENTS_PATH:
            if request.method != "POST":
                return HttpResponse.text(405, "POST comments here (or open a WebSocket)")
            if not request.headers.get("content-type", "").startswith("application/json"):
                return HttpResponse.text(415, "send Content-Type: application/json")
            try:
                results = self._admit_body(request.body, "http")
            except ValueError as exc:
                return HttpResponse.json(400, {"error": str(exc)})
            return HttpResponse.json(202, {"results": results})
        if request.method not in ("GET", "HEAD"):
            return HttpResponse.text(405, "method not allowed")
        if request.path == "/healthz":
            return HttpResponse.json(200, {"status": "ok", "queued": self.policy.num_queued, "overlay_pages": self.overlay.num_viewers})
        if request.path == "/report":
            return HttpResponse.json(200, self.policy.report.to_dict())
        if request.path == OVERLAY_PATH:
            response = static_file_response(self.web_root, "overlay.html")
        else:
            response = static_file_response(self.web_root, request.path.removeprefix("/web-demo"))
        return response or HttpResponse.text(404, "not found")

    async def _handle_ws(self, ws: ServerConnection) -> None:
        request = ws.request
        path = request.path.partition("?")[0] if request is not None else ""
        origin = request.headers.get("Origin") if request is not None else None
        if origin is not None and request is not None and origin.partition("://")[2] != request.headers.get("Host", ""):
            # Only our own pages (the overlay) and non-browser clients (no Origin): another site's
            # page in the streamer's browser must not speak on their stream.
            await ws.close(1008, "origin not allowed")
            return
        if path == OVERLAY_WS_PATH:
            await self.overlay.serve_page(ws)
            return
        if path != COMMENTS_PATH:
            await ws.close(1008, f"WebSocket endpoints: {COMMENTS_PATH}, {OVERLAY_WS_PATH}")
            return
        try:
            async for message in ws:
                body = message if isinstance(message, bytes) else message.encode()
                try:
                    reply: dict[str, Any] = {"type": "admitted", "results": self._admit_body(body, "ws")}
                except ValueError as exc:
                    reply = {"type": "error", "message": str(exc)}
                await ws.send(orjson.dumps(reply).decode())
        except ConnectionClosed:
            pass

    def _emit(self, event: dict[str, Any]) -> None:
        if self._events is not None:
            self._events(event)


class _EventSink:
    """Reports utterances starting and ending as events (``voxgate danmaku`` prints them)."""

    def __init__(self, emit: Callable[[dict[str, Any]], None]) -> None:
        self._emit = emit

    def write(self, samples: np.ndarray, sample_rate: int, start_s: float) -> None:
        pass

    def begin_utterance(self, utterance: Utterance, start_s: float) -> None:
        self._emit({"event": "speaking", "utterance_id": utterance.id, "text": utterance.text, "said": utterance.speech,
                    "comment_ids": list(utterance.comment_ids), "start_s": round(start_s, 3)})

    def end_utterance(self, utterance: Utterance) -> None:
        self._emit({"event": "spoken", "utterance_id": utterance.id})


def _admission_json(comment: Comment, admission: Admission) -> dict[str, Any]:
    return {"id": comment.id, "outcome": admission.outcome, "group_id": admission.group_id, "reason": admission.reason}
