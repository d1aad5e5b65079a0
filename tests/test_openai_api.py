"""The OpenAI-compatible endpoint, through the ``openai`` SDK and plain HTTP, on the real server."""

from __future__ import annotations

import asyncio
import io
import struct
import urllib.error
import urllib.request
import wave
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import orjson
import pytest
import pytest_asyncio

from gateway.client import VoxgateClient
from gateway.codecs import decode_bytes
from gateway.openai_api import OPENAI_VOICES, resolve_voice, streaming_wav_header
from tests.utils import run_server

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.asyncio(loop_scope="module")

TEXT = "Hello there! How are you doing today?"
MAX_CHARS = 200


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def port() -> AsyncIterator[int]:
    async with run_server({"session.max_text_chars_per_context": MAX_CHARS}) as gw:
        yield gw.port


def sdk(port: int, api_key: str = "x") -> Any:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=api_key, max_retries=0, timeout=60)


def post(port: int, body: Any, path: str = "/v1/audio/speech") -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def http_get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.read()


async def websocket_pcm(port: int, text: str, **speak: Any) -> bytes:
    """The same text through a WebSocket session: the reference audio, as 16-bit PCM bytes."""
    async with VoxgateClient(f"ws://127.0.0.1:{port}/v1/stream") as client:
        return b"".join([chunk.data async for chunk in client.speak(text, **speak)])


def pcm_to_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32_767.0


def assert_same_audio(actual: bytes, expected: bytes) -> None:
    """Same length, close samples (a piece batched with others is not bit-identical)."""
    a, b = pcm_to_float(actual), pcm_to_float(expected)
    assert len(a) == len(b) > 0
    assert np.linalg.norm(a - b) <= 0.2 * np.linalg.norm(b)


async def test_openai_sdk_gets_a_valid_wav_as_long_as_the_audio_of_the_same_text(port: int) -> None:
    def create() -> bytes:
        return sdk(port).audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="wav").content

    body = await asyncio.to_thread(create)
    reference = await websocket_pcm(port, TEXT)

    assert body[:44] == streaming_wav_header(24_000)
    riff, riff_size, wave_id, fmt_id, _, pcm_tag, channels, rate, _, _, bits, data_id, data_size = struct.unpack(
        "<4sI4s4sIHHIIHH4sI", body[:44]
    )
    assert (riff, wave_id, fmt_id, data_id) == (b"RIFF", b"WAVE", b"fmt ", b"data")
    assert (pcm_tag, channels, rate, bits) == (1, 1, 24_000, 16)
    assert riff_size == data_size == 0xFFFF_FFFF  # streamed: length unknown when the header left
    with wave.open(io.BytesIO(body)) as wav:  # the stdlib reader takes it, up to the end of the data
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 24_000)
        frames = wav.readframes(10**9)
    assert frames == body[44:]
    assert_same_audio(frames, reference)


async def test_openai_sdk_streaming_response_gives_the_same_audio_in_several_chunks(port: int) -> None:
    def stream() -> tuple[list[bytes], str]:
        with sdk(port).audio.speech.with_streaming_response.create(
            model="tts-1-hd", voice="nova", input=TEXT, response_format="pcm"
        ) as response:
            return list(response.iter_bytes(4_800)), response.headers["content-type"]

    chunks, content_type = await asyncio.to_thread(stream)
    reference = await websocket_pcm(port, TEXT)

    assert content_type == "audio/pcm"
    assert len(chunks) > 1
    assert_same_audio(b"".join(chunks), reference)


async def test_engine_voices_and_speed_go_through_and_speed_is_clamped_to_the_engine_range(port: int) -> None:
    async with VoxgateClient(f"ws://127.0.0.1:{port}/v1/stream") as client:
        voices = client.voices
    voice = voices[-1]
    status, headers, body = await asyncio.to_thread(
        post, port, {"model": "kokoro", "input": TEXT, "voice": voice, "speed": 4.0, "response_format": "pcm"}
    )
    reference = await websocket_pcm(port, TEXT, voice=voice, speed=2.0)

    assert status == 200 and headers["Content-Type"] == "audio/pcm"
    assert_same_audio(body, reference)


