"""The one float <-> 16-bit PCM conversion (``gateway.pcm``), and that every writer of PCM uses it."""

from __future__ import annotations

import numpy as np

from gateway.audio import decode_samples, encode_samples
from gateway.codecs import StreamEncoder
from gateway.pcm import from_pcm16, to_pcm16


def test_scale_rounds_half_to_even_and_clips_instead_of_wrapping() -> None:
    samples = np.array([0.0, 1.0, -1.0, 2.0, -2.0, 0.5 / 32_767, 1.5 / 32_767, -0.5 / 32_767], dtype=np.float32)
    assert to_pcm16(samples).tolist() == [0, 32_767, -32_767, 32_767, -32_768, 0, 2, 0]
    assert to_pcm16(samples).dtype == np.dtype("<i2")


def test_decoding_inverts_encoding_up_to_quantisation() -> None:
    samples = np.random.default_rng(0).uniform(-1.0, 1.0, 4_800).astype(np.float32)
    assert np.abs(from_pcm16(to_pcm16(samples).tobytes()) - samples).max() <= 0.5 / 32_767 + 1e-7
    assert from_pcm16(to_pcm16(samples)).dtype == np.float32  # an int16 array works as well as bytes


def test_protocol_frames_and_the_http_pcm_and_wav_streams_carry_the_same_bytes() -> None:
    samples = np.random.default_rng(1).normal(0.0, 0.6, 2_400).astype(np.float32)  # some clip
    expected = to_pcm16(samples).tobytes()
    assert encode_samples(samples, "pcm_s16le") == expected
    assert np.array_equal(decode_samples(expected, "pcm_s16le"), from_pcm16(expected))
    assert StreamEncoder("pcm", sample_rate=24_000).push(samples) == expected
    wav = StreamEncoder("wav", sample_rate=24_000).push(samples)
    assert wav.endswith(expected) and len(wav) == 44 + len(expected)
