"""The voice-agent frameworks' own TTS clients against a live voxgate (tiny model).

LiveKit Agents (``livekit-plugins-elevenlabs/-cartesia/-deepgram/-openai``, test extra) runs in this
process: ``elevenlabs.TTS``, ``cartesia.TTS``, ``deepgram.TTS`` and ``openai.TTS`` with ``base_url``
pointing here. Pipecat pins soxr and protobuf below voxgate's own, so it cannot share this venv: its
services run from ``tests/pipecat_driver.py`` under the Python named by ``$VOXGATE_PIPECAT_PYTHON``
(a venv with ``pipecat-ai[elevenlabs,cartesia,deepgram,openai]``), or this one if it has pipecat.

Each client: audio arrives and lasts as long as the same text spoken through protocol v1 (decoded
with PyAV where the wire carries mp3), word timings are monotonic where the protocol has them, an
interruption through the plugin's own path stops the audio (server-side: pieces are cancelled), and
two instances at once each get their own audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from gateway.client import VoxgateClient
from tests.utils import run_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "sesame"
TEXT = "Hello there, my friend. How are you doing today?"
SHORT = "Hi."
LONG = "This is a long sentence that keeps going for a while. " * 12


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def port() -> AsyncIterator[int]:
    async with run_server({"server.auth_token": TOKEN}) as gw:
        yield gw.port


async def reference_seconds(port: int, text: str) -> float:
    async with VoxgateClient(f"ws://127.0.0.1:{port}/v1/stream", token=TOKEN) as client:
        return sum(len(c.samples) for c in [c async for c in client.speak(text)]) / 24_000


def cancelled_pieces(port: int) -> float:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith('voxgate_pieces_total{outcome="cancelled"}'):
                return float(line.split()[-1])
    return 0.0


# --- LiveKit Agents ------------------------------------------------------------------------------------

LIVEKIT_KINDS = ["elevenlabs", "cartesia", "deepgram", "openai"]


def livekit_tts(kind: str, port: int, http: Any) -> Any:
    base = f"http://127.0.0.1:{port}"
    if kind == "elevenlabs":
        from livekit.plugins import elevenlabs

        # the plugin's default encoding, mp3_22050_32, decoded by LiveKit's own (PyAV) decoder
        return elevenlabs.TTS(api_key=TOKEN, base_url=f"{base}/v1", http_session=http)
    if kind == "cartesia":
        from livekit.plugins import cartesia

        return cartesia.TTS(api_key=TOKEN, base_url=base, http_session=http)
    if kind == "deepgram":
        from livekit.plugins import deepgram

        return deepgram.TTS(api_key=TOKEN, base_url=f"{base}/v1/speak", http_session=http)
    from livekit.plugins import openai as lk_openai

    return lk_openai.TTS(api_key=TOKEN, base_url=f"{base}/v1", response_format="mp3")


async def livekit_speak(tts: Any, text: str, *, interrupt: bool = False) -> tuple[float, list[float]]:
    """Seconds of audio and word start times; with ``interrupt`` the stream is closed (the plugin's
    own interruption path) after its first audio."""
    stream = tts.synthesize(text) if not tts.capabilities.streaming else tts.stream()
    if tts.capabilities.streaming:
        stream.push_text(text)
        if not interrupt:
            stream.end_input()
    samples, starts, rate = 0, [], 24_000
    async for event in stream:
        samples += event.frame.samples_per_channel
        rate = event.frame.sample_rate
        for key, value in (getattr(event.frame, "userdata", None) or {}).items():
            if "transcript" in key:
                starts += [w.start_time for w in value]
        if interrupt:
            break
    await stream.aclose()
    return samples / rate, starts


@pytest.fixture(scope="module")
def livekit() -> None:
    pytest.importorskip("livekit.agents")


@pytest.mark.parametrize("kind", LIVEKIT_KINDS)
async def test_livekit_plugin_speaks_with_timings_alone_and_two_at_once(port: int, kind: str, livekit: None) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        one, two = livekit_tts(kind, port, http), livekit_tts(kind, port, http)
        (seconds, starts), ((short_s, _), (long_s, _)) = await asyncio.gather(
            livekit_speak(one, TEXT), asyncio.gather(livekit_speak(one, SHORT), livekit_speak(two, TEXT))
        )
        for tts in (one, two):
            await tts.aclose()
    expected, expected_short = await reference_seconds(port, TEXT), await reference_seconds(port, SHORT)

    # mp3 adds the codec's priming and padding (a frame or two at 22.05 kHz)
    assert expected - 0.01 <= seconds <= expected + 0.12
    assert expected_short - 0.01 <= short_s <= expected_short + 0.12
    assert expected - 0.01 <= long_s <= expected + 0.12
    if kind in ("elevenlabs", "cartesia"):
        assert len(starts) >= 8 and starts == sorted(starts)


@pytest.mark.parametrize("kind", ["elevenlabs", "cartesia", "deepgram"])
async def test_livekit_plugin_interruption_cancels_the_speech_server_side(port: int, kind: str, livekit: None) -> None:
    import aiohttp

    before = await asyncio.to_thread(cancelled_pieces, port)
    async with aiohttp.ClientSession() as http:
        tts = livekit_tts(kind, port, http)
        seconds, _ = await livekit_speak(tts, LONG, interrupt=True)
        # the same plugin instance goes on working after an interruption
        after_s, _ = await livekit_speak(tts, SHORT)
        await tts.aclose()
    for _ in range(100):
        if await asyncio.to_thread(cancelled_pieces, port) > before:
            break
        await asyncio.sleep(0.05)

    assert 0 < seconds < await reference_seconds(port, LONG)
    assert await asyncio.to_thread(cancelled_pieces, port) > before
    assert abs(after_s - await reference_seconds(port, SHORT)) < 0.12


# --- Pipecat ---------------------------------------------------------------------------------------------


def pipecat_python() -> str | None:
    configured = os.environ.get("VOXGATE_PIPECAT_PYTHON")
    if configured:
        return configured
    return sys.executable if importlib.util.find_spec("pipecat") else None


@pytest.mark.skipif(pipecat_python() is None, reason="no Python with pipecat-ai: set VOXGATE_PIPECAT_PYTHON")
async def test_pipecat_services_speak_time_words_interrupt_and_run_side_by_side(port: int) -> None:
    python = pipecat_python()
    assert python is not None
    driver = Path(__file__).with_name("pipecat_driver.py")
    before = await asyncio.to_thread(cancelled_pieces, port)
    proc = await asyncio.create_subprocess_exec(
        python, "-W", "ignore", str(driver), str(port), TOKEN,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "LOGURU_LEVEL": "WARNING"},
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 240)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    lines = [line for line in out.decode(errors="replace").splitlines() if line.startswith("REPORT ")]
    assert lines, out.decode(errors="replace")[-3000:]
    report = json.loads(lines[-1][len("REPORT ") :])
    expected, expected_short = await reference_seconds(port, TEXT), await reference_seconds(port, SHORT)

    assert set(report) == {"elevenlabs", "cartesia", "deepgram", "openai"}
    for kind, result in report.items():
        assert abs(result["one"]["seconds"] - expected) < 0.01, kind
        short, long = result["two"]
        assert abs(short["seconds"] - expected_short) < 0.01 and abs(long["seconds"] - expected) < 0.01, kind
        cut = result["interrupted"]
        assert 0 < cut["bytes_at_interrupt"] == cut["bytes_final"], kind  # nothing after the interruption
        if kind in ("elevenlabs", "cartesia"):
            times = [t for _, t in result["one"]["words"]]
            assert len(times) >= 8 and times == sorted(times), kind
    # Interruptions reached the server as cancels (ElevenLabs close_context, Cartesia cancel,
    # Deepgram Clear, OpenAI a dropped HTTP response).
    assert await asyncio.to_thread(cancelled_pieces, port) > before
