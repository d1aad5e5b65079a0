"""Compressed audio through PyAV (FFmpeg): mp3, Opus, AAC, FLAC, plus WAV and raw PCM.

Two shapes, one rule. ``StreamEncoder`` turns float samples into one byte stream in a container
(``mp3``, Ogg ``opus``, ADTS ``aac``, ``flac``, ``wav``, ``pcm``) for HTTP bodies and vendor sockets;
``PacketEncoder`` turns fixed-size frames into bare codec packets (``opus``: one packet per frame;
``mp3``: the bytes the encoder released for that frame) for protocol v1 frames. The rule: one encoder
per context, created, fed and flushed by one thread only (the event loop's), and always flushed at
the end (``finish()``) so the encoder's delayed last frame is never lost. Sharing an FFmpeg encoder
between requests or threads is what made other TTS servers crash or clip their endings.

Why PyAV: one maintained binding with wheels that bundle FFmpeg (no system package), which covers every
format asked for (mp3 via LAME, Opus via libopus, AAC, FLAC) and the containers around them (Ogg, ADTS)
with streaming output. ``soundfile`` (libsndfile) has no AAC and writes Opus/MP3 to seekable files
only; ``lameenc`` is mp3 only. So a mix of those would still need a third library for AAC.
"""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Final

import numpy as np

from gateway.pcm import to_pcm16

__all__ = [
    "HTTP_FORMATS",
    "PACKET_FORMATS",
    "OPUS_RATES",
    "OPUS_FRAME_MS",
    "StreamEncoder",
    "PacketEncoder",
    "check_packet_format",
    "decode_bytes",
]

#: HTTP/stream format -> (Content-Type, FFmpeg muxer, FFmpeg encoder); None: written here, no codec.
HTTP_FORMATS: Final[dict[str, tuple[str, str | None, str | None]]] = {
    "mp3": ("audio/mpeg", "mp3", "libmp3lame"),
    "opus": ("audio/ogg", "ogg", "libopus"),
    "aac": ("audio/aac", "adts", "aac"),
    "flac": ("audio/flac", "flac", "flac"),
    "wav": ("audio/wav", None, None),
    "pcm": ("audio/pcm", None, None),
}
#: Protocol v1 formats carried as codec packets.
PACKET_FORMATS: Final = ("opus", "mp3")
#: Input rates libopus accepts, and the frame lengths a protocol v1 Opus frame may have.
OPUS_RATES: Final = (8_000, 12_000, 16_000, 24_000, 48_000)
OPUS_FRAME_MS: Final = (10, 20, 40, 60)
#: Sample rates LAME encodes (MPEG-1, -2 and -2.5 layer III).
MP3_RATES: Final = (8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000)
_BIT_RATES: Final = {"libmp3lame": 64_000, "libopus": 32_000, "aac": 64_000}


def check_packet_format(audio_format: str, sample_rate: int, frame_ms: int) -> str | None:
    """Why ``audio_format`` cannot be framed at this rate and frame length, or None when it can."""
    if audio_format == "opus":
        if sample_rate not in OPUS_RATES:
            return f"opus needs sample_rate in {', '.join(map(str, OPUS_RATES))}"
        if frame_ms not in OPUS_FRAME_MS:
            return f"opus needs frame_ms in {', '.join(map(str, OPUS_FRAME_MS))}"
    if audio_format == "mp3" and sample_rate not in MP3_RATES:
        return f"mp3 needs sample_rate in {', '.join(map(str, MP3_RATES))}"
    return None


def _codec_context(encoder: str, sample_rate: int, *, frame_ms: int | None = None):  # -> av.AudioCodecContext
    import av  # deferred: only sessions that ask for a compressed format pay for FFmpeg

    context = av.CodecContext.create(encoder, "w")
    context.sample_rate = sample_rate
    context.layout = "mono"
    context.format = {"libmp3lame": "s16p", "libopus": "s16", "aac": "fltp", "flac": "s16"}[encoder]
    context.time_base = Fraction(1, sample_rate)
    if encoder in _BIT_RATES:
        context.bit_rate = _BIT_RATES[encoder]
    if encoder == "libopus":
        context.options = {"application": "audio", **({"frame_duration": str(frame_ms)} if frame_ms else {})}
    return context


