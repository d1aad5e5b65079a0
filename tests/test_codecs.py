"""PyAV encoders: every HTTP format decodes back to the audio put in, streamed, with nothing lost at
the end; protocol v1 Opus is one packet per frame, mp3 a continuous stream cut at frame boundaries."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from gateway.audio import ContextEncoder
from gateway.codecs import HTTP_FORMATS, PacketEncoder, StreamEncoder, check_packet_format, decode_bytes

av = pytest.importorskip("av")

RATE = 24_000


def tone(seconds: float, hz: float = 220.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def encode_in_chunks(fmt: str, audio: np.ndarray, chunk: int = 2_400) -> list[bytes]:
    encoder = StreamEncoder(fmt, sample_rate=RATE)
    out = [encoder.push(audio[i : i + chunk]) for i in range(0, len(audio), chunk)]
    out.append(encoder.finish())
    return out


@pytest.mark.parametrize("fmt", [f for f in HTTP_FORMATS if f != "pcm"])
def test_each_stream_format_decodes_to_the_same_length_and_pitch_and_streams_before_the_end(fmt: str) -> None:
    audio = tone(1.5)
    chunks = encode_in_chunks(fmt, audio)

    samples, rate = decode_bytes(b"".join(chunks), audio_format=fmt)

    # Codec priming and padding add at most a couple of codec frames (mp3 1152, AAC 1024 samples).
    assert abs(len(samples) / rate - 1.5) < 0.1
    assert abs(dominant_hz(samples, rate) - 220.0) < 5.0
    assert sum(1 for c in chunks[:-1] if c) >= 5  # bytes leave while audio still comes in


def test_pcm_is_bare_16_bit_little_endian() -> None:
    audio = tone(0.2)
    data = b"".join(encode_in_chunks("pcm", audio))

    assert np.array_equal(np.frombuffer(data, "<i2"), np.round(audio * 32_767).astype(np.int16))


@pytest.mark.parametrize("fmt", ["mp3", "aac", "opus", "flac"])
def test_finish_flushes_the_encoders_held_back_tail(fmt: str) -> None:
    audio = tone(0.5)
    chunks = encode_in_chunks(fmt, audio, chunk=RATE // 10)

    assert chunks[-1], "finish() returned nothing: the last frames would be lost"
    whole, rate = decode_bytes(b"".join(chunks), audio_format=fmt)
    assert len(whole) / rate >= 0.5 - 0.005


@pytest.mark.parametrize("frame_ms", [10, 20, 40, 60])
def test_opus_packets_are_one_per_frame_and_decode_to_the_input(frame_ms: int) -> None:
    frame = RATE * frame_ms // 1000
    audio = tone(0.6)
    encoder = ContextEncoder(audio_format="opus", sample_rate=RATE, frame_ms=frame_ms)
    frames = encoder.push(audio[: len(audio) // 2]) + encoder.push(audio[len(audio) // 2 :]) + encoder.finish()
    payloads = [encoder.encode(f) for f in frames]

    assert all(len(f) == frame for f in frames[:-2])
    decoder = av.CodecContext.create("opus", "r")
    decoder.sample_rate, decoder.layout = RATE, "mono"
    decoded = []
    out_rate = RATE
    for payload in payloads:
        assert payload, "every opus frame carries exactly one non-empty packet"
        packet = av.Packet(payload)
        packet.time_base = Fraction(1, RATE)
        out = decoder.decode(packet)
        assert len(out) == 1
        decoded.append(out[0].to_ndarray()[0])
        out_rate = out[0].sample_rate  # FFmpeg's Opus decoder outputs 48 kHz
    samples = np.concatenate(decoded)
    scale = out_rate / RATE
    # The decoder's output starts with the encoder's lookahead (its pre-skip) and ends padded.
    assert len(audio) * scale <= len(samples) <= (len(audio) + 2 * frame) * scale
    assert abs(dominant_hz(samples, out_rate) - 220.0) < 5.0


def test_mp3_frames_form_one_stream_with_the_flushed_tail_in_the_last_frame() -> None:
    audio = tone(0.5)
    encoder = ContextEncoder(audio_format="mp3", sample_rate=RATE, frame_ms=20)
    frames = encoder.push(audio) + encoder.finish()
    payloads = [encoder.encode(f) for f in frames]

    assert sum(len(f) for f in frames) == len(audio)
    assert payloads[-1]  # the flushed tail
    samples, rate = decode_bytes(b"".join(payloads), audio_format="mp3")
    assert rate == RATE and len(samples) >= len(audio)


def test_finish_with_nothing_pending_still_returns_the_frame_carrying_the_codec_tail() -> None:
    encoder = ContextEncoder(audio_format="mp3", sample_rate=RATE, frame_ms=20)
    frames = encoder.push(tone(0.1))  # exactly five frames: nothing left over
    payloads = [encoder.encode(f) for f in frames]
    tail = encoder.finish()

    assert len(tail) == 1 and len(tail[0]) == 0
    assert encoder.encode(tail[0])
    assert not any(payloads[:2])  # LAME holds its first frames back: only finish() gets them out


@pytest.mark.parametrize(
    ("fmt", "rate", "frame_ms", "ok"),
    [("opus", 24_000, 20, True), ("opus", 22_050, 20, False), ("opus", 48_000, 30, False), ("mp3", 44_100, 30, True),
     ("mp3", 96_000, 20, False), ("pcm_s16le", 22_050, 30, True)],
)  # fmt: skip
def test_packet_formats_refuse_rates_and_frame_lengths_their_codec_cannot_frame(fmt: str, rate: int, frame_ms: int, ok: bool) -> None:
    assert (check_packet_format(fmt, rate, frame_ms) is None) is ok
    if fmt in ("opus", "mp3") and not ok:
        with pytest.raises(ValueError):
            PacketEncoder(fmt, sample_rate=rate, frame_ms=frame_ms)
