"""RealtimeTTS behind voxgate's engine interface, and through the real server.

The conversion and duration helpers and the adapter (over a stand-in engine) need nothing extra. The
rest needs ``pip install 'voxgate[realtimetts]' 'realtimetts[system]'`` and the Debian packages
espeak-ng, portaudio19-dev and ffmpeg; without them it is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import importlib.util
import queue
import re
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from gateway.config import EngineConfig
from gateway.engines.base import SAMPLE_RATE, SAMPLES_PER_FRAME, EngineError, SynthesisItem
from gateway.engines.realtimetts import (
    INSTALL_HINT,
    PA_FLOAT32,
    PA_INT16,
    PA_INT24,
    PA_INT32,
    PA_UINT8,
    RealtimeTTSEngine,
    proportional_durations,
    to_float32_mono,
)
from tests.utils import run_server


def item(text: str, phonemes: str, voice: str = "default", speed: float = 1.0) -> SynthesisItem:
    return SynthesisItem(phonemes=phonemes, voice=voice, speed=speed, text=text)


# --- durations and sample formats -----------------------------------------------------------------


def test_synthesized_durations_sum_to_the_audio_and_give_edge_silence_to_the_boundary_tokens() -> None:
    durations = proportional_durations("həlˈO wˈɜɹld.", 40, lead_frames=3, tail_frames=5)
    assert len(durations) == len("həlˈO wˈɜɹld.") + 2
    assert durations.sum() == 40
    assert (durations[0], durations[-1]) == (3, 5)
    assert (durations >= 0).all()


def test_vowels_get_more_time_than_consonants_and_stress_marks_get_none() -> None:
    durations = proportional_durations("ˈtɑ", 30)
    mark, consonant, vowel = durations[1:-1]
    assert mark == 0 and vowel == 2 * consonant == 20


@pytest.mark.parametrize("num_frames", [0, 1, 7, 100])
def test_durations_are_exact_even_when_frames_are_scarce(num_frames: int) -> None:
    durations = proportional_durations("abc def", num_frames, lead_frames=50, tail_frames=50)
    assert durations.sum() == num_frames and (durations >= 0).all()


def test_every_portaudio_sample_format_becomes_float32_mono() -> None:
    ramp = np.linspace(-0.5, 0.5, 101, dtype=np.float32)
    int24 = np.round(ramp * 8_388_607).astype("<i4")
    cases = {
        PA_INT16: (np.round(ramp * 32_767).astype("<i2").tobytes(), 2e-4),
        PA_INT32: (np.round(ramp * 2_147_483_647).astype("<i4").tobytes(), 1e-6),
        PA_INT24: (b"".join(int(v).to_bytes(3, "little", signed=True) for v in int24), 1e-6),
        PA_FLOAT32: (ramp.astype("<f4").tobytes(), 0.0),
        PA_UINT8: ((np.round(ramp * 127) + 128).astype(np.uint8).tobytes(), 1e-2),
    }
    for fmt, (raw, tolerance) in cases.items():
        # Chunks split at odd places must join back before decoding.
        samples, rate = to_float32_mono([raw[:7], raw[7:]], fmt, 1, 16_000)
        assert rate == 16_000 and samples.dtype == np.float32
        np.testing.assert_allclose(samples, ramp, atol=tolerance + 1e-7, err_msg=str(fmt))
    stereo = np.stack([ramp, -ramp], axis=1).astype("<f4").tobytes()
    mono, _ = to_float32_mono([stereo], PA_FLOAT32, 2, 44_100)
    np.testing.assert_allclose(mono, 0.0, atol=1e-7)


# --- the adapter over a stand-in engine -----------------------------------------------------------


class StandInEngine:
    """Behaves like a RealtimeTTS ``BaseEngine``: ``synthesize(text)`` fills ``queue`` with int16
    stereo at 22.05 kHz, 10 ms of it per character, after 50 ms of silence."""

    engine_name = "stand-in"

    def __init__(self) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()
        self.timings: queue.Queue[Any] = queue.Queue()
        self.voice_objects = [
            SimpleNamespace(name="Low", id="low", pitch=200.0),
            SimpleNamespace(name="High", id="high", pitch=800.0),
        ]
        self.voice = self.voice_objects[0]
        self.set_voice_calls: list[Any] = []
        self.speed = 1.0
        self.texts: list[str] = []
        self.shut_down = False

    def get_stream_info(self) -> tuple[int, int, int]:
        return PA_INT16, 2, 22_050

    def get_voices(self) -> list[Any]:
        return list(self.voice_objects)

    def set_voice(self, voice: Any) -> None:
        self.set_voice_calls.append(voice)
        self.voice = voice

    def synthesize(self, text: str) -> bool:
        self.texts.append(text)
        if text == "fail":
            raise RuntimeError("boom")
        if text == "silent":
            return False
        n = int(22_050 * 0.01 * len(text) / self.speed)
        t = np.arange(n) / 22_050
        tone = 0.5 * np.sin(2 * np.pi * self.voice.pitch * t)
        audio = np.concatenate([np.zeros(1102), tone])
        pcm = np.round(np.stack([audio, audio], axis=1) * 32_767).astype("<i2").tobytes()
        self.queue.put(pcm[: len(pcm) // 2])
        self.queue.put(pcm[len(pcm) // 2 :])
        return True

    def shutdown(self) -> None:
        self.shut_down = True


def test_the_adapter_returns_24khz_float32_mono_with_durations_that_cover_it() -> None:
    engine = RealtimeTTSEngine(StandInEngine())
    assert engine.max_batch_size == engine.preferred_batch_size == 1
    [result] = engine.synthesize([item("Hello there", "həlˈO ðɛɹ", voice="Low")])
    assert result.audio.dtype == np.float32 and result.audio.ndim == 1
    assert len(result.audio) % SAMPLES_PER_FRAME == 0
    assert int(result.durations.sum()) * SAMPLES_PER_FRAME == len(result.audio)
    assert len(result.durations) == len("həlˈO ðɛɹ") + 2
    assert result.durations[0] == 2  # the 50 ms of leading silence
    expected_s = 0.05 + 0.11
    assert abs(len(result.audio) / SAMPLE_RATE - expected_s) < 0.03
    assert result.phonemes == "həlˈO ðɛɹ"


def test_each_item_speaks_its_own_text_in_its_own_voice_and_speed() -> None:
    stand_in = StandInEngine()
    engine = RealtimeTTSEngine(stand_in)
    assert engine.voices() == ["Low", "High"]
    low, high, fast = engine.synthesize(
        [
            item("one two three", "wʌn", voice="Low"),
            item("one two three", "wʌn", voice="High"),
            item("one two three", "wʌn", voice="High", speed=2.0),
        ]
    )
    assert stand_in.texts == ["one two three"] * 3
    assert [v.name for v in stand_in.set_voice_calls] == ["Low", "High"]  # set only when it changes

    def pitch(audio: np.ndarray) -> float:
        spectrum = np.abs(np.fft.rfft(audio))
        return float(np.argmax(spectrum) * SAMPLE_RATE / len(audio))

    assert abs(pitch(low.audio) - 200) < 20 and abs(pitch(high.audio) - 800) < 20
    assert len(fast.audio) < 0.7 * len(high.audio)


def test_engine_failures_become_engine_errors_and_leave_nothing_behind_for_the_next_item() -> None:
    stand_in = StandInEngine()
    engine = RealtimeTTSEngine(stand_in)
    stand_in.queue.put(b"\x01\x02" * 5000)  # debris of an earlier, failed call
    with pytest.raises(EngineError, match="failed"):
        engine.synthesize([item("fail", "f", voice="Low")])
    with pytest.raises(EngineError, match="no audio"):
        engine.synthesize([item("silent", "s", voice="Low")])
    with pytest.raises(EngineError, match="text"):
        engine.synthesize([item("", "s", voice="Low")])
    with pytest.raises(EngineError, match="unknown voice"):
        engine.synthesize([item("hi", "h", voice="Nobody")])
    [ok] = engine.synthesize([item("ok", "ok", voice="Low")])
    assert len(ok.audio) < 0.2 * SAMPLE_RATE
    engine.close()
    assert stand_in.shut_down


def test_an_unknown_engine_class_is_refused_with_a_clear_error() -> None:
    if importlib.util.find_spec("RealtimeTTS") is None:
        with pytest.raises(EngineError, match="pip install"):
            RealtimeTTSEngine.from_config(EngineConfig(kind="realtimetts"))
        return
    with pytest.raises(EngineError, match="no engine class"):
        RealtimeTTSEngine.from_config(EngineConfig(kind="realtimetts", realtimetts_engine="NoSuchEngine"))


# --- the real RealtimeTTS SystemEngine (pyttsx3 over espeak-ng) -----------------------------------


@pytest.fixture(scope="module")
def system_engine() -> Any:
    if importlib.util.find_spec("RealtimeTTS") is None:
        pytest.skip(f"RealtimeTTS is not installed: {INSTALL_HINT}")
    try:
        engine = RealtimeTTSEngine.from_config(EngineConfig(kind="realtimetts", realtimetts_engine="SystemEngine"))
    except EngineError as exc:
        pytest.skip(f"RealtimeTTS SystemEngine unavailable ({exc.__cause__ or exc}): {INSTALL_HINT}")
    yield engine
    engine.close()


def test_the_system_engine_speaks_each_item_on_its_own(system_engine: RealtimeTTSEngine) -> None:
    voices = system_engine.voices()
    assert "English (America)" in voices and len(voices) == len(set(voices))
    short, long = system_engine.synthesize([item("Hi.", "hˈI.", voice="English (America)")]) + system_engine.synthesize(
        [item("This sentence is a good deal longer than the first one.", "ðɪs sˈɛntəns", voice="English (America)")]
    )
    for result in (short, long):
        assert result.audio.dtype == np.float32 and np.abs(result.audio).max() > 0.05
        assert int(result.durations.sum()) * SAMPLES_PER_FRAME == len(result.audio)
    assert len(long.audio) > 3 * len(short.audio)


async def test_two_sessions_through_the_real_server_each_get_their_own_audio(system_engine: RealtimeTTSEngine) -> None:
    from gateway.client import VoxgateClient

    texts = {
        "a": ["Alpha speaks first.", "Alpha has a second line that is quite a bit longer than the first."],
        "b": ["Bravo is here.", "Bravo again."],
    }
    overrides = {"engine.kind": "realtimetts", "session.default_voice": "English (America)"}
    async with run_server(overrides) as gateway:
        url = f"ws://127.0.0.1:{gateway.port}"

        async def session(name: str) -> tuple[list[str], float]:
            async with VoxgateClient(url, alignment=True) as client:
                words: list[str] = []
                seconds = 0.0
                speeches = [client.speak(text) for text in texts[name]]
                for speech in speeches:
                    audio = await speech.read_all()
                    assert speech.done is not None and len(audio) > 0
                    seconds += len(audio) / speech.sample_rate
                    words += [w.word for w in speech.words]
                return words, seconds

        solo = {name: await session(name) for name in texts}
        together = dict(zip(texts, await asyncio.gather(*(session(name) for name in texts))))
    for name, lines in texts.items():
        expected = re.findall(r"[A-Za-z]+", " ".join(lines))
        assert together[name][0] == solo[name][0] == expected  # its own words, none of the other's
        # espeak-ng varies by a few samples from run to run: equal within 2 %.
        assert together[name][1] == pytest.approx(solo[name][1], rel=0.02)
