"""Protocol v1 as values: client messages in, server messages and audio frames out.

Nothing here touches a socket or a clock. ``parse_client_message(raw)`` turns a text frame into a
frozen dataclass or raises ``ProtocolError`` with a stable code; ``encode_audio_frame`` /
``decode_audio_frame`` define the 16-byte binary header that tests and ``web-demo/voxgate.js`` share.
The full specification is ``docs/protocol.md``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from enum import IntFlag
from typing import Any, Final

import orjson

from gateway.errors import ProtocolError

__all__ = [
    "PROTOCOL_VERSION",
    "STREAM_PATH",
    "SAMPLE_RATE",
    "AUDIO_FORMATS",
    "FRAME_HEADER",
    "FrameFlags",
    "AudioFrameHeader",
    "SessionUpdate",
    "TextMessage",
    "FlushMessage",
    "CancelMessage",
    "ClientMessage",
    "parse_client_message",
    "encode_audio_frame",
    "decode_audio_frame",
    "dumps",
    "context_id_of",
    "split_text",
]

PROTOCOL_VERSION: Final = "v1"
#: The WebSocket path of protocol v1 (``ws://host:port/v1/stream``).
STREAM_PATH: Final = "/v1/stream"
#: The rate every engine produces (Kokoro's 24 kHz mono) and a session's default ``sample_rate``.
SAMPLE_RATE: Final = 24_000
AUDIO_FORMATS: Final = ("pcm_s16le", "pcm_f32le", "ulaw", "opus", "mp3")
# seq u32, context index u32, sample offset u32, flags u16, reserved u16: little-endian, 16 bytes.
FRAME_HEADER: Final = struct.Struct("<IIIHH")
MAX_CONTEXT_ID_CHARS: Final = 128
SPEED_RANGE: Final = (0.5, 2.0)
SAMPLE_RATE_RANGE: Final = (8_000, 48_000)
FRAME_MS_RANGE: Final = (10, 1_000)
PRIORITY_RANGE: Final = (-10, 10)


class FrameFlags(IntFlag):
    NONE = 0
    FIRST = 1  # first frame of its context
    LAST = 2  # last frame of its context


@dataclass(frozen=True, slots=True)
class AudioFrameHeader:
    seq: int
    context_index: int
    sample_offset: int
    flags: FrameFlags


def encode_audio_frame(seq: int, context_index: int, sample_offset: int, flags: int, payload: bytes) -> bytes:
    """One binary WebSocket message: the 16-byte header followed by the encoded audio."""
    return FRAME_HEADER.pack(seq, context_index, sample_offset, flags, 0) + payload


def decode_audio_frame(data: bytes) -> tuple[AudioFrameHeader, bytes]:
    """Split a binary message into its header and payload; raises ``ValueError`` when too short."""
    if len(data) < FRAME_HEADER.size:
        raise ValueError(f"audio frame shorter than its {FRAME_HEADER.size}-byte header")
    seq, context_index, offset, flags, _reserved = FRAME_HEADER.unpack_from(data)
    return AudioFrameHeader(seq, context_index, offset, FrameFlags(flags)), data[FRAME_HEADER.size :]


# --- client messages --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionUpdate:
    voice: str | None = None
    speed: float | None = None
    lang: str | None = None
    format: str | None = None
    sample_rate: int | None = None
    frame_ms: int | None = None
    alignment: bool | None = None


@dataclass(frozen=True, slots=True)
class TextMessage:
    context_id: str
    text: str
    voice: str | None = None
    speed: float | None = None
    lang: str | None = None
    priority: int | None = None
    ttl_ms: int | None = None


@dataclass(frozen=True, slots=True)
class FlushMessage:
    context_id: str
    final: bool = False


@dataclass(frozen=True, slots=True)
class CancelMessage:
    #: None cancels every open context of the session.
    context_id: str | None = None


ClientMessage = SessionUpdate | TextMessage | FlushMessage | CancelMessage


def parse_client_message(raw: str | bytes) -> ClientMessage:
    """Parse one text frame. Raises ``ProtocolError`` (code ``bad_json``, ``unknown_type`` or
    ``bad_field``) naming the problem; the caller answers with an ``error`` and keeps the session."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProtocolError("message is not valid JSON", code="bad_json") from None
    if not isinstance(data, dict):
        raise ProtocolError("message must be a JSON object", code="bad_json")
    kind = data.get("type")
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        shown = kind if isinstance(kind, str) and len(kind) <= 40 else type(kind).__name__
        raise ProtocolError(
            f"unknown message type {shown!r}; expected one of {', '.join(sorted(_PARSERS))}",
            code="unknown_type",
        )
    fields = _Fields(data)
    message = parser(fields)
    return message


