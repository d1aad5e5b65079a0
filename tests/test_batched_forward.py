"""``batched_forward`` against one-by-one synthesis and against kokoro's own forward (tiny model).

The tiny random-weight Kokoro has the real architecture at toy widths, so every masking decision of
the batched pass is exercised in seconds. Batched and solo runs must agree at 1e-4, voiced or not:
the prosody pass (``gateway.engines.prosody``) gives each item the same durations, F0 and N as a
solo run bit for bit (checked first; Kokoro's source STFT takes ``torch.angle`` of the harmonic
source, which jumps by 2 pi where a bin crosses the negative real axis, so an F0 off by one ulp made
audibly different audio), and the decoder differs by float rounding only.
"""

from __future__ import annotations

import pytest
import torch

from gateway.engines import batched as B
from gateway.engines.base import SynthesisItem
from gateway.engines.batched import batched_forward
from gateway.engines.kokoro import KokoroEngine
from gateway.engines.opcount import count_aten_ops
from gateway.engines.source_noise import GeneratorNoise, HashNoise
from gateway.engines.tiny import make_tiny_kmodel, make_tiny_voices

REL_TOL = 1e-4
MIXED_LENGTHS = (3, 20, 90, 180)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The tiny model's ops are too small to gain from threads, and on a shared 2-core machine
    # OpenMP threads waiting on each other make it many times slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def unvoiced() -> torch.nn.Module:
    return make_tiny_kmodel(0, voiced=False)


@pytest.fixture(scope="module")
def voiced() -> torch.nn.Module:
    return make_tiny_kmodel(0, voiced=True)


@pytest.fixture(scope="module")
def voices() -> dict[str, torch.Tensor]:
    return make_tiny_voices(["a", "b", "c"])


def make_item(num_phonemes: int, *, index: int, voices: dict[str, torch.Tensor], speed: float = 1.0) -> dict:
    """A random token sequence with its style row, speed and seed; ``index`` makes it unique."""
    g = torch.Generator().manual_seed(1000 + index)
    ids = torch.randint(1, 178, (num_phonemes + 2,), generator=g)
    ids[0] = ids[-1] = 0
    voice = "abc"[index % 3]
    return {"ids": ids, "ref_s": voices[voice][num_phonemes - 1], "speed": speed, "seed": 7 + index}


def run(model: torch.nn.Module, items: list[dict], *, noise: str = "generator", **kwargs) -> list[B.BatchedOutput]:
    """``noise="generator"``: kokoro's own draws per item; ``"hash"``: the engine's batched noise."""
    seeds = [item["seed"] for item in items]
    return batched_forward(
        model,
        [item["ids"] for item in items],
        torch.cat([item["ref_s"] for item in items]),
        [item["speed"] for item in items],
        HashNoise(seeds) if noise == "hash" else [torch.Generator().manual_seed(seed) for seed in seeds],
        **kwargs,
    ).items()


@pytest.fixture(scope="module")
def items(voices) -> list[dict]:
    speeds = (1.0, 1.3, 0.8, 1.0)
    return [make_item(n, index=i, voices=voices, speed=s) for i, (n, s) in enumerate(zip(MIXED_LENGTHS, speeds))]


@pytest.fixture(scope="module")
def mixed(unvoiced, items) -> tuple[list[dict], list[B.BatchedOutput]]:
    """The mixed-length items and each one's solo (batch 1) output, unvoiced model, engine noise."""
    return items, [run(unvoiced, [item], noise="hash")[0] for item in items]


def assert_matches_solo(outputs: list[B.BatchedOutput], solos: list[B.BatchedOutput], tol: float = REL_TOL) -> float:
    worst = 0.0
    for out, solo in zip(outputs, solos, strict=True):
        assert torch.equal(out.durations, solo.durations)
        assert out.audio.shape == solo.audio.shape
        worst = max(worst, rel_err(out.audio, solo.audio))
    assert worst < tol, worst
    return worst