class _Sink(io.RawIOBase):
    """A write-only, unseekable file for FFmpeg's muxer: what it writes is taken by ``take()``."""

    def __init__(self) -> None:
        super().__init__()
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self._chunks = b"".join(self._chunks), []
        return data


class StreamEncoder:
    """One context's audio as a byte stream in ``audio_format`` (see ``HTTP_FORMATS``).

    ``push(samples)`` (float32 at ``sample_rate``) returns the bytes ready so far (maybe none: codecs
    and muxers hold some back); ``finish()`` flushes encoder and muxer and returns the rest. Not
    thread-safe: create, feed and finish it on one thread. ``wav`` is a header for a stream of unknown
    length followed by 16-bit PCM; ``pcm`` is bare 16-bit little-endian PCM.
    """

    def __init__(self, audio_format: str, *, sample_rate: int) -> None:
        if audio_format not in HTTP_FORMATS:
            raise ValueError(f"unknown stream format {audio_format!r}")
        self.audio_format = audio_format
        self.sample_rate = sample_rate
        self.content_type, muxer, encoder = HTTP_FORMATS[audio_format]
        self._finished = False
        self._pts = 0
        self._header = streaming_wav_header(sample_rate) if audio_format == "wav" else b""
        self._container = None
        if muxer is not None and encoder is not None:
            import av

            self._sink = _Sink()
            # Ogg holds a page back until it spans a second by default: 100 ms pages keep it streaming.
            options = {"page_duration": "100000"} if muxer == "ogg" else {}
            self._container = av.open(self._sink, mode="w", format=muxer, options=options)
            self._stream = self._container.add_stream(encoder, rate=sample_rate)
            self._stream.layout = "mono"
            if encoder in _BIT_RATES:
                self._stream.bit_rate = _BIT_RATES[encoder]
            self._frame_format = {"libmp3lame": "s16p", "libopus": "s16", "aac": "fltp", "flac": "s16"}[encoder]

    def push(self, samples: np.ndarray) -> bytes:
        assert not self._finished, "push() after finish()"
        header, self._header = self._header, b""
        if self._container is None:
            return header + to_pcm16(samples).tobytes()
        if len(samples) == 0:
            return header
        self._mux(self._frame(samples))
        return header + self._sink.take()

    def finish(self) -> bytes:
        """Flush the encoder (its last frames) and the muxer (its trailer). Call once."""
        if self._finished:
            return b""
        self._finished = True
        header, self._header = self._header, b""
        if self._container is None:
            return header
        self._mux(None)
        self._container.close()
        return header + self._sink.take()

    def _frame(self, samples: np.ndarray):  # -> av.AudioFrame
        import av

        if self._frame_format == "fltp":
            data = np.asarray(samples, dtype=np.float32)[None, :]
        else:
            data = to_pcm16(samples)[None, :]
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=self._frame_format, layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        frame.time_base = Fraction(1, self.sample_rate)
        self._pts += len(samples)
        return frame

    def _mux(self, frame) -> None:  # frame: av.AudioFrame | None
        for packet in self._stream.encode(frame):
            self._container.mux(packet)


