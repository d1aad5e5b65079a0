"""The decoder's norms with a voice's statistics (``gateway.engines.voice_norms``), tiny model.

What must hold: the statistics are measured over each item's own frames (padding excluded), so a
batch measures what its items measure alone; with them an item's audio does not depend on its batch
neighbours; and the decoder no longer reads the whole item (audio at a frame does not change when
frames far after it are added), which is why a piece sounds as it does inside its sentence. Kokoro's
own instance norms stay one setting away (``decoder_norm="instance"``).
"""

from __future__ import annotations

import pytest
import torch

from gateway.config import EngineConfig
from gateway.engines import batched as B
from gateway.engines import create_engine
from gateway.engines.base import SynthesisItem
from gateway.engines.batched import batched_forward
from gateway.engines.kokoro import KokoroEngine
from gateway.engines.source_noise import HashNoise
from gateway.engines.tiny import make_tiny_kmodel, make_tiny_voices
from gateway.engines.voice_norms import MIN_STYLE_ROW, ROW_BUCKETS, FixedNorms, NormRecorder, bucket_row

# The tiny model at one thread, as in test_batched_forward.
from tests.test_batched_forward import one_thread  # noqa: F401 - an autouse fixture


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return make_tiny_kmodel(0, voiced=True)


@pytest.fixture(scope="module")
def voices() -> dict[str, torch.Tensor]:
    return make_tiny_voices(["a", "b"])


def token_ids(n: int, seed: int) -> torch.Tensor:
    ids = torch.randint(1, 178, (n + 2,), generator=torch.Generator().manual_seed(seed))
    ids[0] = ids[-1] = 0
    return ids


