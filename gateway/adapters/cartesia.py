"""Cartesia-compatible WebSocket, ``/tts/websocket``, translated onto a protocol v1 session.

Client messages: generation requests ``{"context_id", "transcript", "continue", "voice": {"mode":
"id", "id"}, "output_format": {"container": "raw", "encoding", "sample_rate"}, "add_timestamps",
...}`` and ``{"context_id", "cancel": true}``. Server messages: ``{"type": "chunk", "data": <base64>}``,
``{"type": "timestamps", "word_timestamps": {"words", "start", "end"}}`` (seconds from the context's
start), ``{"type": "done"}`` and ``{"type": "error", "error"}``, each with ``context_id``,
``status_code`` and ``done``. A context's output format is fixed by its first request.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from gateway.adapters.base import AudioEvent, Event, Translator, VoiceResolver

__all__ = ["CartesiaTranslator", "parse_output_format", "ROUTE", "credential"]

ROUTE: Final = "/tts/websocket"
ENCODINGS: Final = {"pcm_s16le": "pcm_s16le", "pcm_f32le": "pcm_f32le", "pcm_mulaw": "ulaw"}
FRAME_MS: Final = 100


def credential(headers: Mapping[str, str], query: Mapping[str, list[str]]) -> str | None:
    """The API key: ``X-API-Key``, ``Authorization: Bearer``, or the ``api_key`` query value."""
    if query.get("api_key"):
        return query["api_key"][0]
    auth = headers.get("Authorization") or ""
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get("X-API-Key")


def parse_output_format(value: Any) -> tuple[str, int] | str:
    """(v1 format, sample rate) for an ``output_format`` object, or why it is refused."""
    if not isinstance(value, dict):
        return "output_format must be an object with container, encoding and sample_rate"
    container = value.get("container", "raw")
    rate = value.get("sample_rate")
    if not isinstance(rate, int) or isinstance(rate, bool) or not 8_000 <= rate <= 48_000:
        return "output_format.sample_rate must be an integer in 8000..48000"
    if container == "mp3":
        return ("mp3", rate) if rate in (22_050, 24_000, 44_100, 48_000) else "mp3 needs sample_rate 22050, 24000, 44100 or 48000"
    if container != "raw":
        return f"output_format.container {str(container)[:20]!r} is not supported; use raw or mp3"
    encoding = ENCODINGS.get(value.get("encoding"))  # type: ignore[arg-type]
    if encoding is None:
        return f"output_format.encoding must be one of {', '.join(ENCODINGS)}"
    if encoding == "ulaw" and rate != 8_000:
        return "pcm_mulaw needs sample_rate 8000"
    return encoding, rate


@dataclass(eq=False)
class _Context:
    context_id: str
    timestamps: bool
    index: int | None = None


class CartesiaTranslator(Translator):
    def __init__(self, *, voices: VoiceResolver) -> None:
        super().__init__()
        self.voices = voices
        self._contexts: dict[str, _Context] = {}
        self._index_to_id: dict[int, str] = {}
        self._audio: tuple[str, int] | None = None

    def start(self, created: Mapping[str, Any]) -> None:
        self._session_out.append({"type": "session.update", "frame_ms": FRAME_MS, "alignment": True})

    def receive_client(self, raw: str | bytes) -> None:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._error(None, "message is not valid JSON")
            return
        if not isinstance(message, dict):
            self._error(None, "message must be a JSON object")
            return
        cid = message.get("context_id", "default")
        if not isinstance(cid, str) or not 1 <= len(cid) <= 128:
            self._error(None, "context_id must be a string of 1..128 characters")
            return
        if message.get("cancel") is True:
            if self._contexts.pop(cid, None) is not None:
                self._session_out.append({"type": "cancel", "context_id": cid})
            return
        transcript = message.get("transcript", "")
        if not isinstance(transcript, str):
            self._error(cid, "transcript must be a string")
            return
        context = self._contexts.get(cid)
        if context is None:
            if not self._open(cid, message):
                return
            context = self._contexts[cid]
            self._session_out.append(self._first_text(cid, transcript or " ", message))
        elif transcript:
            self._session_out.append({"type": "text", "context_id": cid, "text": transcript})
        if message.get("continue") is not True:
            self._session_out.append({"type": "flush", "context_id": cid, "final": True})

    def _open(self, cid: str, message: Mapping[str, Any]) -> bool:
        audio = parse_output_format(message.get("output_format"))
        if isinstance(audio, str):
            self._error(cid, audio)
            return False
        if audio != self._audio:
            # Settings apply to contexts opened after the update: this one.
            self._session_out.append({"type": "session.update", "format": audio[0], "sample_rate": audio[1]})
            self._audio = audio
        self._contexts[cid] = _Context(cid, timestamps=message.get("add_timestamps") is True)
        return True

    def _first_text(self, cid: str, text: str, message: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "text", "context_id": cid, "text": text}
        voice = message.get("voice")
        voice_id = voice.get("id") if isinstance(voice, dict) and voice.get("mode", "id") == "id" else None
        resolved = self.voices.resolve(voice_id if isinstance(voice_id, str) else None)
        if resolved is not None:
            out["voice"] = resolved
        config = message.get("generation_config")
        speed = config.get("speed") if isinstance(config, dict) else None
        if isinstance(speed, int | float) and not isinstance(speed, bool):
            out["speed"] = min(max(float(speed), 0.5), 2.0)
        return out

    def receive_event(self, event: Event) -> None:
        if isinstance(event, AudioEvent):
            cid = self._index_to_id.get(event.context_index)
            if cid in self._contexts and event.payload:
                data = base64.b64encode(event.payload).decode("ascii")
                self._send_json({"type": "chunk", "data": data, "done": False, "status_code": 206, "step_time": 0, "context_id": cid})
            return
        kind = event.get("type")
        cid = event.get("context_id")
        if kind == "context.started" and isinstance(cid, str):
            self._index_to_id[int(event["index"])] = cid
        elif kind == "alignment" and cid in self._contexts and self._contexts[cid].timestamps:
            words = event.get("words", [])
            if words:
                timestamps = {
                    "words": [w["word"] for w in words],
                    "start": [w["start_ms"] / 1000 for w in words],
                    "end": [w["end_ms"] / 1000 for w in words],
                }
                self._send_json({"type": "timestamps", "context_id": cid, "status_code": 206, "done": False, "word_timestamps": timestamps})
        elif kind == "context.done" and isinstance(cid, str) and self._contexts.pop(cid, None) is not None:
            self._send_json({"type": "done", "context_id": cid, "status_code": 206, "done": True})
        elif kind == "error":
            self._error(cid if isinstance(cid, str) else None, str(event.get("message", "")))

    def _error(self, cid: str | None, message: str) -> None:
        out: dict[str, Any] = {"type": "error", "status_code": 400, "done": True, "error": message}
        if cid is not None:
            out["context_id"] = cid
            self._contexts.pop(cid, None)
        self._send_json(out)
