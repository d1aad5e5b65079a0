"""OpenAI-compatible speech over HTTP: ``POST /v1/audio/speech`` and ``GET /v1/models``.

Lets OpenAI SDKs and tools talk to voxgate (``OpenAI(base_url="http://HOST:PORT/v1")``). Each request
is one in-process session (``Gateway.open_local_session`` through ``VoxgateClient.local``), so it
goes through the same G2P, segmenter, scheduler and limits as a WebSocket session, and its audio is
streamed as a chunked response while the engine produces it.

Request body (JSON), and how it maps:

- ``model``: accepted and ignored ("tts-1", "tts-1-hd", "kokoro", anything): there is one engine.
- ``input``: required, non-empty, at most ``session.max_text_chars_per_context`` characters.
- ``voice``: an engine voice (e.g. "af_heart"), or one of OpenAI's names ("alloy", "nova", ...). An
  OpenAI name maps to the engine voice that ends in ``_<name>`` when there is one (Kokoro ships
  ``af_alloy``, ``af_nova``, ``am_echo``, ``am_onyx``, ``bm_fable``...), else to the session's default
  voice, so OpenAI clients work unchanged whatever voices are installed. Missing: the default voice.
- ``response_format``: ``wav`` (the default here; OpenAI's default, mp3, is not supported) or ``pcm``
  (raw 16-bit little-endian mono at 24 kHz, as OpenAI's ``pcm``). Others get a 400.
- ``speed``: OpenAI accepts 0.25-4.0, the engine 0.5-2.0: values in OpenAI's range are clamped to
  ours (a request valid for OpenAI never fails here); values outside it get a 400.
- ``stream_format``, ``instructions``: ignored (the response always streams raw audio).

An answer that is complete before its first byte leaves (a short input: all its audio arrived
with the first chunk) is sent whole, with a Content-Length and, for WAV, the real RIFF and data
sizes. A longer answer is streamed as it is synthesized: its WAV header must leave before the
length is known, so it carries the "unknown length" sizes (0xFFFFFFFF in the RIFF and data
headers) that streaming WAV writers use; readers take the data up to the end of the stream.
Errors found before
the first audio get an HTTP error in OpenAI's shape (``{"error": {"message", "type", "param",
"code"}}``); an error after audio started ends the stream early and is logged.
"""

from __future__ import annotations

import contextlib
import logging
import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import orjson

from gateway.client import AudioChunk, Speech, VoxgateClient, VoxgateClientError, VoxgateConnectionError
from gateway.http import HttpRequest, HttpResponse
from gateway.protocol import SPEED_RANGE

if TYPE_CHECKING:
    from gateway.server import Gateway

__all__ = [
    "OPENAI_VOICES",
    "RESPONSE_FORMATS",
    "MODEL_ID",
    "ApiError",
    "SpeechRequest",
    "parse_speech_request",
    "resolve_voice",
    "streaming_wav_header",
    "wav_header",
    "register",
]

logger = logging.getLogger("voxgate.openai")

MODEL_ID: Final = "kokoro"
OPENAI_VOICES: Final = (
    "alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage", "shimmer", "verse",
)  # fmt: skip
#: response_format -> Content-Type.
RESPONSE_FORMATS: Final = {"wav": "audio/wav", "pcm": "audio/pcm"}
OPENAI_SPEED_RANGE: Final = (0.25, 4.0)
SAMPLE_RATE: Final = 24_000
#: Frames of 100 ms: a tenth of the HTTP chunks of the WebSocket default, same first-audio latency.
HTTP_FRAME_MS: Final = 100
#: Chunks a response may hold unread before the session waits for the HTTP client (backpressure).
MAX_BUFFERED_CHUNKS: Final = 32


