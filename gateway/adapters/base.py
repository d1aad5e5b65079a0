"""What every vendor adapter shares: the translator contract, protocol v1 event parsing, voices,
credentials, and the one glue coroutine that runs a translator against a normal voxgate session.

An adapter is a sans-I/O ``Translator``: vendor client messages in (``receive_client``), protocol v1
client messages out (``to_session()``); protocol v1 events in (``receive_event``), vendor messages out
(``to_client()``). ``serve_translator`` wires one to a vendor WebSocket and an in-process session on
the hub (``Gateway.open_local_session``, ``gateway.local.LocalSession``): same sessions, segmenter,
scheduler and engine as ``/v1/stream``, no second pipeline, and one vendor socket's bad input only
reaches its own session.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from gateway.protocol import decode_audio_frame

if TYPE_CHECKING:
    from gateway.server import Gateway

__all__ = [
    "Translator",
    "AudioEvent",
    "Event",
    "parse_event",
    "VoiceResolver",
    "credential_ok",
    "char_timings",
    "serve_translator",
]

logger = logging.getLogger("voxgate.adapters")


@dataclass(frozen=True, slots=True)
class AudioEvent:
    """One protocol v1 audio frame, decoded."""

    context_index: int
    sample_offset: int
    first: bool
    last: bool
    payload: bytes


#: A protocol v1 event: an audio frame or a JSON message (a dict with ``type``).
Event = AudioEvent | dict[str, Any]


def parse_event(raw: str | bytes) -> Event:
    """Turn what a session sends (a binary frame or a JSON text) into an ``Event``."""
    if isinstance(raw, bytes):
        header, payload = decode_audio_frame(raw)
        return AudioEvent(header.context_index, header.sample_offset, bool(header.flags & 1), bool(header.flags & 2), payload)
    message = orjson.loads(raw)
    return message if isinstance(message, dict) else {"type": "invalid"}


class VoiceResolver:
    """Vendor voice ids to engine voices: ``compat.voice_map`` first, then an engine voice of that
    name, then ``compat.default_voice`` (empty: None, the session's default voice)."""

    def __init__(self, voices: Sequence[str], *, voice_map: Mapping[str, str], default_voice: str) -> None:
        self.voices = list(voices)
        self.voice_map = dict(voice_map)
        self.default_voice = default_voice if default_voice in self.voices else None

    def resolve(self, *voice_ids: str | None) -> str | None:
        """The first of ``voice_ids`` that the map or the engine knows, else the default voice."""
        for voice_id in voice_ids:
            if not voice_id:
                continue
            mapped = self.voice_map.get(voice_id.lower()) or self.voice_map.get(voice_id)
            if mapped in self.voices:
                return mapped
            if voice_id in self.voices:
                return voice_id
        return self.default_voice


def credential_ok(expected: str, supplied: str | None) -> bool:
    """Compare a vendor-style API key with voxgate's token (no token configured: anything goes)."""
    if not expected:
        return True
    return supplied is not None and hmac.compare_digest(supplied.encode(), expected.encode())


def char_timings(
    words: Sequence[Mapping[str, Any]], *, origin_ms: float = 0.0, space_from_ms: float | None = None
) -> tuple[list[str], list[int], list[int]]:
    """Per-character timings from protocol v1 word timings (ms from the context's start): each
    word's span spread evenly over its characters, one space between words taking the gap (and one
    from ``space_from_ms`` to the first word when given, so chunks join into words). Times are
    shifted by ``-origin_ms`` and never go backwards."""
    chars: list[str] = []
    starts: list[int] = []
    durations: list[int] = []
    leading_space = space_from_ms is not None
    cursor = max(0.0, (space_from_ms or 0.0) - origin_ms)
    for index, word in enumerate(words):
        text = str(word.get("word", ""))
        start = max(float(word["start_ms"]) - origin_ms, cursor)
        end = max(float(word["end_ms"]) - origin_ms, start)
        if index > 0 or leading_space:
            chars.append(" ")
            starts.append(round(cursor))
            durations.append(max(0, round(start) - round(cursor)))
        step = (end - start) / max(1, len(text))
        for i, ch in enumerate(text):
            t0 = start + i * step
            chars.append(ch)
            starts.append(round(t0))
            durations.append(max(0, round(t0 + step) - round(t0)))
        cursor = end
    return chars, starts, durations


class Translator:
    """The contract every vendor adapter implements (sans-I/O; no socket, no clock).

    Feed ``receive_client(raw)`` with each vendor message and ``receive_event(event)`` with each
    protocol v1 event of the session; after each call, send ``to_session()`` to the session and
    ``to_client()`` to the vendor socket. ``closing`` set: close the vendor socket with
    ``close_code`` once ``to_client()`` is sent.
    """

    def __init__(self) -> None:
        self._session_out: list[dict[str, Any]] = []
        self._client_out: list[str | bytes] = []
        self.closing = False
        self.close_code = 1000
        self.close_reason = ""

    def start(self, created: Mapping[str, Any]) -> None:
        """The session's ``session.created``: queue the ``session.update`` the adapter needs."""
        raise NotImplementedError

    def receive_client(self, raw: str | bytes) -> None:
        raise NotImplementedError

    def receive_event(self, event: Event) -> None:
        raise NotImplementedError

    def to_session(self) -> list[dict[str, Any]]:
        out, self._session_out = self._session_out, []
        return out

    def to_client(self) -> list[str | bytes]:
        out, self._client_out = self._client_out, []
        return out

    def _send_json(self, message: Mapping[str, Any]) -> None:
        self._client_out.append(orjson.dumps(message).decode())

    def _close(self, code: int = 1000, reason: str = "") -> None:
        self.closing, self.close_code, self.close_reason = True, code, reason


@dataclass(eq=False)
class _Pump:
    """Serialises writes to the vendor socket (two tasks feed it)."""

    ws: Any
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def flush(self, translator: Translator, conn: Any) -> None:
        for message in translator.to_session():
            await conn.send_json(message)
        async with self.lock:
            for out in translator.to_client():
                await self.ws.send(out)
            if translator.closing:
                await self.ws.close(translator.close_code, translator.close_reason)


async def serve_translator(gateway: Gateway, ws: Any, translator: Translator) -> None:
    """Run ``translator`` between the vendor socket ``ws`` and a new in-process voxgate session,
    until either side ends. Errors of one socket stay in it: the handler never raises."""
    from websockets.exceptions import ConnectionClosed

    pump = _Pump(ws)
    async with gateway.open_local_session() as conn:
        events = conn.events()
        try:
            created = parse_event(await anext(events))
        except StopAsyncIteration:
            return
        if not isinstance(created, dict) or created.get("type") != "session.created":
            # busy or refused: say it in the vendor's words
            translator.receive_event(created if isinstance(created, dict) else {"type": "error", "code": "internal"})
            translator._close(1013, "busy")
            with contextlib.suppress(ConnectionClosed):
                await pump.flush(translator, conn)
            return
        translator.start(created)

        async def session_to_client() -> None:
            async for raw in events:
                translator.receive_event(parse_event(raw))
                await pump.flush(translator, conn)
                if translator.closing:
                    return

        async def client_to_session() -> None:
            await pump.flush(translator, conn)
            async for raw in ws:
                translator.receive_client(raw)
                await pump.flush(translator, conn)
                if translator.closing:
                    return

        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(session_to_client()), loop.create_task(client_to_session())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    if not isinstance(exc, ConnectionClosed):
                        logger.error("vendor adapter failed", exc_info=exc)
                        with contextlib.suppress(Exception):
                            await ws.close(1011, "internal error")
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, Exception):
                    await task
            # The session ended on its own (idle timeout, shutdown): end the vendor socket too.
            with contextlib.suppress(Exception):
                await ws.close(1000, "")
