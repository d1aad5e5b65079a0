"""Vendor adapters: the sans-I/O translators on their own, then each endpoint on a live gateway with a
plain WebSocket client speaking the vendor's message shapes (what Pipecat and LiveKit send)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import pytest_asyncio
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.adapters import find_adapter
from gateway.adapters.base import AudioEvent, VoiceResolver, char_timings
from gateway.adapters.cartesia import CartesiaTranslator
from gateway.adapters.deepgram import DeepgramTranslator
from gateway.adapters.elevenlabs import ElevenLabsTranslator, parse_output_format
from gateway.client import VoxgateClient
from gateway.codecs import decode_bytes
from tests.utils import run_server

VOICES = VoiceResolver(["af_heart", "am_onyx"], voice_map={"rachel": "am_onyx"}, default_voice="")
TEXT = "Hello there, my friend. How are you doing today?"
TOKEN = "sesame"


def client_messages(translator: Any) -> list[Any]:
    return [orjson.loads(m) if isinstance(m, str) else m for m in translator.to_client()]


def send(translator: Any, message: dict[str, Any]) -> list[dict[str, Any]]:
    translator.receive_client(orjson.dumps(message).decode())
    return translator.to_session()


# --- sans-I/O ---------------------------------------------------------------------------------------


def test_routes_map_to_their_vendor() -> None:
    assert find_adapter("/v1/text-to-speech/abc/stream-input").name == "elevenlabs"  # type: ignore[union-attr]
    assert find_adapter("/v1/text-to-speech/abc/multi-stream-input").name == "elevenlabs"  # type: ignore[union-attr]
    assert find_adapter("/tts/websocket").name == "cartesia"  # type: ignore[union-attr]
    assert find_adapter("/v1/speak").name == "deepgram"  # type: ignore[union-attr]
    assert find_adapter("/v1/text-to-speech/a/b/stream-input") is None
    assert find_adapter("/v1/stream") is None


def test_voice_ids_map_through_the_voice_map_then_engine_names_then_the_default() -> None:
    assert VOICES.resolve("Rachel") == "am_onyx"
    assert VOICES.resolve("af_heart") == "af_heart"
    assert VOICES.resolve("21m00Tcm4TlvDq8ikWAM") is None  # the session's default voice
    assert VoiceResolver(["a", "b"], voice_map={}, default_voice="b").resolve("unknown") == "b"
    # Deepgram's model name: the whole name, then its voice part
    resolver = VoiceResolver(["af_heart", "am_onyx"], voice_map={"thalia": "af_heart"}, default_voice="am_onyx")
    assert DeepgramTranslator("model=aura-2-thalia-en", voices=resolver).voice == "af_heart"
    assert DeepgramTranslator("model=aura-2-zeus-en", voices=resolver).voice == "am_onyx"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("pcm_16000", ("pcm_s16le", 16_000)), ("pcm_24000", ("pcm_s16le", 24_000)), ("ulaw_8000", ("ulaw", 8_000)),
     ("mp3_22050_32", ("mp3", 22_050)), ("mp3_44100_128", ("mp3", 44_100)), ("opus_48000_64", None), ("pcm_11", None),
     ("ulaw_16000", None), ("junk", None)],
)  # fmt: skip
def test_elevenlabs_output_formats(value: str, expected: tuple[str, int] | None) -> None:
    assert parse_output_format(value) == expected


def test_char_timings_are_monotonic_and_cover_each_word() -> None:
    words = [{"word": "Hello", "start_ms": 75.0, "end_ms": 325.0}, {"word": "there", "start_ms": 375.0, "end_ms": 575.0}]
    chars, starts, durations = char_timings(words)
    assert "".join(chars) == "Hello there"
    assert starts == sorted(starts) and starts[0] == 75 and starts[-1] + durations[-1] == 575
    chars, starts, _ = char_timings(words, origin_ms=50.0, space_from_ms=50.0)
    assert chars[0] == " " and starts[0] == 0 and starts == sorted(starts)


def test_elevenlabs_multi_context_messages_become_v1_messages() -> None:
    el = ElevenLabsTranslator("/v1/text-to-speech/rachel/multi-stream-input", "output_format=pcm_16000", voices=VOICES)
    el.start({})
    assert el.to_session() == [
        {"type": "session.update", "format": "pcm_s16le", "sample_rate": 16_000, "frame_ms": 100, "alignment": True, "voice": "am_onyx"}
    ]
    assert send(el, {"text": " ", "context_id": "a", "voice_settings": {"speed": 1.1}}) == [
        {"type": "text", "context_id": "a", "text": " ", "speed": 1.1}
    ]
    assert send(el, {"text": "Hi. ", "context_id": "a", "flush": True}) == [
        {"type": "text", "context_id": "a", "text": "Hi. "},
        {"type": "flush", "context_id": "a"},
    ]
    assert send(el, {"text": "", "context_id": "a"}) == []  # keep-alive
    # close_context after a flush: finish the turn
    assert send(el, {"context_id": "a", "close_context": True}) == [{"type": "flush", "context_id": "a", "final": True}]
    # close_context with unflushed text: an interruption
    send(el, {"text": "More words", "context_id": "b"})
    assert send(el, {"context_id": "b", "close_context": True}) == [{"type": "cancel", "context_id": "b"}]
    assert send(el, {"close_socket": True}) == [{"type": "cancel"}] and el.closing


def test_elevenlabs_events_become_audio_with_alignment_then_is_final() -> None:
    el = ElevenLabsTranslator("/v1/text-to-speech/x/multi-stream-input", "", voices=VOICES)
    el.start({})
    send(el, {"text": "Hello there", "context_id": "a"})
    el.receive_event({"type": "context.started", "context_id": "a", "index": 0})
    el.receive_event({"type": "alignment", "context_id": "a", "words": [{"word": "Hello", "start_ms": 75.0, "end_ms": 325.0}]})
    el.receive_event(AudioEvent(0, 0, True, False, b"\x01\x02"))
    el.receive_event(AudioEvent(0, 1, False, False, b""))  # mp3 frames may be empty: nothing sent
    el.receive_event({"type": "context.done", "context_id": "a"})
    audio, final = client_messages(el)
    assert base64.b64decode(audio["audio"]) == b"\x01\x02" and audio["contextId"] == "a" and audio["isFinal"] is False
    assert audio["alignment"]["chars"] == list("Hello") and len(audio["alignment"]["charDurationsMs"]) == 5
    assert audio["normalizedAlignment"] == audio["alignment"]
    assert final == {"isFinal": True, "contextId": "a"}


def test_elevenlabs_single_stream_ends_on_empty_text_and_closes_after_is_final() -> None:
    el = ElevenLabsTranslator("/v1/text-to-speech/x/stream-input", "output_format=ulaw_8000", voices=VOICES)
    el.start({})
    el.to_session()
    send(el, {"text": " ", "xi_api_key": "ignored"})
    assert send(el, {"text": ""}) == [{"type": "flush", "context_id": "stream-input", "final": True}]
    el.receive_event({"type": "context.done", "context_id": "stream-input"})
    assert client_messages(el) == [{"isFinal": True}] and el.closing and el.close_code == 1000


def test_elevenlabs_bad_input_gets_an_error_and_the_socket_stays_open() -> None:
    el = ElevenLabsTranslator("/v1/text-to-speech/x/multi-stream-input", "output_format=opus_48000_64", voices=VOICES)
    el.start({})
    assert client_messages(el)[0]["error"] == "invalid_output_format" and el.closing and el.close_code == 1008
    el = ElevenLabsTranslator("/v1/text-to-speech/x/multi-stream-input", "", voices=VOICES)
    el.receive_client("{not json")
    el.receive_client(orjson.dumps({"text": 3, "context_id": "a"}))
    errors = client_messages(el)
    assert [e["error"] for e in errors] == ["invalid_message", "invalid_message"] and not el.closing


def test_cartesia_requests_become_v1_messages_and_events_cartesia_messages() -> None:
    ca = CartesiaTranslator(voices=VOICES)
    ca.start({})
    ca.to_session()
    fmt = {"container": "raw", "encoding": "pcm_f32le", "sample_rate": 16_000}
    base = {"context_id": "c", "voice": {"mode": "id", "id": "af_heart"}, "output_format": fmt, "add_timestamps": True}
    assert send(ca, {**base, "transcript": "Hello ", "continue": True, "generation_config": {"speed": 1.2}}) == [
        {"type": "session.update", "format": "pcm_f32le", "sample_rate": 16_000},
        {"type": "text", "context_id": "c", "text": "Hello ", "voice": "af_heart", "speed": 1.2},
    ]
    assert send(ca, {**base, "transcript": "", "continue": False}) == [{"type": "flush", "context_id": "c", "final": True}]
    ca.receive_event({"type": "context.started", "context_id": "c", "index": 3})
    ca.receive_event({"type": "alignment", "context_id": "c", "words": [{"word": "Hello", "start_ms": 75.0, "end_ms": 325.0}]})
    ca.receive_event(AudioEvent(3, 0, True, False, b"abcd"))
    ca.receive_event({"type": "context.done", "context_id": "c"})
    ts, chunk, done = client_messages(ca)
    assert ts["type"] == "timestamps" and ts["word_timestamps"] == {"words": ["Hello"], "start": [0.075], "end": [0.325]}
    assert chunk["type"] == "chunk" and base64.b64decode(chunk["data"]) == b"abcd" and chunk["context_id"] == "c"
    assert done == {"type": "done", "context_id": "c", "status_code": 206, "done": True}


def test_cartesia_cancel_and_bad_formats() -> None:
    ca = CartesiaTranslator(voices=VOICES)
    fmt = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 24_000}
    send(ca, {"context_id": "c", "transcript": "Hello", "continue": True, "output_format": fmt})
    assert send(ca, {"context_id": "c", "cancel": True}) == [{"type": "cancel", "context_id": "c"}]
    ca.receive_event(AudioEvent(0, 0, True, False, b"late"))  # nothing after a cancel
    assert send(ca, {"context_id": "d", "transcript": "x", "output_format": {**fmt, "container": "wav"}}) == []
    assert send(ca, {"context_id": "e", "transcript": "x", "output_format": {**fmt, "encoding": "pcm_mulaw"}}) == []
    errors = client_messages(ca)
    assert [e["type"] for e in errors] == ["error", "error"] and [e["context_id"] for e in errors] == ["d", "e"]


def test_deepgram_audio_leaves_in_flush_order_and_clear_drops_the_rest() -> None:
    dg = DeepgramTranslator("encoding=linear16&sample_rate=16000&model=aura-2-thalia-en", voices=VOICES)
    dg.start({})
    assert dg.to_session()[0]["sample_rate"] == 16_000 and client_messages(dg)[0]["type"] == "Metadata"
    assert send(dg, {"type": "Speak", "text": "One."}) == [{"type": "text", "context_id": "dg-0", "text": "One."}]
    assert send(dg, {"type": "Flush"}) == [{"type": "flush", "context_id": "dg-0", "final": True}]
    send(dg, {"type": "Speak", "text": "Two."})
    send(dg, {"type": "Flush"})
    dg.receive_event({"type": "context.started", "context_id": "dg-0", "index": 0})
    dg.receive_event({"type": "context.started", "context_id": "dg-1", "index": 1})
    dg.receive_event(AudioEvent(1, 0, True, False, b"two"))  # the second context finished first ...
    dg.receive_event(AudioEvent(0, 0, True, False, b"one"))
    assert client_messages(dg) == [b"one"]  # ... but waits for the first one
    dg.receive_event({"type": "context.done", "context_id": "dg-0"})
    assert client_messages(dg) == [{"type": "Flushed", "sequence_id": 0}, b"two"]
    send(dg, {"type": "Speak", "text": "Three."})
    assert send(dg, {"type": "Clear"}) == [{"type": "cancel", "context_id": "dg-1"}, {"type": "cancel", "context_id": "dg-2"}]
    dg.receive_event(AudioEvent(1, 1, False, False, b"late"))
    assert client_messages(dg) == [{"type": "Cleared", "sequence_id": 1}]


def test_deepgram_an_utterance_the_session_refused_does_not_hold_back_the_next() -> None:
    dg = DeepgramTranslator("", voices=VOICES)
    send(dg, {"type": "Speak", "text": "x" * 10})
    send(dg, {"type": "Flush"})
    send(dg, {"type": "Speak", "text": "Next."})
    send(dg, {"type": "Flush"})
    dg.receive_event({"type": "error", "code": "text_too_long", "message": "too long", "context_id": "dg-0"})
    dg.receive_event({"type": "error", "code": "unknown_context", "message": "no open context", "context_id": "dg-0"})
    dg.receive_event({"type": "context.started", "context_id": "dg-1", "index": 0})
    dg.receive_event(AudioEvent(0, 0, True, False, b"next"))
    assert [m if isinstance(m, bytes) else m["type"] for m in client_messages(dg)] == ["Warning", "Warning", "Flushed", b"next"]


def test_deepgram_bad_messages_get_warnings_and_bad_query_an_error() -> None:
    dg = DeepgramTranslator("", voices=VOICES)
    dg.receive_client("nope")
    dg.receive_client('{"type":"Shout"}')
    dg.receive_client('{"type":"Speak","text":5}')
    assert [m["type"] for m in client_messages(dg)] == ["Warning"] * 3 and not dg.closing
    dg = DeepgramTranslator("encoding=alaw", voices=VOICES)
    dg.start({})
    assert client_messages(dg)[0]["type"] == "Error" and dg.closing


# --- live ---------------------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def port() -> AsyncIterator[int]:
    async with run_server({"server.auth_token": TOKEN}) as gw:
        yield gw.port


async def reference_seconds(port: int, text: str = TEXT) -> float:
    async with VoxgateClient(f"ws://127.0.0.1:{port}/v1/stream", token=TOKEN) as client:
        return sum(len(c.samples) for c in [c async for c in client.speak(text)]) / 24_000


async def elevenlabs_turn(port: int, text: str, *, output_format: str = "pcm_16000", query: str = "") -> tuple[bytes, list[dict[str, Any]]]:
    url = f"ws://127.0.0.1:{port}/v1/text-to-speech/anyvoice/multi-stream-input?output_format={output_format}{query}"
    audio, alignments = b"", []
    async with connect(url, additional_headers={"xi-api-key": TOKEN}) as ws:
        await ws.send(orjson.dumps({"text": " ", "context_id": "t1"}).decode())
        await ws.send(orjson.dumps({"text": text + " ", "context_id": "t1"}).decode())
        await ws.send(orjson.dumps({"text": "", "context_id": "t1", "flush": True}).decode())
        await ws.send(orjson.dumps({"context_id": "t1", "close_context": True}).decode())
        async for raw in ws:
            message = orjson.loads(raw)
            assert "error" not in message, message
            if message.get("audio"):
                audio += base64.b64decode(message["audio"])
            if message.get("alignment"):
                alignments.append(message["alignment"])
            if message.get("isFinal"):
                assert message["contextId"] == "t1"
                break
    return audio, alignments


pytestmark_live = pytest.mark.asyncio(loop_scope="module")


@pytestmark_live
@pytest.mark.parametrize("output_format", ["pcm_16000", "mp3_22050_32"])
async def test_elevenlabs_endpoint_speaks_the_whole_text_with_per_chunk_timings(port: int, output_format: str) -> None:
    audio, alignments = await elevenlabs_turn(port, TEXT, output_format=output_format)
    expected = await reference_seconds(port)

    if output_format.startswith("pcm"):
        seconds = len(audio) / 2 / 16_000
    else:
        samples, rate = decode_bytes(audio, audio_format="mp3")
        seconds = len(samples) / rate
    assert expected - 0.01 <= seconds <= expected + 0.1
    # Per-chunk times (as Pipecat adds them up): each chunk starts at 0 and grows.
    assert len(alignments) >= 2 and all(a["charStartTimesMs"] == sorted(a["charStartTimesMs"]) for a in alignments)
    spoken = "".join("".join(a["chars"]) for a in alignments)
    assert spoken.split() == ["Hello", "there", "my", "friend", "How", "are", "you", "doing", "today"]


@pytestmark_live
async def test_elevenlabs_sync_alignment_times_count_from_the_context_start(port: int) -> None:
    _, alignments = await elevenlabs_turn(port, TEXT, query="&sync_alignment=true")
    starts = [t for a in alignments for t in a["charStartTimesMs"]]
    assert starts == sorted(starts) and starts[-1] > 1_000


@pytestmark_live
async def test_wrong_keys_are_refused_at_the_handshake(port: int) -> None:
    for url, headers in [
        (f"ws://127.0.0.1:{port}/v1/text-to-speech/v/stream-input", {"xi-api-key": "wrong"}),
        (f"ws://127.0.0.1:{port}/tts/websocket", {"X-API-Key": "wrong"}),
        (f"ws://127.0.0.1:{port}/v1/speak", {}),
    ]:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, additional_headers=headers):
                pass
        assert refused.value.response.status_code == 401


@pytestmark_live
async def test_cartesia_endpoint_streams_chunks_timestamps_and_done(port: int) -> None:
    fmt = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 24_000}
    base = {"context_id": "c1", "model_id": "sonic-2", "voice": {"mode": "id", "id": "x"}, "output_format": fmt, "add_timestamps": True}
    audio, starts = b"", []
    async with connect(f"ws://127.0.0.1:{port}/tts/websocket?api_key={TOKEN}&cartesia_version=2025-04-16") as ws:
        await ws.send(orjson.dumps({**base, "transcript": "Hello there, my friend. ", "continue": True}).decode())
        await ws.send(orjson.dumps({**base, "transcript": "How are you doing today?", "continue": False}).decode())
        async for raw in ws:
            message = orjson.loads(raw)
            assert message["type"] != "error", message
            if message["type"] == "chunk":
                audio += base64.b64decode(message["data"])
            elif message["type"] == "timestamps":
                starts += message["word_timestamps"]["start"]
            elif message["type"] == "done":
                break
    expected = await reference_seconds(port)

    assert abs(len(audio) / 2 / 24_000 - expected) < 0.01
    assert len(starts) == 9 and starts == sorted(starts)


@pytestmark_live
async def test_deepgram_endpoint_flushes_in_order_and_clear_stops_audio(port: int) -> None:
    url = f"ws://127.0.0.1:{port}/v1/speak?model=aura-2-thalia-en&encoding=linear16&sample_rate=24000&token={TOKEN}"
    async with connect(url) as ws:
        await ws.send('{"type":"Speak","text":"Hello there, my friend."}')
        await ws.send('{"type":"Flush"}')
        await ws.send('{"type":"Speak","text":" How are you doing today?"}')
        await ws.send('{"type":"Flush"}')
        audio, kinds = b"", []
        async for raw in ws:
            if isinstance(raw, bytes):
                audio += raw
                continue
            kinds.append(orjson.loads(raw)["type"])
            if kinds.count("Flushed") == 2:
                break
        # an interruption: Clear mid-speech; nothing follows Cleared
        await ws.send('{"type":"Speak","text":"' + "This is a long sentence to interrupt. " * 8 + '"}')
        await ws.send('{"type":"Flush"}')
        while not isinstance(await ws.recv(), bytes):
            pass
        await ws.send('{"type":"Clear"}')
        after: list[Any] = []
        while True:
            raw = await ws.recv()
            if isinstance(raw, str) and orjson.loads(raw)["type"] == "Cleared":
                break
        await ws.send('{"type":"Speak","text":"Fine."}')
        await ws.send('{"type":"Flush"}')
        async for raw in ws:
            after.append(raw if isinstance(raw, bytes) else orjson.loads(raw)["type"])
            if after[-1] == "Flushed":
                break
    expected = await reference_seconds(port, "Hello there, my friend. How are you doing today?")
    fine = await reference_seconds(port, "Fine.")

    assert kinds == ["Metadata", "Flushed", "Flushed"]
    assert abs(len(audio) / 2 / 24_000 - expected) < 0.1
    # after Cleared only the new turn's audio comes
    assert abs(sum(len(a) for a in after if isinstance(a, bytes)) / 2 / 24_000 - fine) < 0.01


@pytestmark_live
async def test_bad_input_on_one_vendor_socket_does_not_touch_another(port: int) -> None:
    async def garbage() -> list[Any]:
        got = []
        async with connect(f"ws://127.0.0.1:{port}/v1/speak?token={TOKEN}") as ws:
            await ws.recv()  # Metadata
            for bad in ("nope", '{"type":"Shout"}', '{"type":"Speak","text":7}', "[1]"):
                await ws.send(bad)
                got.append(orjson.loads(await ws.recv()))
        return got

    warnings, (audio, _) = await asyncio.gather(garbage(), elevenlabs_turn(port, TEXT))
    expected = await reference_seconds(port)

    assert [w["type"] for w in warnings] == ["Warning"] * 4
    assert abs(len(audio) / 2 / 16_000 - expected) < 0.01


def test_compat_doc_names_every_route() -> None:
    from gateway.config import REPO_ROOT

    doc = (REPO_ROOT / "docs" / "compat.md").read_text()
    for route in ("/v1/audio/speech", "/v1/audio/voices", "/v1/audio/models", "stream-input", "multi-stream-input", "/tts/websocket", "/v1/speak"):
        assert route in doc


@pytestmark_live
async def test_protocol_v1_opus_frames_are_one_packet_each_and_bad_frame_lengths_are_refused(port: int) -> None:
    import av

    from gateway.protocol import decode_audio_frame

    async with connect(f"ws://127.0.0.1:{port}/v1/stream?token={TOKEN}") as ws:
        await ws.recv()  # session.created
        await ws.send('{"type":"session.update","format":"opus","frame_ms":30}')
        refused = orjson.loads(await ws.recv())
        await ws.send('{"type":"session.update","format":"opus","frame_ms":20,"sample_rate":24000}')
        updated = orjson.loads(await ws.recv())
        await ws.send(orjson.dumps({"type": "text", "context_id": "o", "text": TEXT}).decode())
        await ws.send('{"type":"flush","context_id":"o","final":true}')
        frames = []
        async for raw in ws:
            if isinstance(raw, bytes):
                frames.append(decode_audio_frame(raw))
            elif orjson.loads(raw)["type"] == "context.done":
                break
    decoder = av.CodecContext.create("opus", "r")
    decoder.sample_rate, decoder.layout = 48_000, "mono"
    decoded = 0
    for header, payload in frames:
        out = decoder.decode(av.Packet(payload))
        assert len(out) == 1  # exactly one packet per frame
        decoded += out[0].samples
    expected = await reference_seconds(port)

    assert refused["type"] == "error" and refused["code"] == "bad_field" and "frame_ms" in refused["message"]
    assert updated["settings"]["format"] == "opus"
    assert [h.sample_offset for h, _ in frames[:3]] == [0, 480, 960] and frames[-1][0].flags & 2
    assert expected <= decoded / 48_000 <= expected + 0.045


@pytestmark_live
async def test_elevenlabs_single_stream_speaks_ulaw_then_is_final_and_closes(port: int) -> None:
    url = f"ws://127.0.0.1:{port}/v1/text-to-speech/v/stream-input?output_format=ulaw_8000&xi_api_key={TOKEN}"
    audio, finals = b"", 0
    async with connect(url) as ws:
        await ws.send(orjson.dumps({"text": " ", "voice_settings": {"stability": 0.5}}).decode())
        await ws.send(orjson.dumps({"text": TEXT + " ", "try_trigger_generation": True}).decode())
        await ws.send(orjson.dumps({"text": ""}).decode())
        async for raw in ws:  # ends when the server closes after isFinal
            message = orjson.loads(raw)
            audio += base64.b64decode(message["audio"]) if message.get("audio") else b""
            finals += message.get("isFinal") is True
        close_code = ws.close_code
    expected = await reference_seconds(port)

    assert finals == 1 and close_code == 1000
    assert abs(len(audio) / 8_000 - expected) < 0.01