class ApiError(Exception):
    """An error answered in OpenAI's shape; ``response()`` builds it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def response(self) -> HttpResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return HttpResponse.json(self.status, body)


@dataclass(frozen=True, slots=True)
class SpeechRequest:
    """A validated ``/v1/audio/speech`` request. ``voice`` is as given (resolved per session)."""

    input: str
    voice: str | None
    response_format: str
    speed: float


def parse_speech_request(body: bytes, *, max_chars: int) -> SpeechRequest:
    """Validate a request body; raises ``ApiError`` (400) naming the offending field."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "request body must be JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    text = data.get("input")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "'input' is required and must be a non-empty string", param="input", code="invalid_value")
    if len(text) > max_chars:
        raise ApiError(
            400, f"'input' is over {max_chars} characters", param="input", code="string_above_max_length"
        )
    voice = data.get("voice")
    if voice is not None and (not isinstance(voice, str) or not voice):
        raise ApiError(400, "'voice' must be a string", param="voice", code="invalid_value")
    fmt = data.get("response_format")
    fmt = "wav" if fmt is None else fmt
    if not isinstance(fmt, str) or fmt not in RESPONSE_FORMATS:
        shown = fmt if isinstance(fmt, str) and len(fmt) <= 20 else type(fmt).__name__
        raise ApiError(
            400,
            f"response_format {shown!r} is not supported; use one of: {', '.join(RESPONSE_FORMATS)}",
            param="response_format",
            code="unsupported_value",
        )
    speed = data.get("speed", 1.0)
    lo, hi = OPENAI_SPEED_RANGE
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not math.isfinite(speed) or not lo <= speed <= hi:
        raise ApiError(400, f"'speed' must be a number in {lo}..{hi}", param="speed", code="invalid_value")
    # OpenAI's range is wider than the engine's: clamp, so requests valid for OpenAI work here.
    speed = min(max(float(speed), SPEED_RANGE[0]), SPEED_RANGE[1])
    return SpeechRequest(input=text, voice=voice, response_format=fmt, speed=speed)


def resolve_voice(voice: str | None, voices: list[str]) -> str | None:
    """The engine voice for a requested one; None means the session's default voice. Raises
    ``ApiError`` for a name that is neither an engine voice nor an OpenAI voice."""
    if voice is None or voice in voices:
        return voice
    name = voice.lower()
    if name in OPENAI_VOICES:
        return next((v for v in voices if v.lower().endswith("_" + name)), None)
    raise ApiError(
        400,
        f"unknown voice {voice[:64]!r}; use one of {', '.join(voices)} or an OpenAI voice name",
        param="voice",
        code="unknown_voice",
    )


def streaming_wav_header(sample_rate: int, *, channels: int = 1, sample_width: int = 2) -> bytes:
    """A 44-byte PCM WAV header for a stream of unknown length (RIFF and data sizes 0xFFFFFFFF)."""
    return wav_header(sample_rate, channels=channels, sample_width=sample_width)


def wav_header(sample_rate: int, *, data_bytes: int | None = None, channels: int = 1, sample_width: int = 2) -> bytes:
    """A 44-byte PCM WAV header for ``data_bytes`` of samples; None: unknown length (0xFFFFFFFF)."""
    unknown = 0xFFFF_FFFF
    data_size = unknown if data_bytes is None else data_bytes
    riff_size = unknown if data_bytes is None else 36 + data_bytes
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", riff_size, b"WAVE",
        b"fmt ", 16, 1, channels, sample_rate, sample_rate * channels * sample_width, channels * sample_width,
        8 * sample_width,
        b"data", data_size,
    )  # fmt: skip


class _AudioBody:
    """The streamed response body: header, the first chunk (already read to surface early errors
    as HTTP errors), then the rest. ``aclose()`` always ends the session, even if iteration never
    started (the HTTP layer calls it when the client goes away)."""

    def __init__(self, client: VoxgateClient, speech: Speech, first: AudioChunk | None, header: bytes) -> None:
        self._client = client
        self._speech = speech
        self._pending: list[bytes] = [header] if header else []
        if first is not None:
            self._pending.append(first.data)
        self._done = first is None
        self._closed = False

    def __aiter__(self) -> _AudioBody:
        return self

    async def __anext__(self) -> bytes:
        if self._pending:
            return self._pending.pop(0)
        if not self._done:
            try:
                chunk = await anext(self._speech)
                return chunk.data
            except StopAsyncIteration:
                self._done = True
            except (VoxgateClientError, VoxgateConnectionError) as exc:
                self._done = True
                logger.warning("speech stream ended early after %d chunks: %s", self._speech.num_chunks, exc)
        await self.aclose()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await _close(self._client, self._speech)