class PacketEncoder:
    """Bare codec packets for protocol v1 frames of ``frame_ms`` at ``sample_rate``.

    ``opus``: ``encode(frame)`` of a whole frame returns exactly one Opus packet. ``finish(rest)``
    pads the last partial frame to a whole one and then flushes the encoder, which owes its lookahead
    (about 6.5 ms): it returns ``[(samples, packet), ...]`` where ``samples`` is how much audio each
    packet stands for, so every packet is one frame. ``mp3``: ``encode(frame)`` returns the bytes LAME
    released for that frame (empty for the first ones: it holds about 1,700 samples back);
    ``finish(rest)`` returns one last entry holding the rest and the flushed tail.
    """

    def __init__(self, audio_format: str, *, sample_rate: int, frame_ms: int) -> None:
        problem = check_packet_format(audio_format, sample_rate, frame_ms)
        if audio_format not in PACKET_FORMATS or problem is not None:
            raise ValueError(problem or f"unknown packet format {audio_format!r}")
        self.audio_format = audio_format
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000
        encoder = "libopus" if audio_format == "opus" else "libmp3lame"
        self._context = _codec_context(encoder, sample_rate, frame_ms=frame_ms if audio_format == "opus" else None)
        self._context.open()
        self._format = self._context.format.name
        self._pts = 0
        self._finished = False

    def encode(self, samples: np.ndarray) -> bytes:
        assert not self._finished, "encode() after finish()"
        if len(samples) == 0:
            return b""
        return b"".join(bytes(p) for p in self._context.encode(self._frame(samples)))

    def finish(self, rest: np.ndarray) -> list[tuple[np.ndarray, bytes]]:
        """Encode the samples left over (fewer than a frame, maybe none) and flush. Call once."""
        assert not self._finished, "finish() called twice"
        rest = np.asarray(rest, dtype=np.float32)
        if self.audio_format == "opus":
            out: list[tuple[np.ndarray, bytes]] = []
            if len(rest):
                padded = np.concatenate([rest, np.zeros(self.frame_samples - len(rest), dtype=np.float32)])
                out.append((rest, self.encode(padded)))
            self._finished = True
            for packet in self._context.encode(None):
                out.append((np.zeros(packet.duration or 0, dtype=np.float32), bytes(packet)))
            return out
        data = self.encode(rest)
        self._finished = True
        tail = b"".join(bytes(p) for p in self._context.encode(None))
        return [(rest, data + tail)]

    def _frame(self, samples: np.ndarray):  # -> av.AudioFrame
        import av

        frame = av.AudioFrame.from_ndarray(to_pcm16(samples)[None, :], format=self._format, layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        frame.time_base = Fraction(1, self.sample_rate)
        self._pts += len(samples)
        return frame


def streaming_wav_header(sample_rate: int, *, channels: int = 1, sample_width: int = 2) -> bytes:
    """A 44-byte PCM WAV header for a stream of unknown length (RIFF and data sizes 0xFFFFFFFF)."""
    return wav_header(sample_rate, channels=channels, sample_width=sample_width)


def wav_header(sample_rate: int, *, data_bytes: int | None = None, channels: int = 1, sample_width: int = 2) -> bytes:
    """A 44-byte PCM WAV header for ``data_bytes`` of samples; None: unknown length (0xFFFFFFFF)."""
    import struct

    unknown = 0xFFFF_FFFF
    data_size = unknown if data_bytes is None else data_bytes
    riff_size = unknown if data_bytes is None else 36 + data_bytes
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", riff_size, b"WAVE",
        b"fmt ", 16, 1, channels, sample_rate, sample_rate * channels * sample_width, channels * sample_width,
        8 * sample_width,
        b"data", data_size,
    )  # fmt: skip


def decode_bytes(data: bytes, *, audio_format: str | None = None) -> tuple[np.ndarray, int]:
    """Decode a whole encoded stream (any container FFmpeg reads) to mono float32 and its rate: what
    tests and benchmarks use to check the audio that came back. ``audio_format`` helps for raw
    streams without a header (``mp3``, ``aac``)."""
    import av

    muxer = {"aac": "aac", "mp3": "mp3"}.get(audio_format or "")
    chunks: list[np.ndarray] = []
    rate = 0
    with av.open(io.BytesIO(data), mode="r", format=muxer) as container:
        stream = container.streams.audio[0]
        for frame in container.decode(stream):
            rate = frame.sample_rate
            array = frame.to_ndarray()
            if array.dtype == np.int16:
                array = array.astype(np.float32) / 32_768.0
            elif array.dtype == np.int32:
                array = array.astype(np.float32) / 2_147_483_648.0
            # planar (channels, n) or packed (1, n * channels): mono either way here
            chunks.append(np.asarray(array[0], dtype=np.float32))
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    return samples, rate
