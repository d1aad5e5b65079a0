"""The Python client SDK against the real server on 127.0.0.1 (tiny random-weight Kokoro)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio

from gateway.client import (
    AudioChunk,
    Speech,
    VoxgateClient,
    VoxgateClientError,
    VoxgateConnectionError,
    _split_text,
)
from gateway.client_sync import VoxgateSyncClient
from tests.utils import eventually, run_server

# Text waits for punctuation (not a timer), so fragmented and whole text cut into the same pieces.
SERVER = {"session.max_buffer_ms": 10_000}
TEXT = "Hello there! How are you doing today?"
LONG_TEXT = " ".join(
    [
        "Barge in whenever you like, then stop.",
        "Micro batching shares one engine fairly between many sessions.",
        "Every session hears only its own voice, and nobody waits for long.",
        "Latency matters more than anything else in a conversation.",
    ]
    * 3
)


# One server for the module (loading G2P takes seconds per server); tests that need other settings
# start their own.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def url() -> AsyncIterator[str]:
    async with run_server(SERVER) as gw:
        yield url_of(gw)


def url_of(gw: object) -> str:
    return f"ws://127.0.0.1:{gw.port}/v1/stream"  # type: ignore[attr-defined]


def assert_contiguous(chunks: list[AudioChunk]) -> None:
    """Offsets continue where the previous frame ended; only the first/last frames are flagged."""
    assert chunks, "no audio"
    assert chunks[0].first and not any(c.first for c in chunks[1:])
    assert chunks[-1].last and not any(c.last for c in chunks[:-1])
    offset = 0
    for chunk in chunks:
        assert chunk.sample_offset == offset
        offset += len(chunk.samples)


def assert_same_audio(actual: np.ndarray, expected: np.ndarray) -> None:
    """The same speech: equal length and close samples. These tests are about routing, not bits:
    a piece synthesized in a batch is not bit-identical to one synthesized alone (the engine's
    tests bound that difference); another text's audio would be nowhere near (error ~1.4)."""
    assert len(actual) == len(expected) > 0
    assert np.linalg.norm(actual - expected) <= 0.2 * np.linalg.norm(expected)


async def fragments_of(text: str, size: int = 5) -> AsyncIterator[str]:
    for i in range(0, len(text), size):
        yield text[i : i + size]
        await asyncio.sleep(0)


async def test_speaking_a_text_streams_gap_free_chunks_that_add_up_to_context_done(url: str) -> None:
    async with VoxgateClient(url) as client:
        assert client.session_id and client.voices
        assert client.settings["format"] == "pcm_s16le" and client.settings["sample_rate"] == 24_000
        speech = client.speak(TEXT)
        chunks = [chunk async for chunk in speech]

    assert_contiguous(chunks)
    assert all(c.samples.dtype == np.float32 and c.sample_rate == 24_000 for c in chunks)
    assert {c.context_id for c in chunks} == {speech.context_id}
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert client.seq_gaps == 0
    assert speech.done is not None and not speech.cancelled
    assert speech.done.last_seq == chunks[-1].seq
    assert speech.done.audio_ms == pytest.approx(sum(len(c.samples) for c in chunks) / 24)
    assert speech.time_to_first_audio is not None and speech.time_to_first_audio > 0


async def test_an_async_iterable_of_fragments_sounds_the_same_as_the_whole_text(url: str) -> None:
    async with VoxgateClient(url) as client:
        whole = await client.speak(TEXT).read_all()
        streamed = await client.speak(fragments_of(TEXT)).read_all()
        from_list = await client.speak([TEXT[:10], "", TEXT[10:]]).read_all()

    assert_same_audio(streamed, whole)
    assert_same_audio(from_list, whole)


async def test_concurrent_speeches_on_one_client_each_get_their_own_audio(url: str) -> None:
    texts = ["The quick brown fox jumps.", "Seven silver swans swam.", "A stitch in time saves nine."]
    async with VoxgateClient(url) as client:
        solo = [await client.speak(text).read_all() for text in texts]
        speeches = [client.speak(text, voice=client.voices[0]) for text in texts]
        together = await asyncio.gather(*(speech.read_all() for speech in speeches))
        indexes = {speech.index for speech in speeches}

    assert len(indexes) == len(texts)
    for alone, mixed in zip(solo, together, strict=True):
        assert_same_audio(mixed, alone)
    assert client.seq_gaps == 0


