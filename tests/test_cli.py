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
from gateway.engines.tiny import TINY_VOICE_NAMES
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

    # Exactly the tiny engine's voice ids, one per line, in the engine's order, nothing else.
    assert capsys.readouterr().out == "".join(f"{voice}\n" for voice in TINY_VOICE_NAMES)


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


@pytest.mark.parametrize("text", ["", "   "])
def test_say_with_nothing_to_say_fails_clearly_before_loading_anything(text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.wav"
    assert main(["say", text, "-o", str(out), "--local", *TINY]) == 1
    assert "nothing to say" in capsys.readouterr().err
    assert not out.exists()


def test_say_with_only_emoji_writes_no_empty_wav(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.wav"
    assert main(["say", "👍🎉", "-o", str(out), "--local", *TINY]) == 1
    assert "can be spoken" in capsys.readouterr().err
    assert not out.exists()


def test_serve_on_a_port_in_use_says_so_before_loading_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The kokoro engine would take seconds to load (and need weights): the check comes first.
        assert main(["serve", "--engine", "kokoro", "--host", "127.0.0.1", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["bench", "--help"], ["bench", "-h"]])
def test_bench_help_is_answered(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    assert "attack" in capsys.readouterr().out


def test_a_superset_install_satisfies_a_subset(tmp_path: Path) -> None:
    import hashlib
    import os
    import subprocess

    from gateway.config import REPO_ROOT

    want = hashlib.sha256((REPO_ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    env = dict(os.environ, VOXGATE_VENV=str(tmp_path), VOXGATE_PYTHON="/bin/false", VOXGATE_NO_APT="1")
    setup = f"source {REPO_ROOT / 'scripts' / '_setup.sh'}"
    # Nothing installed: setup must install (here it fails, /bin/false being the interpreter).
    assert subprocess.run(["bash", "-c", f"{setup} ''"], env=env, capture_output=True).returncode != 0
    (tmp_path / ".voxgate-installed-test").write_text(want + "\n")
    # scripts/test installed [test]; scripts/serve (no extras) must not reinstall everything.
    assert subprocess.run(["bash", "-c", f"{setup} ''"], env=env, capture_output=True).returncode == 0
    assert subprocess.run(["bash", "-c", f"{setup} test"], env=env, capture_output=True).returncode == 0
    assert subprocess.run(["bash", "-c", f"{setup} gpu"], env=env, capture_output=True).returncode != 0
