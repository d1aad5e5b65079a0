"""Audio encoding: engine audio (float32, 24 kHz) to the session's format, rate and frame size.

One ``ContextEncoder`` per context, created and used only on the event loop thread: resampler state
(soxr's streaming filter) is never shared between contexts, sessions or threads, which is how other
servers ended up with crackles and segfaults. Pieces of a context go through one stream, so the
resampler sees one continuous signal and piece boundaries stay click-free.
"""

from __future__ import annotations

import collections
from typing import Final

import numpy as np
import soxr

from gateway.codecs import PACKET_FORMATS, PacketEncoder
from gateway.pcm import from_pcm16, to_pcm16
from gateway.protocol import SAMPLE_RATE

__all__ = ["ContextEncoder", "encode_samples", "decode_samples", "ulaw_encode", "ulaw_decode", "ULAW_RATE"]

ULAW_RATE: Final = 8_000
_ULAW_BIAS: Final = 0x84
_ULAW_CLIP: Final = 32_635


def ulaw_encode(samples: np.ndarray) -> bytes:
    """G.711 mu-law bytes for float samples in [-1, 1]."""
    pcm = to_pcm16(samples).astype(np.int32)
    sign = np.where(pcm < 0, 0x80, 0x00)
    magnitude = np.minimum(np.abs(pcm), _ULAW_CLIP) + _ULAW_BIAS
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    """Float samples from G.711 mu-law bytes (the inverse of ``ulaw_encode`` up to quantisation)."""
    code = ~np.frombuffer(data, dtype=np.uint8).astype(np.int32) & 0xFF
    sign = code & 0x80
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    magnitude = (((mantissa << 3) + _ULAW_BIAS) << exponent) - _ULAW_BIAS
    return (np.where(sign != 0, -magnitude, magnitude) / 32_768.0).astype(np.float32)


def encode_samples(samples: np.ndarray, audio_format: str) -> bytes:
    """Bytes of one frame in ``pcm_s16le``, ``pcm_f32le`` or ``ulaw``."""
    if audio_format == "pcm_s16le":
        return to_pcm16(samples).tobytes()
    if audio_format == "pcm_f32le":
        return np.asarray(samples, dtype="<f4").tobytes()
    if audio_format == "ulaw":
        return ulaw_encode(samples)
    raise ValueError(f"unknown audio format {audio_format!r}")


def decode_samples(payload: bytes, audio_format: str) -> np.ndarray:
    """Float32 samples from a frame payload: what clients and tests do with a frame."""
    if audio_format == "pcm_s16le":
        return from_pcm16(payload)
    if audio_format == "pcm_f32le":
        return np.frombuffer(payload, dtype="<f4").astype(np.float32)
    if audio_format == "ulaw":
        return ulaw_decode(payload)
    raise ValueError(f"unknown audio format {audio_format!r}")


class ContextEncoder:
    """Resamples one context's audio and cuts it into frames of ``frame_ms``.

    Call ``push(audio)`` for each piece in order and ``finish()`` once at the end; both return
    float32 frames at the output rate (every frame full length except possibly the last one of
    ``finish()``). ``encode(frame)`` gives the payload bytes, for each frame in the order returned.

    ``opus`` and ``mp3`` go through one ``PacketEncoder`` of this context: each frame is encoded
    as it is cut (so the codec sees one continuous signal) and ``encode`` hands out its payload.
    ``finish()`` then always returns at least one frame, the one carrying the flushed codec tail.
    """

    def __init__(self, *, audio_format: str, sample_rate: int, frame_ms: int, source_rate: int = SAMPLE_RATE) -> None:
        self.audio_format = audio_format
        self.sample_rate = sample_rate
        self.frame_samples = max(1, sample_rate * frame_ms // 1000)
        self._resampler = (
            None
            if sample_rate == source_rate
            else soxr.ResampleStream(source_rate, sample_rate, 1, dtype="float32", quality="HQ")
        )
        self._pending = np.zeros(0, dtype=np.float32)
        self._finished = False
        self._codec = (
            PacketEncoder(audio_format, sample_rate=sample_rate, frame_ms=frame_ms)
            if audio_format in PACKET_FORMATS
            else None
        )
        self._payloads: collections.deque[bytes] = collections.deque()

    def push(self, audio: np.ndarray) -> list[np.ndarray]:
        """Add one piece's audio; returns the whole frames now available."""
        assert not self._finished, "push() after finish()"
        audio = np.asarray(audio, dtype=np.float32)
        if self._resampler is not None:
            audio = self._resampler.resample_chunk(audio, last=False)
        self._pending = np.concatenate([self._pending, audio]) if self._pending.size else audio
        return self._encoded(self._take_frames(final=False))

    def finish(self) -> list[np.ndarray]:
        """Flush the resampler and return the remaining frames (the last one may be short)."""
        if self._finished:
            return []
        self._finished = True
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            self._pending = np.concatenate([self._pending, tail])
        if self._codec is None:
            return self._take_frames(final=True)
        frames = self._encoded(self._take_frames(final=False))
        rest, self._pending = self._pending, self._pending[:0]
        for samples, payload in self._codec.finish(rest):
            frames.append(samples)
            self._payloads.append(payload)
        return frames

    def encode(self, frame: np.ndarray) -> bytes:
        if self._codec is not None:
            return self._payloads.popleft()
        return encode_samples(frame, self.audio_format)

    def _encoded(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        if self._codec is not None:
            self._payloads.extend(self._codec.encode(frame) for frame in frames)
        return frames

    def _take_frames(self, *, final: bool) -> list[np.ndarray]:
        n = self.frame_samples
        whole = self._pending.size // n
        frames = [self._pending[i * n : (i + 1) * n] for i in range(whole)]
        rest = self._pending[whole * n :]
        if final and rest.size:
            frames.append(rest)
            rest = rest[:0]
        self._pending = rest.copy()
        return frames