def test_openai_voice_names_map_to_a_matching_engine_voice_or_the_default() -> None:
    voices = ["af_heart", "af_nova", "am_onyx"]
    assert resolve_voice("nova", voices) == "af_nova"
    assert resolve_voice("Onyx", voices) == "am_onyx"
    assert resolve_voice("alloy", voices) is None  # the session's default voice
    assert resolve_voice("af_heart", voices) == "af_heart"
    assert resolve_voice(None, voices) is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "tts-1", "input": TEXT, "voice": "alloy", "response_format": "m4a"}, "response_format"),
        ({"model": "tts-1", "input": TEXT, "response_format": 3}, "response_format"),
        ({"model": "tts-1", "input": TEXT, "stream_format": "websocket"}, "stream_format"),
        ({"model": "tts-1", "input": TEXT, "instructions": 7}, "instructions"),
        ({"model": "tts-1", "voice": "alloy"}, "input"),
        ({"model": "tts-1", "input": "   ", "voice": "alloy"}, "input"),
        ({"model": "tts-1", "input": "x" * (MAX_CHARS + 1), "voice": "alloy"}, "input"),
        ({"model": "tts-1", "input": TEXT, "voice": "alloy", "speed": 5}, "speed"),
        ({"model": "tts-1", "input": TEXT, "voice": "alloy", "speed": "fast"}, "speed"),
        ({"model": "tts-1", "input": TEXT, "voice": "no_such_voice"}, "voice"),
        (b"{not json", None),
        ([1, 2], None),
    ],
)
async def test_bad_requests_get_a_400_in_openais_error_shape(port: int, body: Any, param: str | None) -> None:
    status, headers, raw = await asyncio.to_thread(post, port, body)

    assert status == 400
    assert headers["Content-Type"] == "application/json"
    error = orjson.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param


async def test_the_sdk_raises_its_bad_request_error_for_an_unsupported_format(port: int) -> None:
    def create() -> None:
        sdk(port).audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="m4a")  # type: ignore[arg-type]

    with pytest.raises(openai.BadRequestError, match="response_format"):
        await asyncio.to_thread(create)


async def test_models_lists_one_model(port: int) -> None:
    page = await asyncio.to_thread(lambda: sdk(port).models.list())

    assert [model.id for model in page.data] == ["kokoro", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"]


async def test_a_client_that_hangs_up_mid_stream_ends_its_session(port: int) -> None:
    def hang_up() -> bytes:
        with sdk(port).audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=TEXT * 4, response_format="pcm"
        ) as response:
            return next(response.iter_bytes(1_000))

    assert len(await asyncio.to_thread(hang_up)) == 1_000
    for _ in range(100):
        metrics = await asyncio.to_thread(http_get, port, "/metrics")
        if b"\nvoxgate_active_sessions 0.0" in metrics:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the HTTP request's session is still open")


async def test_the_bearer_token_guards_the_openai_routes() -> None:
    async with run_server({"server.auth_token": "sesame"}) as gw:

        def calls() -> tuple[bytes, type[Exception] | None]:
            audio = sdk(gw.port, api_key="sesame").audio.speech.create(model="tts-1", voice="alloy", input="Hi.").content
            try:
                sdk(gw.port, api_key="wrong").audio.speech.create(model="tts-1", voice="alloy", input="Hi.")
            except openai.AuthenticationError as exc:
                return audio, type(exc)
            return audio, None

        audio, refused = await asyncio.to_thread(calls)

    assert audio[:3] == b"ID3" and len(audio) > 44  # mp3, the default
    assert refused is openai.AuthenticationError


