"""``batched_forward`` against one-by-one synthesis and against kokoro's own forward (tiny model).

The tiny random-weight Kokoro has the real architecture at toy widths, so every masking decision of
the batched pass is exercised in seconds. The default mode (prosody per item) must match solo runs
at 1e-4 with voiced speech. With ``batched_prosody=True`` F0 itself differs from a solo run by
float rounding, and the harmonic oscillator, which integrates F0 over the whole item, turns that
into a phase drift whatever the batching code does; that mode is compared on the unvoiced tiny
model, whose source is noise only.
"""

from __future__ import annotations

import pytest
import torch

from gateway.engines import batched as B
from gateway.engines.batched import batched_forward
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


def run(model: torch.nn.Module, items: list[dict], **kwargs) -> list[B.BatchedOutput]:
    return batched_forward(
        model,
        [item["ids"] for item in items],
        torch.cat([item["ref_s"] for item in items]),
        [item["speed"] for item in items],
        [torch.Generator().manual_seed(item["seed"]) for item in items],
        **kwargs,
    )


@pytest.fixture(scope="module")
def items(voices) -> list[dict]:
    speeds = (1.0, 1.3, 0.8, 1.0)
    return [make_item(n, index=i, voices=voices, speed=s) for i, (n, s) in enumerate(zip(MIXED_LENGTHS, speeds))]


@pytest.fixture(scope="module")
def mixed(voiced, items) -> tuple[list[dict], list[B.BatchedOutput]]:
    """The mixed-length items and each one's solo (batch 1) output, voiced model."""
    return items, [run(voiced, [item])[0] for item in items]


def assert_matches_solo(outputs: list[B.BatchedOutput], solos: list[B.BatchedOutput]) -> float:
    worst = 0.0
    for out, solo in zip(outputs, solos, strict=True):
        assert torch.equal(out.durations, solo.durations)
        assert out.audio.shape == solo.audio.shape
        worst = max(worst, rel_err(out.audio, solo.audio))
    assert worst < REL_TOL, worst
    return worst


def test_a_mixed_length_batch_matches_each_item_synthesized_alone(voiced, mixed):
    items, solos = mixed
    outputs = run(voiced, items)
    assert_matches_solo(outputs, solos)
    for item, out in zip(items, outputs):
        assert len(out.durations) == len(item["ids"])
        assert out.audio.shape[0] == int(out.durations.sum()) * 600
    # Audio length follows text length (the tiny model's durations are not degenerate).
    lengths = [out.audio.shape[0] for out in outputs]
    assert lengths[0] < lengths[1] < lengths[2] < lengths[3]


def test_reordering_the_batch_or_changing_its_company_changes_nothing(voiced, mixed):
    items, solos = mixed
    # The 180-token item is covered above; the three shorter ones keep this test quick. Orders:
    # a rotation, swapped neighbours both ways, an item beside a copy of itself, another partner.
    for order in [(2, 0, 1), (0, 1), (1, 0), (1, 1), (0, 2)]:
        outputs = run(voiced, [items[i] for i in order])
        assert_matches_solo(outputs, [solos[i] for i in order])


def test_batched_prosody_matches_solo_where_no_oscillator_integrates_f0(unvoiced, items):
    """``batched_prosody=True``: the masked LSTMs, norms and convs of the prosody predictor."""
    solos = [run(unvoiced, [item])[0] for item in items]
    assert_matches_solo(run(unvoiced, items, batched_prosody=True), solos)
    reordered = [items[i] for i in (2, 0, 1)]
    assert_matches_solo(run(unvoiced, reordered, batched_prosody=True), [solos[i] for i in (2, 0, 1)])


def test_a_batch_of_one_equals_kokoros_forward_with_tokens(voiced, voices):
    # Same noise, not zero noise: the batched pass draws item b's source noise from its own
    # generator with exactly the shapes, memory layout and order in which SineGen draws from the
    # global RNG (initial phases, then additive noise). Seeding the global RNG with the item's seed
    # therefore makes kokoro's draws identical, and the outputs must agree to the last bit.
    for index, n in enumerate((3, 40, 150)):
        item = make_item(n, index=index, voices=voices, speed=(1.0, 1.25, 0.9)[index])
        (out,) = run(voiced, [item])
        torch.manual_seed(item["seed"])
        audio, durations = voiced.forward_with_tokens(item["ids"][None], item["ref_s"], item["speed"])
        assert torch.equal(out.durations, durations)
        assert out.audio.shape == audio.shape
        assert rel_err(out.audio, audio) <= 1e-6


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
        batched = B._generator(gen, x, s, f0, span, [torch.Generator().manual_seed(b) for b in range(3)])
        for b, n in enumerate(halves):
            (solo,) = B._generator(
                gen, x[b : b + 1, :, :n], s[b : b + 1], f0[b : b + 1, :n], B._Span([n], x.device),
                [torch.Generator().manual_seed(b)],
            )
            assert batched[b].shape == solo.shape == (n * 300,)
            assert rel_err(batched[b], solo) < 1e-5


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
        run(voiced, [{**item, "speed": 0.0}])
    voiced.train()
    try:
        with pytest.raises(ValueError):
            run(voiced, [item])
    finally:
        voiced.eval()