def record(model, items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    recorder = NormRecorder()
    with torch.inference_mode():
        batched_forward(model, [ids for ids, _ in items], torch.cat([s for _, s in items]), [1.0] * len(items),
                        HashNoise(list(range(len(items)))), norms=recorder)
    return recorder.result()


def test_a_batch_measures_what_its_items_measure_alone(model, voices):
    """Pooled over the frames of each item, never its padding: batch = the solo runs pooled."""
    items = [(token_ids(12, 1), voices["a"][11]), (token_ids(70, 2), voices["a"][69])]
    together = record(model, items)
    solo = NormRecorder()
    with torch.inference_mode():
        for b, (ids, s) in enumerate(items):
            batched_forward(model, [ids], s, [1.0], HashNoise([b]), norms=solo)
    apart = solo.result()
    assert len(together) == len(apart) == sum(1 for m in model.decoder.modules() if type(m).__name__ == "AdaIN1d")
    for layer, (mean, var) in together.items():
        assert torch.allclose(mean, apart[layer][0], rtol=1e-4, atol=1e-5)
        assert torch.allclose(var, apart[layer][1], rtol=1e-4, atol=1e-5)
        assert bool((var >= 0).all())


def test_with_fixed_statistics_an_item_does_not_depend_on_its_batch(model, voices):
    stats = record(model, [(token_ids(60, 3), voices["b"][59])])
    items = [(token_ids(n, 10 + n), voices["b"][n - 1]) for n in (5, 40, 90)]
    with torch.inference_mode():
        together = batched_forward(model, [ids for ids, _ in items], torch.cat([s for _, s in items]), [1.0] * 3,
                                   HashNoise([0, 1, 2]), norms=FixedNorms([stats] * 3)).items()
        for b, (ids, s) in enumerate(items):
            alone = batched_forward(model, [ids], s, [1.0], HashNoise([b]), norms=FixedNorms([stats])).items()[0]
            assert torch.equal(together[b].durations, alone.durations)
            assert float((together[b].audio - alone.audio).norm() / alone.audio.norm()) < 1e-4


def test_with_fixed_statistics_frames_far_ahead_do_not_change_the_audio_before_them(model, voices):
    """The decoder reads only its convolutions' reach: appending frames leaves the start as it was.
    With each item's own statistics (Kokoro's) the whole item changes."""
    stats = record(model, [(token_ids(60, 4), voices["a"][59])])
    dec = model.decoder
    g = torch.Generator().manual_seed(5)
    frames = 160
    asr = torch.randn(1, dec.encode.conv1.in_channels - 2, frames, generator=g)
    f0 = 120 + 20 * torch.rand(1, 2 * frames, generator=g)
    energy = torch.randn(1, 2 * frames, generator=g)
    style = voices["a"][30][:, :128]

    def decode(n: int, norms) -> torch.Tensor:
        span = B._Span([n], asr.device)
        halves = B._Span([2 * n], asr.device)
        with torch.inference_mode():
            audio, _ = B._decoder(dec, asr[:, :, :n], f0[:, : 2 * n], energy[:, : 2 * n], style, span, halves, HashNoise([0]), norms)
        return audio[0]

    head = 40 * 600  # the first 40 frames' samples, far from frame 80's edge
    short, long = decode(80, FixedNorms([stats])), decode(frames, FixedNorms([stats]))
    assert float((short[:head] - long[:head]).norm() / long[:head].norm()) < 1e-4
    short, long = decode(80, None), decode(frames, None)
    assert float((short[:head] - long[:head]).norm() / long[:head].norm()) > 1e-3


def test_the_engine_measures_each_voice_once_and_instance_is_kokoros_own():
    engine = KokoroEngine.tiny(0, voices=["a", "b"], device="cpu", num_threads=1)
    assert engine.decoder_norm == "voice"
    item = SynthesisItem("həlˈoʊ wˈɜːld", "b", seed=1)
    first = engine.synthesize([item])[0]
    # Voice "b" only, measured on first use, at the row of a sentence (a short item takes its style).
    assert list(engine._voice_norms) == [(1, bucket_row(MIN_STYLE_ROW, 510))]
    measured = engine._voice_norms[(1, bucket_row(MIN_STYLE_ROW, 510))]
    long_item = SynthesisItem("tˈɛst " * 40, "b", seed=2)
    again = engine.synthesize([item, long_item])[0]
    assert engine._voice_norms[(1, bucket_row(MIN_STYLE_ROW, 510))] is measured
    assert (1, bucket_row(len(long_item.phonemes) - 1, 510)) in engine._voice_norms  # a long item's own row
    assert (first.audio == again.audio).all() or float(abs(first.audio - again.audio).max()) < 1e-4
    kokoro = KokoroEngine.tiny(0, voices=["a", "b"], device="cpu", num_threads=1, decoder_norm="instance")
    own = kokoro.synthesize([item])[0]
    assert not kokoro._voice_norms
    assert (own.durations == first.durations).all()  # the text side is untouched
    assert float(abs(own.audio - first.audio).max()) > 1e-3
    with pytest.raises(ValueError, match="decoder_norm"):
        KokoroEngine.tiny(0, voices=["a"], decoder_norm="batch")  # type: ignore[arg-type]


def test_the_config_carries_the_setting_to_the_engine():
    engine = create_engine(EngineConfig(kind="tiny", decoder_norm="instance", warmup=False, num_threads=1))
    assert engine.decoder_norm == "instance"
    assert create_engine(EngineConfig(kind="tiny", warmup=False, num_threads=1)).decoder_norm == "voice"


def test_an_item_takes_the_statistics_of_its_style_rows_nearest_bucket():
    """Statistics follow the style row (a voice pack holds one style per utterance length)."""
    assert bucket_row(MIN_STYLE_ROW, 510) == 91 and bucket_row(140, 510) == 128 and bucket_row(509, 510) == 509
    assert bucket_row(300, 200) == 199  # never past the pack
    for row in range(MIN_STYLE_ROW, 510):
        bucket = bucket_row(row, 510)
        assert bucket in ROW_BUCKETS and max(bucket / row, row / bucket) <= 2 ** 0.3


def test_every_item_takes_at_least_a_sentences_style_and_warmup_measures_every_bucket():
    engine = KokoroEngine.tiny(0, voices=["a"], device="cpu", num_threads=1)
    engine.warmup()
    assert sorted(engine._voice_norms) == [(0, row) for row in ROW_BUCKETS]
    short = SynthesisItem("hˈI", "a", seed=3)
    styled = engine.synthesize([short])[0]
    # Rendered in the style of row MIN_STYLE_ROW (not row 2, its length's) with that row's statistics.
    ids = [0, *(engine._vocab[ch] for ch in short.phonemes), 0]
    with torch.inference_mode():
        expected = batched_forward(
            engine.model, [ids], engine._packs[0, MIN_STYLE_ROW, 0][None], [1.0], HashNoise([short.effective_seed()]),
            norms=FixedNorms([engine._voice_norms[(0, bucket_row(MIN_STYLE_ROW, 510))]]),
        ).items()[0]
    assert (expected.durations.numpy() == styled.durations).all()
    assert float(abs(expected.audio.numpy() - styled.audio).max()) < 1e-5
