"""OpenAI-compatible speech over HTTP: ``POST /v1/audio/speech``, ``GET /v1/models``, and the
``GET /v1/audio/models`` / ``GET /v1/audio/voices`` lists that Open WebUI reads from a non-OpenAI base.

Lets OpenAI SDKs and tools talk to voxgate (``OpenAI(base_url="http://HOST:PORT/v1")``). Each request
is one in-process session on the hub (``Gateway.open_local_session``, ``gateway.local``), so it
goes through the same G2P, segmenter, scheduler and limits as a WebSocket session, and its audio is
encoded (``gateway.codecs``, one encoder per request) and streamed as the engine produces it.

Request body (JSON), and how it maps:

- ``model``: ``tts-1``, ``tts-1-hd``, ``gpt-4o-mini-tts``, ``kokoro`` or anything else: accepted, one
  engine serves them all.
- ``input``: required, non-empty, at most ``session.max_text_chars_per_context`` characters.
- ``voice``: an engine voice (e.g. "af_heart"), or one of OpenAI's names ("alloy", "nova", ...). An
  OpenAI name maps through ``compat.voice_map`` first, then to the engine voice that ends in
  ``_<name>`` (Kokoro ships ``af_alloy``, ``af_nova``, ``am_echo``, ``am_onyx``, ``bm_fable``...),
  else to ``compat.default_voice`` (empty: the session's default), so OpenAI clients work unchanged
  whatever voices are installed. An object ``{"id": ...}`` (OpenAI's custom voices) uses its id.
- ``response_format``: ``mp3`` (the default, as OpenAI's), ``opus`` (Ogg), ``aac`` (ADTS), ``flac``,
  ``wav`` or ``pcm`` (raw 16-bit little-endian mono at 24 kHz, as OpenAI's ``pcm``).
- ``speed``: OpenAI accepts 0.25-4.0, the engine 0.5-2.0: values in OpenAI's range are clamped to
  ours (a request valid for OpenAI never fails here); values outside it get a 400.
- ``instructions``: accepted and ignored (Kokoro has no style prompt).
- ``stream_format``: ``audio`` (the default: the encoded file, streamed) or ``sse``, answered as
  OpenAI does: ``text/event-stream`` of ``speech.audio.delta`` events (base64 ``audio`` in the
  requested ``response_format``) then one ``speech.audio.done`` with ``usage``.

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

import asyncio
import base64
import concurrent.futures
import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import orjson

from gateway.codecs import HTTP_FORMATS, StreamEncoder, streaming_wav_header, wav_header
from gateway.http import HttpRequest, HttpResponse
from gateway.local import LocalSession, LocalSessionClosed, LocalSessionError, LocalSpeech
from gateway.pcm import from_pcm16
from gateway.protocol import SAMPLE_RATE, SPEED_RANGE

if TYPE_CHECKING:
    from gateway.server import Gateway

__all__ = [
    "OPENAI_VOICES",
    "RESPONSE_FORMATS",
    "STREAM_FORMATS",
    "MODEL_ID",
    "MODEL_IDS",
    "ApiError",
    "SpeechRequest",
    "parse_speech_request",
    "parse_voice_map",
    "resolve_voice",
    "streaming_wav_header",
    "wav_header",
    "register",
]

logger = logging.getLogger("voxgate.openai")

MODEL_ID: Final = "kokoro"
#: Model names clients send; all are served by the one engine.
MODEL_IDS: Final = ("kokoro", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")
OPENAI_VOICES: Final = (
    "alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage", "shimmer", "verse",
)  # fmt: skip
#: response_format -> Content-Type.
RESPONSE_FORMATS: Final = {name: spec[0] for name, spec in HTTP_FORMATS.items()}
DEFAULT_RESPONSE_FORMAT: Final = "mp3"
STREAM_FORMATS: Final = ("audio", "sse")
OPENAI_SPEED_RANGE: Final = (0.25, 4.0)
#: Frames of 100 ms: a tenth of the HTTP chunks of the WebSocket default, same first-audio latency.
HTTP_FRAME_MS: Final = 100
#: Messages a response may hold unread before the session waits for the HTTP client (backpressure).
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
    stream_format: str = "audio"


def _shown(value: object) -> str:
    return repr(value) if isinstance(value, str) and len(value) <= 20 else type(value).__name__


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
    if isinstance(voice, dict):  # OpenAI's custom voice object: {"id": "voice_..."}
        voice = voice.get("id")
    if voice is not None and (not isinstance(voice, str) or not voice):
        raise ApiError(400, "'voice' must be a string", param="voice", code="invalid_value")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "'model' must be a string", param="model", code="invalid_value")
    instructions = data.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise ApiError(400, "'instructions' must be a string", param="instructions", code="invalid_value")
    fmt = data.get("response_format")
    fmt = DEFAULT_RESPONSE_FORMAT if fmt is None else fmt
    if not isinstance(fmt, str) or fmt not in RESPONSE_FORMATS:
        raise ApiError(
            400,
            f"response_format {_shown(fmt)} is not supported; use one of: {', '.join(RESPONSE_FORMATS)}",
            param="response_format",
            code="unsupported_value",
        )
    stream_format = data.get("stream_format")
    stream_format = "audio" if stream_format is None else stream_format
    if stream_format not in STREAM_FORMATS:
        raise ApiError(
            400,
            f"stream_format {_shown(stream_format)} is not supported; use one of: {', '.join(STREAM_FORMATS)}",
            param="stream_format",
            code="unsupported_value",
        )
    speed = data.get("speed", 1.0)
    lo, hi = OPENAI_SPEED_RANGE
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not math.isfinite(speed) or not lo <= speed <= hi:
        raise ApiError(400, f"'speed' must be a number in {lo}..{hi}", param="speed", code="invalid_value")
    # OpenAI's range is wider than the engine's: clamp, so requests valid for OpenAI work here.
    speed = min(max(float(speed), SPEED_RANGE[0]), SPEED_RANGE[1])
    return SpeechRequest(input=text, voice=voice, response_format=fmt, speed=speed, stream_format=stream_format)


def parse_voice_map(entries: Sequence[str]) -> dict[str, str]:
    """``compat.voice_map`` entries (``"alloy=af_bella"``) as a dict keyed by lower-case name."""
    mapping: dict[str, str] = {}
    for entry in entries:
        name, sep, voice = entry.partition("=")
        if sep and name.strip() and voice.strip():
            mapping[name.strip().lower()] = voice.strip()
    return mapping


def resolve_voice(
    voice: str | None,
    voices: Sequence[str],
    *,
    voice_map: Mapping[str, str] | None = None,
    default_voice: str = "",
) -> str | None:
    """The engine voice for a requested one; None means the session's default voice. Raises
    ``ApiError`` for a name that is neither an engine voice nor an OpenAI voice."""
    if voice is None or voice in voices:
        return voice
    name = voice.lower()
    mapped = (voice_map or {}).get(name)
    if mapped in voices:
        return mapped
    if name in OPENAI_VOICES:
        match = next((v for v in voices if v.lower().endswith("_" + name)), None)
        return match or (default_voice if default_voice in voices else None)
    raise ApiError(
        400,
        f"unknown voice {voice[:64]!r}; use one of {', '.join(voices)} or an OpenAI voice name",
        param="voice",
        code="unknown_voice",
    )


class _AudioBody:
    """The streamed response body: the first chunk (already read to surface early errors as HTTP
    errors), then the rest, each encoded by this request's own encoder on this request's own
    thread, then the encoder's flushed tail. ``aclose()`` always ends the
    session, even if iteration never started (the HTTP layer calls it when the client goes away).
    With ``sse`` each piece is wrapped in a ``speech.audio.delta`` event."""

    def __init__(self, stack: contextlib.AsyncExitStack, speech: LocalSpeech, first: bytes | None, audio_format: str, *, sse: bool) -> None:
        self._stack = stack
        self._speech = speech
        # The request's own encoding thread: its encoder is created, fed and flushed there only, and
        # mp3/AAC/Opus work (tens of ms per second of audio, benchmarks/results/codecs-vm.md) stays
        # off the event loop.
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxgate-encode")
        self._encoder_ready = self._thread.submit(StreamEncoder, audio_format, sample_rate=SAMPLE_RATE)
        self._sse = sse
        self._first = first
        self._done = first is None
        self._flushed = False
        self._sent_done = False
        self._closed = False

    def __aiter__(self) -> _AudioBody:
        return self

    async def __anext__(self) -> bytes:
        while not self._flushed:
            data = await self._next_audio()
            if data:
                return self._wrap(data)
        if self._sse and not self._sent_done:
            self._sent_done = True
            return _sse_event({"type": "speech.audio.done", "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}})
        await self.aclose()
        raise StopAsyncIteration

    async def _next_audio(self) -> bytes:
        """Encoded bytes (maybe none while the codec holds some back); the flushed tail at the end."""
        if self._first is not None:
            chunk, self._first = self._first, None
            return await self._encode(chunk)
        if not self._done:
            try:
                return await self._encode(await anext(self._speech))
            except StopAsyncIteration:
                self._done = True
            except (LocalSessionError, LocalSessionClosed) as exc:
                self._done = True
                logger.warning("speech stream ended early after %d chunks: %s", self._speech.num_chunks, exc)
        self._flushed = True
        encoder = self._encoder_ready.result()
        return await asyncio.wrap_future(self._thread.submit(encoder.finish))

    async def _encode(self, chunk: bytes) -> bytes:
        pcm = from_pcm16(chunk)
        encoder = await asyncio.wrap_future(self._encoder_ready)
        return await asyncio.wrap_future(self._thread.submit(encoder.push, pcm))

    def _wrap(self, data: bytes) -> bytes:
        if not self._sse:
            return data
        return _sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")})

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._thread.shutdown(wait=False, cancel_futures=True)
        await _close(self._stack, self._speech)


def _sse_event(event: dict[str, object]) -> bytes:
    return b"data: " + orjson.dumps(event) + b"\n\n"


async def _close(stack: contextlib.AsyncExitStack, speech: LocalSpeech | None) -> None:
    """End the request's session: a clean close cancels what it still had to say."""
    if speech is not None:
        await speech.aclose()
    await stack.aclose()


