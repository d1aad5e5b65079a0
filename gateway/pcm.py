"""16-bit PCM: the one conversion each way between float samples and little-endian int16.

Everything voxgate writes as 16-bit PCM goes through ``to_pcm16``: protocol v1 ``pcm_s16le``
frames, the s16 input of the Opus/MP3/FLAC encoders and of mu-law, WAV files, the integrations'
pipes and the benchmarks' saved audio. So one rule reaches the wire and every file: scale by
32 767, round half to even, clip to [-32 768, 32 767] (a sample of exactly 1.0 is 32 767, one
of -1.0 is -32 767). ``from_pcm16`` is its inverse up to quantisation (``x / 32 767``), for PCM
that voxgate wrote.

Not here: int16 from other encoders (FFmpeg's decoders, RealtimeTTS) is read with their own
full-scale convention (``/ 32 768``) where it is decoded, and G.711 mu-law (``gateway.audio``).
A leaf module (numpy only), so that ``gateway.codecs`` and ``gateway.audio`` can both use it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["from_pcm16", "to_pcm16"]


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples (nominally in [-1, 1]) as little-endian int16; ``.tobytes()`` gives the wire
    bytes. Out-of-range samples are clipped, never wrapped."""
    scaled = np.round(np.asarray(samples, dtype=np.float32) * 32_767.0)
    return np.clip(scaled, -32_768, 32_767).astype("<i2")


def from_pcm16(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Float32 samples from 16-bit little-endian PCM written by ``to_pcm16`` (bytes or an int16
    array)."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32_767.0