def test_a_mixed_length_batch_matches_each_item_synthesized_alone(unvoiced, mixed):
    items, solos = mixed
    outputs = run(unvoiced, items, noise="hash")
    assert_matches_solo(outputs, solos)
    for item, out in zip(items, outputs):
        assert len(out.durations) == len(item["ids"])
        assert out.audio.shape[0] == int(out.durations.sum()) * 600
    # Audio length follows text length (the tiny model's durations are not degenerate).
    lengths = [out.audio.shape[0] for out in outputs]
    assert lengths[0] < lengths[1] < lengths[2] < lengths[3]


def test_reordering_the_batch_or_changing_its_company_changes_nothing(unvoiced, mixed):
    items, solos = mixed
    # The 180-token item is covered above; the three shorter ones keep this test quick. Orders:
    # a rotation, swapped neighbours both ways, an item beside a copy of itself, another partner.
    for order in [(2, 0, 1), (0, 1), (1, 0), (1, 1), (0, 2)]:
        outputs = run(unvoiced, [items[i] for i in order], noise="hash")
        assert_matches_solo(outputs, [solos[i] for i in order])


def test_with_prosody_per_item_a_voiced_mixed_batch_matches_solo_in_any_order(voiced, items):
    """``per_item_prosody=True``: F0 is bit-identical to a solo run, so voiced audio matches too."""
    solos = [run(voiced, [item], noise="hash")[0] for item in items]
    assert_matches_solo(run(voiced, items, noise="hash", per_item_prosody=True), solos)
    reordered = [items[i] for i in (2, 0, 1)]
    outputs = run(voiced, reordered, noise="hash", per_item_prosody=True)
    assert_matches_solo(outputs, [solos[i] for i in (2, 0, 1)])


