"""Deepgram Aura-compatible WebSocket, ``/v1/speak``, translated onto a protocol v1 session.

Client messages: ``{"type": "Speak", "text"}``, ``{"type": "Flush"}``, ``{"type": "Clear"}``,
``{"type": "Close"}``. Server messages: ``Metadata`` on connect, binary audio, ``Flushed`` and
``Cleared`` (with ``sequence_id``), ``Warning`` for a bad message (the socket stays open). Audio is
``encoding`` (``linear16`` or ``mulaw``) at ``sample_rate`` from the query, without a container.

Deepgram has no context ids: text up to a ``Flush`` is one v1 context, and audio leaves strictly in
flush order (a later context's audio waits here until the earlier one is done). ``Clear`` cancels
every context at once; ``Cleared`` is sent right away, since no audio of a cleared context is
forwarded after it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qs

import orjson

from gateway.adapters.base import AudioEvent, Event, Translator, VoiceResolver
from gateway.protocol import SAMPLE_RATE

__all__ = ["DeepgramTranslator", "ROUTE", "credential"]

ROUTE: Final = "/v1/speak"
ENCODINGS: Final = {"linear16": "pcm_s16le", "mulaw": "ulaw"}
DEFAULT_MODEL: Final = "aura-2-thalia-en"
FRAME_MS: Final = 100


def credential(headers: Mapping[str, str], query: Mapping[str, list[str]]) -> str | None:
    """The API key: ``Authorization: Token <key>`` (or ``Bearer``), or the ``token`` query value."""
    if query.get("token"):
        return query["token"][0]
    scheme, _, key = (headers.get("Authorization") or "").partition(" ")
    return key.strip() if scheme.lower() in ("token", "bearer") else None


@dataclass(eq=False)
class _Context:
    context_id: str
    flushed: bool = False
    done: bool = False
    #: Numbered at its Flush; ``Flushed`` carries it once all its audio has been sent.
    sequence_id: int = -1
    index: int | None = None
    audio: list[bytes] = field(default_factory=list)


class DeepgramTranslator(Translator):
    def __init__(self, query: str, *, voices: VoiceResolver) -> None:
        super().__init__()
        params = parse_qs(query)
        self.model = (params.get("model") or [DEFAULT_MODEL])[0][:128]
        encoding = (params.get("encoding") or ["linear16"])[0]
        rate_text = (params.get("sample_rate") or ["8000" if encoding == "mulaw" else str(SAMPLE_RATE)])[0]
        self.problem: str | None = None
        self.format = ENCODINGS.get(encoding)
        self.sample_rate = int(rate_text) if rate_text.isdigit() else 0
        if self.format is None:
            self.problem = f"encoding {encoding[:20]!r} is not supported; use linear16 or mulaw"
        elif not 8_000 <= self.sample_rate <= 48_000 or (self.format == "ulaw" and self.sample_rate != 8_000):
            self.problem = "sample_rate must be 8000..48000 (8000 for mulaw)"
        # aura-2-thalia-en: the voice is the model's middle part, mapped like any vendor voice id.
        parts = self.model.split("-")
        self.voice = voices.resolve(self.model, parts[-2] if len(parts) >= 3 else None)
        self._queue: list[_Context] = []
        self._index_to_context: dict[int, _Context] = {}
        self._num_contexts = 0
        self._sequence_id = 0

    def start(self, created: Mapping[str, Any]) -> None:
        if self.problem is not None:
            self._send_json({"type": "Error", "err_code": "INVALID_QUERY_PARAMETER", "err_msg": self.problem})
            self._close(1008, "invalid query")
            return
        update: dict[str, Any] = {"type": "session.update", "format": self.format, "sample_rate": self.sample_rate, "frame_ms": FRAME_MS}
        if self.voice is not None:
            update["voice"] = self.voice
        self._session_out.append(update)
        request_id = str(uuid.uuid4())
        self._send_json({"type": "Metadata", "request_id": request_id, "model_name": self.model, "model_version": "voxgate", "model_uuid": request_id})

    def receive_client(self, raw: str | bytes) -> None:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._warn("message is not valid JSON")
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "Speak":
            text = message.get("text")
            if not isinstance(text, str):
                self._warn("Speak needs a text string")
                return
            if text:
                context = self._current()
                self._session_out.append({"type": "text", "context_id": context.context_id, "text": text})
        elif kind == "Flush":
            sequence_id, self._sequence_id = self._sequence_id, self._sequence_id + 1
            context = self._queue[-1] if self._queue and not self._queue[-1].flushed else None
            if context is None:  # nothing to speak: answered in order, after the audio before it
                if not self._queue:
                    self._send_json({"type": "Flushed", "sequence_id": sequence_id})
                else:
                    self._queue.append(_Context("", flushed=True, done=True, sequence_id=sequence_id))
                return
            context.flushed, context.sequence_id = True, sequence_id
            self._session_out.append({"type": "flush", "context_id": context.context_id, "final": True})
        elif kind == "Clear":
            for context in self._queue:
                if not context.done:
                    self._session_out.append({"type": "cancel", "context_id": context.context_id})
            self._queue.clear()
            self._send_json({"type": "Cleared", "sequence_id": max(0, self._sequence_id - 1)})
        elif kind == "Close":
            self._session_out.append({"type": "cancel"})
            self._close(1000, "")
        else:
            shown = kind if isinstance(kind, str) and len(kind) <= 20 else type(kind).__name__
            self._warn(f"unknown message type {shown!r}; expected Speak, Flush, Clear or Close")

    def _current(self) -> _Context:
        if not self._queue or self._queue[-1].flushed:
            self._queue.append(_Context(f"dg-{self._num_contexts}"))
            self._num_contexts += 1
        return self._queue[-1]

    def receive_event(self, event: Event) -> None:
        if isinstance(event, AudioEvent):
            context = self._index_to_context.get(event.context_index)
            if context is not None and context in self._queue and event.payload:
                context.audio.append(event.payload)
                self._drain()
            return
        kind = event.get("type")
        cid = event.get("context_id")
        context = next((c for c in self._queue if c.context_id == cid), None)
        if kind == "context.started" and context is not None:
            context.index = int(event["index"])
            self._index_to_context[context.index] = context
        elif kind == "context.done" and context is not None:
            context.done = True
            self._drain()
        elif kind == "error":
            self._warn(str(event.get("message", "")))
            if context is not None and event.get("code") == "unknown_context" and context.index is None:
                # Its text was refused and its Flush found no context: it will never speak.
                context.done = True
                self._drain()

    def _drain(self) -> None:
        """Send audio of the oldest context; when it is done, ``Flushed`` and move on."""
        while self._queue:
            head = self._queue[0]
            self._client_out.extend(head.audio)
            head.audio.clear()
            if not head.done:
                return
            self._queue.pop(0)
            if head.index is not None:
                self._index_to_context.pop(head.index, None)
            self._send_json({"type": "Flushed", "sequence_id": head.sequence_id})

    def _warn(self, description: str) -> None:
        self._send_json({"type": "Warning", "warn_code": "BAD_REQUEST", "warn_msg": description})