async def test_cancel_ends_the_speech_with_no_more_chunks_and_the_session_goes_on(url: str) -> None:
    async with VoxgateClient(url) as client:
        speech = client.speak(LONG_TEXT)
        assert await speech.wait_started(timeout=20) is True
        await speech.cancel()
        after_cancel = [chunk async for chunk in speech]
        assert after_cancel == []
        assert speech.finished
        # The server may have finished the text before the cancel arrived: then it is done instead.
        assert speech.cancelled or speech.done is not None
        if speech.cancelled:
            assert speech.cancel_reason == "client"
        again = await client.speak("Still here.").read_all()

    assert len(again) > 0
    assert client.seq_gaps == 0


async def test_cancelling_before_any_text_was_sent_ends_the_speech_locally(url: str) -> None:
    async def never() -> AsyncIterator[str]:
        await asyncio.Event().wait()
        yield ""

    async with VoxgateClient(url) as client:
        speech = client.speak(never())
        await speech.cancel()
        assert speech.cancelled and [c async for c in speech] == []
        assert await speech.wait_started() is False


async def test_alignment_words_are_collected_in_speaking_order(url: str) -> None:
    async with VoxgateClient(url, alignment=True) as client:
        assert client.settings["alignment"] is True
        speech = client.speak(fragments_of("Hello world. Lip sync needs word timings."))
        audio = await speech.read_all()

    words = [w.word.lower() for w in speech.words]
    assert words == ["hello", "world", "lip", "sync", "needs", "word", "timings"]
    starts = [w.start_ms for w in speech.words]
    assert starts == sorted(starts)
    assert all(w.start_ms < w.end_ms <= len(audio) / 24 + 1 for w in speech.words)
    assert speech.phonemes and speech.phonemes[0].start_ms <= starts[0]


async def test_server_errors_surface_as_voxgate_client_errors_from_the_speech(url: str) -> None:
    async with VoxgateClient(url) as client:
        bad_voice = client.speak("Hello.", voice="no_such_voice")
        with pytest.raises(VoxgateClientError) as info:
            await bad_voice.wait_started(timeout=10)
        assert (info.value.code, info.value.context_id) == ("unknown_voice", bad_voice.context_id)
        with pytest.raises(VoxgateClientError):
            await bad_voice.read_all()  # iteration raises the same error

        bad_speed = client.speak("Hello.", speed=3.0)
        with pytest.raises(VoxgateClientError) as info:
            await bad_speed.read_all()
        assert info.value.code == "bad_field"

        async def failing() -> AsyncIterator[str]:
            yield "Half a sentence"
            raise RuntimeError("the LLM went away")

        with pytest.raises(RuntimeError, match="LLM"):
            await client.speak(failing()).read_all()

        # The session goes on, and the failed contexts are settled with the server.
        assert len(await client.speak("Fine again.").read_all()) > 0
        await eventually(lambda: client._by_id == {})


async def test_session_errors_are_raised_from_connect_or_update(url: str) -> None:
    with pytest.raises(VoxgateClientError) as info:
        async with VoxgateClient(url, voice="no_such_voice"):
            pass
    assert info.value.code == "unknown_voice" and info.value.context_id is None

    async with VoxgateClient(url) as client:
        with pytest.raises(VoxgateClientError) as info:
            await client.update(lang="xx")
        assert info.value.code == "unknown_lang"
        settings = await client.update(format="pcm_f32le", sample_rate=16_000)
        assert (settings["format"], settings["sample_rate"]) == ("pcm_f32le", 16_000)
        speech = client.speak(TEXT)
        chunks = [chunk async for chunk in speech]
        assert {(c.format, c.sample_rate) for c in chunks} == {("pcm_f32le", 16_000)}