async def _close(client: VoxgateClient, speech: Speech | None) -> None:
    if speech is not None and not speech.finished:
        with contextlib.suppress(VoxgateConnectionError, VoxgateClientError):
            await speech.cancel(timeout=2.0)
    await client.close()


async def _models(gateway: Gateway, request: HttpRequest) -> HttpResponse:
    model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "voxgate"}
    return HttpResponse.json(200, {"object": "list", "data": [model]})


async def _speech(gateway: Gateway, request: HttpRequest) -> HttpResponse:
    session = gateway.config.session
    try:
        req = parse_speech_request(request.body, max_chars=session.max_text_chars_per_context)
    except ApiError as exc:
        return exc.response()
    client = VoxgateClient.local(
        gateway,
        format="pcm_s16le",
        sample_rate=SAMPLE_RATE,
        frame_ms=HTTP_FRAME_MS,
        max_buffered_chunks=MAX_BUFFERED_CHUNKS,
        max_message_chars=session.max_text_chars_per_message,
        max_chars_per_s=session.max_chars_per_s or None,
    )
    speech: Speech | None = None
    try:
        await client.connect()
        voice = resolve_voice(req.voice, client.voices)
        speech = client.speak(req.input, voice=voice, speed=req.speed)
        # Wait for the first audio, so that errors before it are HTTP errors, not a cut stream.
        first: AudioChunk | None = await anext(speech, None)
    except ApiError as exc:
        await _close(client, speech)
        return exc.response()
    except VoxgateClientError as exc:
        await _close(client, speech)
        return _client_error(exc).response()
    except VoxgateConnectionError as exc:
        await _close(client, speech)
        logger.warning("speech request failed: %s", exc)
        return ApiError(503, "the speech session ended unexpectedly; try again", type="server_error").response()
    except BaseException:
        await _close(client, speech)
        raise
    content_type = RESPONSE_FORMATS[req.response_format]
    if speech.done is not None:
        # Everything arrived with the first chunk (the rest is buffered): one body of known length.
        chunks = [first.data] if first is not None else []
        chunks += [chunk.data async for chunk in speech]
        audio = b"".join(chunks)
        await _close(client, speech)
        header = wav_header(SAMPLE_RATE, data_bytes=len(audio)) if req.response_format == "wav" else b""
        return HttpResponse(200, body=header + audio, content_type=content_type)
    header = streaming_wav_header(SAMPLE_RATE) if req.response_format == "wav" else b""
    return HttpResponse(
        200,
        body=_AudioBody(client, speech, first, header),
        content_type=content_type,
    )


def _client_error(exc: VoxgateClientError) -> ApiError:
    """Map a session error to an HTTP status in OpenAI's shape."""
    if exc.code == "busy":
        return ApiError(503, exc.message, code=exc.code, type="server_error")
    if exc.code == "rate_limited":
        return ApiError(429, exc.message, code=exc.code, type="rate_limit_error")
    if exc.code == "engine_failed":
        return ApiError(500, exc.message, code=exc.code, type="server_error")
    param = {"unknown_voice": "voice", "text_too_long": "input", "empty_text": "input"}.get(exc.code)
    return ApiError(400, exc.message, param=param, code=exc.code)


def register(gateway: Gateway) -> None:
    """Add ``POST /v1/audio/speech`` and ``GET /v1/models`` to ``gateway.extra_routes`` (the
    gateway applies its bearer-token check to them)."""

    async def speech(request: HttpRequest) -> HttpResponse:
        return await _speech(gateway, request)

    async def models(request: HttpRequest) -> HttpResponse:
        return await _models(gateway, request)

    gateway.extra_routes[("POST", "/v1/audio/speech")] = speech
    gateway.extra_routes[("GET", "/v1/models")] = models