async def _models(gateway: Gateway, request: HttpRequest) -> HttpResponse:
    models = [{"id": model, "object": "model", "created": 0, "owned_by": "voxgate"} for model in MODEL_IDS]
    return HttpResponse.json(200, {"object": "list", "data": models})


async def _audio_models(gateway: Gateway, request: HttpRequest) -> HttpResponse:
    return HttpResponse.json(200, {"models": [{"id": model, "name": model} for model in MODEL_IDS]})


async def _audio_voices(gateway: Gateway, request: HttpRequest) -> HttpResponse:
    engine_voices = list(gateway.engine_facts.voices) if gateway.engine_facts is not None else []
    voices = [{"id": voice, "name": voice} for voice in engine_voices]
    voices += [{"id": name, "name": f"{name} (OpenAI name)"} for name in OPENAI_VOICES if name not in engine_voices]
    return HttpResponse.json(200, {"voices": voices})


async def _speech(gateway: Gateway, request: HttpRequest) -> HttpResponse:
    session = gateway.config.session
    try:
        req = parse_speech_request(request.body, max_chars=session.max_text_chars_per_context)
    except ApiError as exc:
        return exc.response()
    stack = contextlib.AsyncExitStack()
    speech: LocalSpeech | None = None
    compat = gateway.config.compat
    try:
        local: LocalSession = await stack.enter_async_context(gateway.open_local_session(max_queue=MAX_BUFFERED_CHUNKS))
        await local.start()
        await local.update(format="pcm_s16le", sample_rate=SAMPLE_RATE, frame_ms=HTTP_FRAME_MS)
        voice = resolve_voice(
            req.voice, local.voices, voice_map=parse_voice_map(compat.voice_map), default_voice=compat.default_voice
        )
        speech = local.speak(
            req.input,
            voice=voice,
            speed=req.speed,
            max_message_chars=session.max_text_chars_per_message,
            max_chars_per_s=session.max_chars_per_s or None,
        )
        # Wait for the first audio, so that errors before it are HTTP errors, not a cut stream.
        first: bytes | None = await anext(speech, None)
        complete = speech.take_ready()
    except ApiError as exc:
        await _close(stack, speech)
        return exc.response()
    except LocalSessionError as exc:
        await _close(stack, speech)
        return _client_error(exc).response()
    except LocalSessionClosed as exc:
        await _close(stack, speech)
        logger.warning("speech request failed: %s", exc)
        return ApiError(503, "the speech session ended unexpectedly; try again", type="server_error").response()
    except BaseException:
        await _close(stack, speech)
        raise
    content_type = RESPONSE_FORMATS[req.response_format]
    if complete and req.response_format in ("wav", "pcm") and req.stream_format != "sse":
        # Everything arrived with the first chunk (the rest is already queued): one body of known
        # length, so the WAV header carries the real sizes. Encoded formats keep their own framing.
        chunks = [first] if first is not None else []
        chunks += [chunk async for chunk in speech]
        audio = b"".join(chunks)
        await _close(stack, speech)
        header = wav_header(SAMPLE_RATE, data_bytes=len(audio)) if req.response_format == "wav" else b""
        return HttpResponse(200, body=header + audio, content_type=content_type)
    sse = req.stream_format == "sse"
    return HttpResponse(
        200,
        body=_AudioBody(stack, speech, first, req.response_format, sse=sse),
        content_type="text/event-stream" if sse else content_type,
    )


def _client_error(exc: LocalSessionError) -> ApiError:
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
    """Add the routes to ``gateway.extra_routes`` (the gateway applies its bearer-token check to
    them), each also without the ``/v1`` prefix for clients configured with a bare base URL."""
    handlers = {
        ("POST", "/v1/audio/speech"): _speech,
        ("GET", "/v1/models"): _models,
        ("GET", "/v1/audio/models"): _audio_models,
        ("GET", "/v1/audio/voices"): _audio_voices,
    }
    for (method, path), handler in handlers.items():

        async def route(request: HttpRequest, handler=handler) -> HttpResponse:  # type: ignore[no-untyped-def]
            return await handler(gateway, request)

        gateway.extra_routes[(method, path)] = route
        gateway.extra_routes[(method, path.removeprefix("/v1"))] = route