async def test_connecting_to_a_closed_port_or_without_the_token_raises_a_connection_error() -> None:
    async with run_server({**SERVER, "server.auth_token": "sesame"}) as gw:
        with pytest.raises(VoxgateConnectionError, match="401"):
            await VoxgateClient(url_of(gw)).connect()
        async with VoxgateClient(f"http://127.0.0.1:{gw.port}", token="sesame") as client:
            assert client.session_id
        port = gw.port
    with pytest.raises(VoxgateConnectionError, match="cannot connect"):
        await VoxgateClient(f"ws://127.0.0.1:{port}/v1/stream", open_timeout=2).connect()


async def test_reconnect_resumes_the_session_replays_lost_frames_and_ends_cut_speeches() -> None:
    async def collect(speech: Speech, into: list[AudioChunk]) -> None:
        """Chunks until the end, or until the connection error (raised once per speech)."""
        with contextlib.suppress(VoxgateConnectionError):
            async for chunk in speech:
                into.append(chunk)

    # Loopback socket buffers hold megabytes: keep every frame of the text for the replay.
    async with run_server({**SERVER, "session.replay_buffer_frames": 10_000}) as gw:
        client = VoxgateClient(url_of(gw), max_buffered_chunks=2, frame_ms=10)
        async with client:
            session_id = client.session_id
            finished = client.speak(TEXT)
            await finished.wait_started(timeout=20)
            # Read nothing while the server produces the whole text, so that frames are in flight
            # (socket buffers) when the connection drops.
            runtime = gw._runtimes[session_id]
            while runtime.session.contexts:
                await asyncio.sleep(0.05)
            cut = client.speak(LONG_TEXT)  # still being synthesized when the connection drops
            await eventually(lambda: bool(runtime.session.contexts))  # the server has it open
            client._transport.abort()  # type: ignore[union-attr]

            chunks: list[AudioChunk] = []
            cut_chunks: list[AudioChunk] = []
            await asyncio.gather(collect(finished, chunks), collect(cut, cut_chunks))
            num_before = len(chunks)
            assert not client.connected and not finished.finished
            with pytest.raises(VoxgateConnectionError, match="reconnect"):
                client.speak("Not now.")

            assert await client.reconnect(timeout=10) is True
            assert client.session_id == session_id
            await asyncio.gather(collect(finished, chunks), collect(cut, cut_chunks))
            assert len(await client.speak("And again.").read_all()) > 0

    assert 0 < num_before < len(chunks)
    assert_contiguous(chunks)
    assert finished.done is not None
    assert finished.done.audio_ms == pytest.approx(sum(len(c.samples) for c in chunks) / 24)
    assert cut.cancelled and cut.cancel_reason == "disconnected"
    assert [c.sample_offset for c in cut_chunks] == list(np.cumsum([0] + [len(c.samples) for c in cut_chunks])[:-1])
    assert client.seq_gaps == 0


async def test_reconnect_falls_back_to_a_new_session_when_the_old_one_is_gone(url: str) -> None:
    async with VoxgateClient(url) as client:
        old_id = client.session_id
        client.session_id = "0" * 32  # a session the server never had
        assert await client.reconnect(timeout=0.2) is False
        assert client.session_id not in (old_id, "0" * 32)
        assert client.connected
        assert len(await client.speak("Hello again.").read_all()) > 0


async def test_sync_client_speaks_to_an_array(url: str) -> None:
    def use_it() -> tuple[list[str], np.ndarray, int]:
        with VoxgateSyncClient(url) as client:
            samples, rate = client.speak_to_array(TEXT)
            return client.voices(), samples, rate

    voices, samples, rate = await asyncio.to_thread(use_it)
    async with VoxgateClient(url) as client:
        expected = await client.speak(TEXT).read_all()

    assert voices and rate == 24_000
    assert_same_audio(samples, expected)


def test_long_text_is_split_into_messages_at_spaces_without_losing_characters() -> None:
    text = "word " * 500 + "x" * 2500
    parts = _split_text(text, 1000)
    assert "".join(parts) == text
    assert all(len(p) <= 1000 for p in parts)
    assert parts[0].endswith(" ")
