"""ElevenLabs-compatible WebSockets: ``/v1/text-to-speech/{voice_id}/stream-input`` (one context
per socket) and ``/multi-stream-input`` (many), translated onto a protocol v1 session.

Client messages: ``{"text": " ", "voice_settings": ...}`` opens a context (a space, so text joins as
sent); ``{"text": ..., "flush": true}``; ``{"flush": true}``; ``{"text": ""}`` ends the only context
(stream-input) or keeps a context alive (multi); ``{"close_context": true}``; ``{"close_socket": true}``.
Server messages: ``{"audio": <base64>, "isFinal": false, "alignment": {"chars", "charStartTimesMs",
"charDurationsMs"}, "normalizedAlignment": ...}`` and ``{"isFinal": true}``, with ``contextId`` on
multi. Audio comes in the query's ``output_format``. See docs/compat.md for what is ignored.

``close_context`` after a flush (nothing unflushed: what LiveKit sends at the end of a turn)
finishes the context: its audio is delivered, then ``isFinal``. With text sent since the last flush
(an interruption, as Pipecat sends it) the context is cancelled: no more audio, then ``isFinal``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qs

import orjson

from gateway.adapters.base import AudioEvent, Event, Translator, VoiceResolver, char_timings

__all__ = ["ElevenLabsTranslator", "parse_output_format", "ROUTE", "DEFAULT_OUTPUT_FORMAT", "credential"]

ROUTE: Final = re.compile(r"^/v1/text-to-speech/(?P<voice>[^/]{1,128})/(?P<kind>stream-input|multi-stream-input)$")
DEFAULT_OUTPUT_FORMAT: Final = "mp3_44100_128"
PCM_RATES: Final = (8_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000)
MP3_RATES: Final = (22_050, 24_000, 44_100)
SINGLE_CONTEXT: Final = "stream-input"
FRAME_MS: Final = 100


def parse_output_format(value: str) -> tuple[str, int] | None:
    """``pcm_16000`` -> (pcm_s16le, 16000); ``ulaw_8000``; ``mp3_22050_32``; None if unsupported."""
    parts = value.split("_")
    try:
        rate = int(parts[1])
    except (IndexError, ValueError):
        return None
    if parts[0] == "pcm" and len(parts) == 2 and rate in PCM_RATES:
        return "pcm_s16le", rate
    if parts[0] == "ulaw" and len(parts) == 2 and rate == 8_000:
        return "ulaw", rate
    if parts[0] == "mp3" and len(parts) == 3 and rate in MP3_RATES:
        return "mp3", rate
    return None


def credential(headers: Mapping[str, str], query: Mapping[str, list[str]]) -> str | None:
    """The API key: the ``xi-api-key`` header, else a ``xi_api_key`` / ``xi-api-key`` query value."""
    for key in ("xi_api_key", "xi-api-key"):
        if query.get(key):
            return query[key][0]
    return headers.get("xi-api-key")


@dataclass(eq=False)
class _Context:
    context_id: str
    unflushed: bool = False
    closing: bool = False
    alignment: list[dict[str, Any]] = field(default_factory=list)
    #: End of the previous chunk's last word (ms): per-chunk times count from here.
    origin_ms: float = 0.0
    sent_alignment: bool = False


class ElevenLabsTranslator(Translator):
    def __init__(self, path: str, query: str, *, voices: VoiceResolver) -> None:
        super().__init__()
        match = ROUTE.match(path)
        assert match is not None, "route checked before"
        self.multi = match["kind"] == "multi-stream-input"
        self.voice = voices.resolve(match["voice"])
        params = parse_qs(query)
        output_format = (params.get("output_format") or [DEFAULT_OUTPUT_FORMAT])[0]
        self.audio = parse_output_format(output_format)
        self.output_format = output_format
        # LiveKit asks for sync_alignment and reads times from the context's start; Pipecat reads
        # them per chunk and adds them up.
        self.absolute_times = (params.get("sync_alignment") or ["false"])[0].lower() == "true"
        self._contexts: dict[str, _Context] = {}
        self._index_to_id: dict[int, str] = {}

    # --- vendor -> session ------------------------------------------------------------------------

    def start(self, created: Mapping[str, Any]) -> None:
        if self.audio is None:
            self._error(f"output_format {self.output_format[:40]!r} is not supported", "invalid_output_format", None)
            self._close(1008, "invalid output_format")
            return
        fmt, rate = self.audio
        update: dict[str, Any] = {"type": "session.update", "format": fmt, "sample_rate": rate, "frame_ms": FRAME_MS, "alignment": True}
        if self.voice is not None:
            update["voice"] = self.voice
        self._session_out.append(update)

    def receive_client(self, raw: str | bytes) -> None:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._error("message is not valid JSON", "invalid_message", None)
            return
        if not isinstance(message, dict):
            self._error("message must be a JSON object", "invalid_message", None)
            return
        if message.get("close_socket") is True:
            self._session_out.append({"type": "cancel"})
            self._close(1000, "close_socket")
            return
        cid = message.get("context_id") if self.multi else SINGLE_CONTEXT
        text = message.get("text")
        if cid is None:
            if text == "":
                return  # a keep-alive without a context
            cid = "default"
        if not isinstance(cid, str) or not 1 <= len(cid) <= 128:
            self._error("context_id must be a string of 1..128 characters", "invalid_message", None)
            return
        if text is not None and not isinstance(text, str):
            self._error("text must be a string", "invalid_message", cid)
            return
        context = self._contexts.get(cid)
        if message.get("close_context") is True:
            self._close_context(cid, context)
            return
        if text == "" and not self.multi:  # end of stream: speak the rest, then isFinal
            if context is not None and not context.closing:
                self._session_out.append({"type": "flush", "context_id": cid, "final": True})
                context.closing = True
            return
        if text:  # "" on multi: a keep-alive (with a flush, still a flush)
            if context is None:
                context = self._contexts[cid] = _Context(cid)
                self._session_out.append(self._first_text(cid, text, message))
            else:
                self._session_out.append({"type": "text", "context_id": cid, "text": text})
            context.unflushed = True
        if message.get("flush") is True and context is not None:
            self._session_out.append({"type": "flush", "context_id": cid})
            context.unflushed = False

    def _first_text(self, cid: str, text: str, message: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "text", "context_id": cid, "text": text}
        settings = message.get("voice_settings")
        speed = settings.get("speed") if isinstance(settings, dict) else None
        if isinstance(speed, int | float) and not isinstance(speed, bool):
            out["speed"] = min(max(float(speed), 0.5), 2.0)
        return out

    def _close_context(self, cid: str, context: _Context | None) -> None:
        if context is None or context.closing:
            if self.multi and context is None:
                self._send_json({"isFinal": True, "contextId": cid})
            return
        context.closing = True
        if context.unflushed:
            self._session_out.append({"type": "cancel", "context_id": cid})
        else:
            self._session_out.append({"type": "flush", "context_id": cid, "final": True})

    # --- session -> vendor ------------------------------------------------------------------------

    def receive_event(self, event: Event) -> None:
        if isinstance(event, AudioEvent):
            self._audio(event)
            return
        kind = event.get("type")
        cid = event.get("context_id")
        if kind == "context.started" and isinstance(cid, str):
            self._index_to_id[int(event["index"])] = cid
        elif kind == "alignment" and cid in self._contexts:
            self._contexts[cid].alignment.extend(event.get("words", ()))
        elif kind in ("context.done", "cancelled") and isinstance(cid, str) and cid in self._contexts:
            self._contexts.pop(cid)
            self._send_json({"isFinal": True, **self._tag(cid)})
            if not self.multi:
                self._close(1000, "")
        elif kind == "error":
            self._error(str(event.get("message", "")), str(event.get("code", "error")), cid if isinstance(cid, str) else None)

    def _audio(self, event: AudioEvent) -> None:
        cid = self._index_to_id.get(event.context_index)
        context = self._contexts.get(cid) if cid is not None else None
        if context is None or not event.payload:
            return
        message: dict[str, Any] = {"audio": base64.b64encode(event.payload).decode("ascii"), "isFinal": False}
        alignment = None
        if context.alignment:
            words, context.alignment = context.alignment, []
            origin = 0.0 if self.absolute_times else context.origin_ms
            space_from = context.origin_ms if context.sent_alignment else None
            chars, starts, durations = char_timings(words, origin_ms=origin, space_from_ms=space_from)
            alignment = {"chars": chars, "charStartTimesMs": starts, "charDurationsMs": durations}
            context.origin_ms = float(words[-1]["end_ms"])
            context.sent_alignment = True
        message["alignment"] = alignment
        message["normalizedAlignment"] = alignment
        message.update(self._tag(context.context_id))
        self._send_json(message)

    def _tag(self, cid: str) -> dict[str, str]:
        return {"contextId": cid} if self.multi else {}

    def _error(self, message: str, code: str, cid: str | None) -> None:
        out: dict[str, Any] = {"message": message, "error": code}
        if cid is not None and self.multi:
            out["contextId"] = cid
        self._send_json(out)