def test_whole_batch_prosody_gives_each_item_its_solo_durations_f0_and_n_bit_for_bit(voiced, items):
    """Before ``prosody.py`` F0 differed from a solo run's by up to 9e-5 Hz here (padded attention,
    packed LSTMs, shape-dependent matmul and conv kernels), enough to flip the source's STFT angle."""
    def prosody(batch: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        tokens = B._pad_tokens([item["ids"] for item in batch], torch.device("cpu"))
        s_pred = torch.cat([item["ref_s"] for item in batch])[:, voiced.predictor.text_encoder.sty_dim :]
        speeds = torch.tensor([item["speed"] for item in batch])
        with torch.inference_mode():
            durations, f0, n_curve, _, _, halves = B._durations_and_prosody(voiced, tokens, s_pred, speeds)
        return durations, f0, n_curve, halves.lengths

    for order in [(0, 1, 2, 3), (3, 1, 0, 2), (2, 2)]:
        durations, f0, n_curve, halves = prosody([items[i] for i in order])
        for b, i in enumerate(order):
            solo_durations, solo_f0, solo_n, (h,) = prosody([items[i]])
            assert halves[b] == h
            assert torch.equal(durations[b, : len(items[i]["ids"])], solo_durations[0])
            assert torch.equal(f0[b, :h], solo_f0[0]) and torch.equal(n_curve[b, :h], solo_n[0])


def test_a_voiced_mixed_batch_matches_solo_in_any_order_and_company(voiced, items):
    """Whole-batch prosody (the default): voiced audio within 1e-4 of a solo run, max abs and relative."""
    solos = [run(voiced, [item], noise="hash")[0] for item in items]
    for order in [(0, 1, 2, 3), (2, 0, 1), (1, 1), (3, 0)]:
        outputs = run(voiced, [items[i] for i in order], noise="hash")
        expected = [solos[i] for i in order]
        assert_matches_solo(outputs, expected)
        assert max(float((o.audio - e.audio).abs().max()) for o, e in zip(outputs, expected)) < 1e-4


def test_a_batch_of_one_equals_kokoros_forward_with_tokens(unvoiced, voiced, voices, monkeypatch):
    # kokoro's source STFT, with the one deliberate change of the batched pass: frame 0's angle,
    # whose sign is rounding noise there, taken from the real part (``B.source_phase``).
    from kokoro.istftnet import TorchSTFT

    def transform(self, input_data):
        spec = torch.stft(
            input_data, self.filter_length, self.hop_length, self.win_length,
            window=self.window.to(input_data.device), return_complex=True,
        )
        return torch.abs(spec), B.source_phase(spec)

    monkeypatch.setattr(TorchSTFT, "transform", transform)
    # Same noise, not zero noise: GeneratorNoise draws item b's source noise from its own
    # generator with exactly the shapes, memory layout and order in which SineGen draws from the
    # global RNG (initial phases, then additive noise). Seeding the global RNG with the item's seed
    # therefore makes kokoro's draws identical, and unvoiced outputs agree to the last bit. Voiced,
    # the oscillator's phase is integrated in float64 here and in float32 by kokoro (see
    # test_the_oscillator_integrates_its_phase_without_float32_drift): same durations and lengths.
    for index, n in enumerate((3, 40, 150)):
        item = make_item(n, index=index, voices=voices, speed=(1.0, 1.25, 0.9)[index])
        for model in (unvoiced, voiced):
            (out,) = run(model, [item])
            torch.manual_seed(item["seed"])
            audio, durations = model.forward_with_tokens(item["ids"][None], item["ref_s"], item["speed"])
            assert torch.equal(out.durations, durations)
            assert out.audio.shape == audio.shape
            if model is unvoiced:
                assert rel_err(out.audio, audio) <= 1e-6


def test_the_oscillator_integrates_its_phase_without_float32_drift(voiced):
    """``_sines`` against kokoro's ``SineGen._f02sine`` run in float64, on 8 s of varying F0.

    kokoro's own float32 run is off by ~1e-2 at the 9th harmonic by the end (its cumulative sum
    rounds); the float64 integration stays within float32 rounding of the exact phase.
    """
    sine = voiced.decoder.generator.m_source.l_sin_gen
    g = torch.Generator().manual_seed(11)
    halves = 640
    f0 = 150 + torch.cumsum(3 * torch.randn(1, halves, generator=g), dim=1)
    per_sample = torch.repeat_interleave(f0, sine.upsample_scale, dim=1).unsqueeze(-1)
    harmonics = torch.arange(1, sine.dim + 1, dtype=torch.float32)
    with torch.inference_mode():
        mine = B._sines(sine, f0.unsqueeze(1), B._Span([halves], f0.device)).transpose(1, 2)
        exact = sine._f02sine((per_sample * harmonics).double()) * sine.sine_amp
        kokoro32 = sine._f02sine(per_sample * harmonics) * sine.sine_amp
    assert float((mine - exact).abs().max()) < 1e-5
    assert float((kokoro32 - exact).abs().max()) > 1e-4  # the drift this fixes is real


def test_hash_noise_is_standard_normal_and_each_items_own(voiced):
    noise = HashNoise([3, 4])
    draws = noise.standard_normal([5000, 700], 5000, 9, torch.device("cpu"))
    assert abs(float(draws.mean())) < 0.01 and abs(float(draws.std()) - 1) < 0.01
    alone = HashNoise([4]).standard_normal([700], 700, 9, torch.device("cpu"))
    assert torch.equal(draws[1, :, :700], alone[0])
    assert not torch.equal(draws[0, :, :700], alone[0])


def count_synthesize_ops(engine: KokoroEngine, num_items: int) -> int:
    phonemes = "həlˈoʊ wˈɜːld ðɪs ɪz ɐ tˈɛst ʌv ðə ɡˈeɪtweɪ " * 4
    lengths = (5, 40, 90, 17, 60, 25, 110, 33)
    items = [
        SynthesisItem(phonemes[: lengths[i % len(lengths)] + i], ("a", "b")[i % 2], seed=i) for i in range(num_items)
    ]
    # Each voice's decoder statistics are measured on first use per style row (voice_norms.py):
    # not counted.
    engine.synthesize(items)
    with count_aten_ops() as counter:
        engine.synthesize(items)
    return counter.total


def test_the_number_of_tensor_ops_does_not_grow_with_the_batch():
    """aten ops of one ``synthesize`` call: mixed lengths at batch 4 and 16 cost the same.

    Batch 1 needs no decoder masks (every item fills the width), so it dispatches fewer ops; what
    stays is that constant. (``prosody="batched"``, the default; per item, prosody adds a few
    hundred ops per item: checked too.) Measured 2,063 / 3,093 / 3,093 ops for 1 / 4 / 16 items;
    before the batched forward (per-item source, STFTs, cuts and prosody) 1,528 / 4,207 / 10,243.
    """
    engine = KokoroEngine.tiny(0, voices=["a", "b"], device="cpu", num_threads=1, max_batch_size=16, prosody="batched")
    one, four, sixteen = (count_synthesize_ops(engine, n) for n in (1, 4, 16))
    assert sixteen == four
    assert one < four < one + 1_600
    engine.per_item_prosody = True
    assert count_synthesize_ops(engine, 4) > four + 3 * 100


def test_the_generator_gives_each_item_its_own_voiced_source(voiced):
    """Voiced F0, identical inputs: the per-item sine source, STFT and iSTFT see no neighbour."""
    gen = voiced.decoder.generator
    channels = gen.ups[0].in_channels
    g = torch.Generator().manual_seed(3)
    halves = [24, 60, 41]
    x = torch.randn(3, channels, max(halves), generator=g)
    f0 = 150 + 30 * torch.randn(3, max(halves), generator=g)
    s = torch.randn(3, 128, generator=g)
    span = B._Span(halves, x.device)
    with torch.inference_mode():
        batched, lengths = B._generator(gen, x, B._Style(s), f0, span, HashNoise([0, 1, 2]))
        for b, n in enumerate(halves):
            solo_audio, _ = B._generator(
                gen, x[b : b + 1, :, :n], B._Style(s[b : b + 1]), f0[b : b + 1, :n], B._Span([n], x.device),
                HashNoise([b]),
            )
            assert lengths[b] == solo_audio.shape[1] == n * 300
            assert rel_err(batched[b, :n * 300], solo_audio[0]) < 1e-5


def test_the_same_seed_gives_the_same_audio_and_another_seed_different_audio(voiced, voices):
    item = make_item(25, index=5, voices=voices)
    first = run(voiced, [item])[0]
    again = run(voiced, [item])[0]
    other = run(voiced, [{**item, "seed": item["seed"] + 1}])[0]
    assert torch.equal(first.audio, again.audio)
    assert torch.equal(first.durations, other.durations)
    assert rel_err(other.audio, first.audio) > 1e-3


def test_speed_divides_each_items_durations_on_its_own(voiced, voices):
    item = make_item(30, index=6, voices=voices)
    normal, fast = run(voiced, [item, {**item, "speed": 2.0}])
    assert int(fast.durations.sum()) < int(normal.durations.sum())
    assert fast.audio.shape[0] == int(fast.durations.sum()) * 600


def test_malformed_input_is_refused(voiced, voices):
    item = make_item(5, index=7, voices=voices)
    with pytest.raises(ValueError):
        batched_forward(voiced, [item["ids"]], item["ref_s"], [1.0, 1.0], [torch.Generator()])
    with pytest.raises(ValueError):
        batched_forward(voiced, [item["ids"]], item["ref_s"], [1.0], GeneratorNoise([torch.Generator()] * 2))
    with pytest.raises(ValueError):
        run(voiced, [{**item, "speed": 0.0}])
    voiced.train()
    try:
        with pytest.raises(ValueError):
            run(voiced, [item])
    finally:
        voiced.eval()


def test_the_test_engine_speaks_a_sentence_the_same_alone_and_in_company():
    """A regression found when the Ray test compared sessions with their solo runs: the source's
    ``l_linear`` as a matmul rounded differently in a batch (~3e-8), the source STFT's phase of a
    near-negative-real bin then flipped by 2 pi, and this item's audio differed by 1.7e-2."""
    import numpy as np

    from gateway.engines import create_engine
    from tests.utils import test_config

    engine = create_engine(test_config(**{"engine.max_batch_size": 8}).engine)
    voice = engine.voices()[0]
    seven = SynthesisItem("sˈɛvən sˈɪlvəɹ swˈɑnz swˈæm sˈIləntli.", voice)
    company = SynthesisItem("ɡˈʊd mˈɔɹnɪŋ, tɹˈævᵊləɹ.", voice)
    alone = engine.synthesize([seven])[0].audio
    for together in (engine.synthesize([seven, company])[0].audio, engine.synthesize([company, seven])[1].audio):
        assert len(together) == len(alone)
        assert np.linalg.norm(together - alone) <= REL_TOL * np.linalg.norm(alone)
