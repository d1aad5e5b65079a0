from __future__ import annotations

import numpy as np
import pytest

from gateway.audio import ContextEncoder, decode_samples, encode_samples, ulaw_decode, ulaw_encode


def tone(seconds: float, rate: int = 24_000, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_frames_have_frame_ms_and_only_the_last_is_short() -> None:
    enc = ContextEncoder(audio_format="pcm_s16le", sample_rate=24_000, frame_ms=20)
    frames = enc.push(tone(0.05)) + enc.finish()
    assert [len(f) for f in frames] == [480, 480, 240]


def test_pieces_concatenate_seamlessly_through_one_encoder() -> None:
    audio = tone(0.3)
    enc = ContextEncoder(audio_format="pcm_f32le", sample_rate=24_000, frame_ms=20)
    frames = enc.push(audio[:1000]) + enc.push(audio[1000:]) + enc.finish()
    np.testing.assert_array_equal(np.concatenate(frames), audio)


@pytest.mark.parametrize("rate", [8_000, 16_000, 22_050, 44_100, 48_000])
def test_resampling_keeps_duration_and_pitch(rate: int) -> None:
    audio = tone(1.0, hz=440.0)
    enc = ContextEncoder(audio_format="pcm_f32le", sample_rate=rate, frame_ms=20)
    out = np.concatenate(enc.push(audio[:7_000]) + enc.push(audio[7_000:]) + enc.finish())
    assert abs(len(out) - rate) <= 2
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    peak_hz = np.argmax(spectrum) * rate / len(out)
    assert abs(peak_hz - 440.0) < 3.0


def test_ulaw_round_trip_is_within_quantisation_error() -> None:
    audio = tone(0.1, rate=8_000)
    decoded = ulaw_decode(ulaw_encode(audio))
    assert np.max(np.abs(decoded - audio)) < 0.02
    assert len(ulaw_encode(audio)) == len(audio)


@pytest.mark.parametrize("fmt", ["pcm_s16le", "pcm_f32le", "ulaw"])
def test_encode_then_decode_samples_round_trips(fmt: str) -> None:
    audio = tone(0.02)
    assert np.max(np.abs(decode_samples(encode_samples(audio, fmt), fmt) - audio)) < 0.02