async def test_the_speech_endpoint_accepts_a_token_with_url_special_characters_in_the_query() -> None:
    import urllib.parse
    import urllib.request

    from tests.utils import run_server

    token = "a&b=c d+e"
    async with run_server({"engine.kind": "fake", "server.auth_token": token}) as gw:
        body = b'{"model":"tts-1","input":"Hi.","voice":"alloy","response_format":"pcm"}'

        def post(query: str) -> int:
            request = urllib.request.Request(
                f"http://127.0.0.1:{gw.port}/v1/audio/speech{query}", data=body, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    response.read()
                    return response.status
            except urllib.error.HTTPError as error:
                return error.code

        assert await asyncio.to_thread(post, "") == 401
        assert await asyncio.to_thread(post, "?token=" + urllib.parse.quote(token)) == 200


CONTENT_TYPES = {
    "mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac", "wav": "audio/wav", "pcm": "audio/pcm",
}  # fmt: skip


@pytest.mark.parametrize("fmt", [None, *CONTENT_TYPES])
async def test_every_response_format_through_the_sdk_decodes_to_the_length_of_the_same_speech(
    port: int, fmt: str | None
) -> None:
    def create() -> tuple[bytes, str]:
        extra = {} if fmt is None else {"response_format": fmt}
        with sdk(port).audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", voice="coral", input=TEXT, instructions="Speak cheerfully.", **extra
        ) as response:
            return response.read(), response.headers["content-type"]

    body, content_type = await asyncio.to_thread(create)
    reference = pcm_to_float(await websocket_pcm(port, TEXT))

    assert content_type == CONTENT_TYPES[fmt or "mp3"]  # omitted means mp3, as at OpenAI
    if fmt == "pcm":
        samples, rate = pcm_to_float(body), 24_000
    else:
        samples, rate = decode_bytes(body, audio_format=fmt or "mp3")
    expected_s = len(reference) / 24_000
    # Codec priming and padding add a few codec frames at most.
    assert expected_s - 0.01 <= len(samples) / rate <= expected_s + 0.1


async def test_sse_stream_format_answers_speech_audio_delta_events_then_done(port: int) -> None:
    status, headers, body = await asyncio.to_thread(
        post, port, {"model": "gpt-4o-mini-tts", "input": TEXT, "voice": "alloy", "response_format": "pcm", "stream_format": "sse"}
    )
    reference = await websocket_pcm(port, TEXT)

    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    events = [orjson.loads(line[6:]) for line in body.split(b"\n\n") if line.startswith(b"data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1) and len(events) > 2
    assert events[-1]["type"] == "speech.audio.done" and "usage" in events[-1]
    import base64

    assert_same_audio(b"".join(base64.b64decode(e["audio"]) for e in events[:-1]), reference)


async def test_every_openai_voice_name_is_accepted_and_spoken(port: int) -> None:
    for voice in OPENAI_VOICES:
        status, _, body = await asyncio.to_thread(
            post, port, {"model": "tts-1", "input": "Hi.", "voice": voice, "response_format": "pcm"}
        )
        assert status == 200 and len(body) > 0, voice


def test_the_voice_map_and_default_voice_are_used_for_openai_names() -> None:
    voices = ["af_heart", "af_nova", "am_onyx"]
    assert resolve_voice("nova", voices, voice_map={"nova": "am_onyx"}) == "am_onyx"
    assert resolve_voice("alloy", voices, default_voice="af_nova") == "af_nova"
    assert resolve_voice("alloy", voices, default_voice="not_installed") is None


async def test_open_webui_lists_come_with_and_without_the_v1_prefix(port: int) -> None:
    for prefix in ("/v1", ""):
        models = orjson.loads(await asyncio.to_thread(http_get, port, f"{prefix}/audio/models"))
        voices = orjson.loads(await asyncio.to_thread(http_get, port, f"{prefix}/audio/voices"))
        assert {"tts-1", "kokoro"} <= {m["id"] for m in models["models"]}
        ids = [v["id"] for v in voices["voices"]]
        assert set(OPENAI_VOICES) <= set(ids) and all(set(v) == {"id", "name"} for v in voices["voices"])
    status, headers, body = await asyncio.to_thread(post, port, {"input": "Hi.", "voice": "alloy"}, "/audio/speech")
    assert status == 200 and headers["Content-Type"] == "audio/mpeg" and len(body) > 0