class _Fields:
    """Typed, range-checked access to a message's fields, with errors that name the field."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.context_id: str | None = None

    def context(self, *, required: bool) -> str | None:
        value = self.data.get("context_id")
        if value is None and not required:
            return None
        if not isinstance(value, str) or not 1 <= len(value) <= MAX_CONTEXT_ID_CHARS:
            raise ProtocolError(f"context_id must be a string of 1..{MAX_CONTEXT_ID_CHARS} characters")
        self.context_id = value
        return value

    def fail(self, message: str) -> ProtocolError:
        return ProtocolError(message, context_id=self.context_id)

    def string(self, name: str, *, required: bool = False, choices: tuple[str, ...] | None = None) -> str | None:
        value = self.data.get(name)
        if value is None:
            if required:
                raise self.fail(f"{name} is required")
            return None
        if not isinstance(value, str):
            raise self.fail(f"{name} must be a string")
        if choices is not None and value not in choices:
            raise self.fail(f"{name} must be one of {', '.join(choices)}")
        return value

    def number(self, name: str, lo: float, hi: float) -> float | None:
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(f"{name} must be a number in {lo}..{hi}")
        if not lo <= value <= hi:
            raise self.fail(f"{name} must be a number in {lo}..{hi}")
        return float(value)

    def integer(self, name: str, lo: int, hi: int) -> int | None:
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.fail(f"{name} must be an integer in {lo}..{hi}")
        return value

    def boolean(self, name: str) -> bool | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self.fail(f"{name} must be true or false")
        return value


def _parse_session_update(f: _Fields) -> SessionUpdate:
    return SessionUpdate(
        voice=f.string("voice"),
        speed=f.number("speed", *SPEED_RANGE),
        lang=f.string("lang"),
        format=f.string("format", choices=AUDIO_FORMATS),
        sample_rate=f.integer("sample_rate", *SAMPLE_RATE_RANGE),
        frame_ms=f.integer("frame_ms", *FRAME_MS_RANGE),
        alignment=f.boolean("alignment"),
    )


def _parse_text(f: _Fields) -> TextMessage:
    context_id = f.context(required=True)
    assert context_id is not None
    text = f.string("text", required=True)
    assert text is not None
    return TextMessage(
        context_id=context_id,
        text=text,
        voice=f.string("voice"),
        speed=f.number("speed", *SPEED_RANGE),
        lang=f.string("lang"),
        priority=f.integer("priority", *PRIORITY_RANGE),
        ttl_ms=f.integer("ttl_ms", 1, 3_600_000),
    )


def _parse_flush(f: _Fields) -> FlushMessage:
    context_id = f.context(required=True)
    assert context_id is not None
    return FlushMessage(context_id=context_id, final=bool(f.boolean("final")))


def _parse_cancel(f: _Fields) -> CancelMessage:
    return CancelMessage(context_id=f.context(required=False))


_PARSERS = {
    "session.update": _parse_session_update,
    "text": _parse_text,
    "flush": _parse_flush,
    "cancel": _parse_cancel,
}


def dumps(message: dict[str, Any]) -> str:
    """Serialize a server message for a text frame."""
    return orjson.dumps(message).decode()


def context_id_of(raw: str | bytes) -> str | None:
    """The ``context_id`` of a message when it parses, so that an error about a message refused
    before parsing (too big, rate limited, shutting down) still names its context."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    value = data.get("context_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and len(value) <= MAX_CONTEXT_ID_CHARS else None


def split_text(text: str, limit: int) -> list[str]:
    """Cut ``text`` into ``text`` messages of at most ``limit`` characters, at whitespace where possible.
    Pieces concatenate back to ``text`` exactly (the server's segmenter joins fragments); empty
    fragments are left out (the server refuses them)."""
    pieces: list[str] = []
    while len(text) > limit:
        cut = max(text.rfind(" ", limit // 2, limit), text.rfind("\n", limit // 2, limit))
        cut = cut + 1 if cut > 0 else limit
        pieces.append(text[:cut])
        text = text[cut:]
    if text:
        pieces.append(text)
    return pieces
