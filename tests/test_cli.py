"""``voxgate say`` and ``voxgate voices``, in-process (``--local``) and through a running server."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import numpy as np
import pytest

from gateway.cli import main
from gateway.client import VoxgateClient, VoxgateClientError
from gateway.client_sync import say_to_wav
from gateway.config import load_config
from tests.utils import run_server, test_config

TEXT = "Hello there! How are you?"
# The tiny random-weight engine, no warm-up: what the test-suite runs everywhere.
TINY = ["--engine", "tiny", "--set", "engine.warmup=false", "--set", "engine.num_threads=1"]


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getcomptype()) == (1, 2, "NONE")
        frames = wav.readframes(wav.getnframes())
        return np.frombuffer(frames, dtype="<i2"), wav.getframerate()


def test_say_local_with_the_tiny_engine_writes_a_valid_wav(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.wav"

    assert main(["say", TEXT, "-o", str(out), "--local", *TINY]) == 0

    samples, rate = read_wav(out)
    assert rate == 24_000
    assert len(samples) > rate // 2  # a short sentence, but not nothing
    assert np.abs(samples).max() > 0
    assert capsys.readouterr().out.strip() == str(out)


def test_voices_with_the_tiny_engine_prints_one_voice_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["voices", *TINY]) == 0

    printed = capsys.readouterr().out.split()
    assert printed and len(printed) == len(set(printed))


async def test_say_and_voices_through_a_running_server_with_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "remote.wav"
    async with run_server() as gw:
        url = f"ws://127.0.0.1:{gw.port}/v1/stream"
        assert await asyncio.to_thread(main, ["say", TEXT, "-o", str(out), "--url", url, "--speed", "1.5"]) == 0
        capsys.readouterr()
        assert await asyncio.to_thread(main, ["voices", "--url", url]) == 0
        printed = capsys.readouterr().out.split()
        async with VoxgateClient(url) as client:
            voices = client.voices
            speech = client.speak(TEXT, speed=1.5)
            reference = b"".join([chunk.data async for chunk in speech])

    samples, rate = read_wav(out)
    assert rate == 24_000
    assert printed == voices
    assert len(samples) * 2 == len(reference)


def test_say_reports_an_unknown_voice_as_a_client_error(tmp_path: Path) -> None:
    config = test_config(**{"engine.kind": "fake"})

    with pytest.raises(VoxgateClientError) as info:
        say_to_wav(config, TEXT, tmp_path / "never.wav", voice="no_such_voice")
    assert info.value.code == "unknown_voice"
    assert not (tmp_path / "never.wav").exists()


def test_say_local_goes_through_the_gateway_even_with_a_fixed_port_configured(tmp_path: Path) -> None:
    # server.port from the config is not used: the in-process gateway takes a free port.
    config = load_config(overrides={"engine.kind": "fake", "server.port": 1}, environ={})

    path = say_to_wav(config, TEXT, tmp_path / "fake.wav", speed=1.0)

    samples, _ = read_wav(path)
    assert len(samples) > 0
