"""A first piece's audio in two parts: the start (a "head") goes out before the rest is decoded.

What must hold: with fixed norms a window of an item's frames decodes as the whole item does away
from its cut edges (``decode_windows``); the head is exactly the start of the piece's finished audio
(trimmed edges, fades and all: ``trimmed_head``), so the client hears the same samples, seq numbers,
offsets and ``context.done`` totals as without heads; heads are made only where they can be told
and pay (``KokoroEngine._head_frames``); the session sends a head only for the part that speaks next,
once. Timings are the benchmark's business (``voxgate bench quality``), never asserted here.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import torch

from gateway.engines import batched as B
from gateway.engines.base import Head, SynthesisItem, SynthesisResult
from gateway.engines.edges import EdgeSpan, cut_context, trim_edges, trimmed_head
from gateway.engines.kokoro import KokoroEngine
from gateway.engines.source_noise import HashNoise
from gateway.engines.tiny import make_tiny_kmodel, make_tiny_voices
from gateway.engines.voice_norms import FixedNorms, NormRecorder
from tests.test_batched_forward import one_thread  # noqa: F401 - an autouse fixture
from tests.test_server import SERVER, assert_gap_free, http_get, metric, msg
from tests.test_session import drain, frames, make_session, messages, send
from gateway.text.g2p_split import WordSpan
from tests.utils import done_contexts, run_client, run_server

PHONEMES = "ðə kwˈɪk bɹˈWn fˈɑks ʤˈʌmpt ˈOvəɹ ðə lˈAzi dˈɔɡ"
# A decoder cost that makes a head pay for the tiny model's items: 10 ms per 25 ms frame.
SLOW_ENOUGH = (0.0, 0.01)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return make_tiny_kmodel(0, voiced=True)


def prepared_batch(model: torch.nn.Module, lengths: list[int]) -> tuple[B.Prepared, FixedNorms]:
    voices = make_tiny_voices(["a"])
    ids = []
    for n, seed in zip(lengths, range(len(lengths))):
        row = torch.randint(1, 178, (n + 2,), generator=torch.Generator().manual_seed(seed))
        row[0] = row[-1] = 0
        ids.append(row)
    ref_s = torch.cat([voices["a"][n - 1] for n in lengths])
    recorder = NormRecorder()
    B.batched_forward(model, ids, ref_s, [1.0] * len(ids), HashNoise(list(range(len(ids)))), norms=recorder)
    stats = recorder.result()
    prepared = B.prepare_batch(model, ids, ref_s, [1.0] * len(ids), HashNoise(list(range(len(ids)))))
    return prepared, FixedNorms([stats] * len(ids))


def test_windows_of_whole_items_decode_as_the_batch_does(model) -> None:
    prepared, norms = prepared_batch(model, [14, 40])
    whole = B.decode_batch(model, prepared, norms=norms)
    windows = B.decode_windows(model, prepared, [B.Window(b, 0, n) for b, n in enumerate(prepared.num_frames)], norms)
    for b, audio in enumerate(windows):
        expected = whole.audio[b, : whole.num_samples[b]]
        assert audio.shape == expected.shape
        assert torch.allclose(audio, expected, atol=1e-5 * float(expected.abs().max()))


def test_a_window_decodes_as_its_item_away_from_its_cut_edges(model) -> None:
    prepared, norms = prepared_batch(model, [60])
    total = prepared.num_frames[0]
    reach = B.WINDOW_REACH_FRAMES
    start, stop = 10, total - 10
    assert stop - start > 2 * reach, "the item must be longer than the reach on both sides"
    whole = B.decode_batch(model, prepared, norms=norms).audio[0]
    window = B.decode_windows(model, prepared, [B.Window(0, start, stop)], norms)[0]
    assert len(window) == (stop - start) * 600
    inner = slice(reach * 600, (stop - start - reach) * 600)
    expected = whole[start * 600 : stop * 600][inner]
    assert torch.allclose(window[inner], expected, atol=1e-4 * float(whole.abs().max()))
    with pytest.raises(ValueError):
        B.decode_windows(model, prepared, [B.Window(0, 5, total + 1)], norms)


def speech(frames: int, quiet_frames: int, seed: int = 0) -> np.ndarray:
    """Audio of ``frames`` 600-sample frames: ``quiet_frames`` of near-silence, then loud noise."""
    rng = np.random.default_rng(seed)
    audio = (0.3 * rng.standard_normal(frames * 600)).astype(np.float32)
    audio[: quiet_frames * 600] *= 1e-4
    return audio


@pytest.mark.parametrize("quiet", [0, 6, 11])
def test_the_head_is_exactly_the_start_of_the_trimmed_audio(quiet) -> None:
    # [BOS, 10 phonemes, 3 right-context tokens, EOS]: lead-in 12 frames on BOS (clamped), context 8.
    durations = np.array([12, 3, 4, 2, 5, 3, 4, 2, 3, 5, 4, 3, 3, 2, 0])
    span = EdgeSpan(lead=1, tail=0, left=0, right=3)
    audio = speech(int(durations.sum()), quiet)
    finished, final_durations = trim_edges(*cut_context(audio, durations, span), span)
    heads = [trimmed_head(audio[:n], durations, span) for n in range(600, len(audio) + 1, 300)]
    told = [h for h in heads if h is not None]
    assert told, "some prefix must tell the start"
    for head, head_durations in told:
        assert len(head) <= len(finished) - 120  # never into the fade before the right context
        assert np.array_equal(finished[: len(head)], head)
        assert np.array_equal(final_durations, head_durations)


def test_no_head_where_the_prefix_cannot_tell() -> None:
    durations = np.array([12, 3, 4, 2, 5, 3, 4, 2, 3, 5, 4, 3, 3, 2, 0])
    audio = speech(int(durations.sum()), 20)
    right = EdgeSpan(lead=1, tail=0, left=0, right=3)
    assert trimmed_head(audio[: 18 * 600], durations, right) is None  # still quiet where it ends
    assert trimmed_head(audio, durations, EdgeSpan(lead=0, tail=0, left=3, right=3)) is None
    assert trimmed_head(audio, durations, EdgeSpan(lead=1, tail=1)) is None


def head_item(phonemes: str = PHONEMES, **fields: Any) -> SynthesisItem:
    fields.setdefault("stream_head", True)
    return SynthesisItem(phonemes[:20], "af_heart", trim_start=True, trim_end=True, right_context=phonemes[20:], **fields)


def test_the_engine_sends_a_head_its_result_starts_with_and_the_rest_as_decoded_whole() -> None:
    engine = KokoroEngine.tiny(seed=0, num_threads=1, max_batch_size=4, decoder_cost=SLOW_ENOUGH, stream_heads=True)
    other = SynthesisItem("hˈɛloʊ ðɛɹ, maɪ fɹˈɛnd", "af_heart", trim_start=True, trim_end=True)
    heads: list[tuple[int, Head]] = []
    results = engine.synthesize_with_heads([other, head_item()], lambda b, head: heads.append((b, head)))
    assert [b for b, _ in heads] == [1]
    head = heads[0][1]
    assert 0 < len(head.audio) < len(results[1].audio) and results[1].extra["head_samples"] == len(head.audio)
    assert np.array_equal(results[1].audio[: len(head.audio)], head.audio)
    assert np.array_equal(results[1].durations, head.durations) and results[1].phonemes == head.phonemes
    # Each result as the item's own whole decode (the plain path), within float rounding.
    for item, result in zip([other, head_item()], results):
        alone = engine.synthesize([item])[0]
        assert np.array_equal(alone.durations, result.durations)
        np.testing.assert_allclose(result.audio, alone.audio, atol=1e-5 * float(np.abs(alone.audio).max()))
    assert "head_samples" not in results[0].extra


@pytest.mark.parametrize(
    "engine_args, item",
    [
        ({"decoder_cost": None}, head_item()),  # cost never measured (no warmup)
        ({"decoder_cost": (0.0, 0.1)}, head_item()),  # 4x slower than real time: the rest would stall
        ({"decoder_cost": (0.0, 1e-5)}, head_item()),  # so fast that a head saves nothing
        ({"decoder_cost": SLOW_ENOUGH, "stream_heads": False}, head_item()),
        ({"decoder_cost": SLOW_ENOUGH, "decoder_norm": "instance"}, head_item()),  # a window needs fixed norms
        ({"decoder_cost": SLOW_ENOUGH}, head_item(stream_head=False)),
        ({"decoder_cost": SLOW_ENOUGH}, SynthesisItem(PHONEMES, "af_heart", trim_start=True, trim_end=True, stream_head=True)),
    ],
)
def test_no_head_where_it_would_not_pay_or_was_not_asked_for(engine_args, item) -> None:
    engine = KokoroEngine.tiny(seed=0, num_threads=1, **{"stream_heads": True, **engine_args})
    heads: list[int] = []
    result = engine.synthesize_with_heads([item], lambda b, head: heads.append(b))[0]
    assert heads == [] and "head_samples" not in result.extra


def session_with_pieces(text: str, *, alignment: bool = False) -> tuple[Any, list[Any]]:
    s = make_session()
    drain(s)
    if alignment:
        send(s, type="session.update", alignment=True)
        drain(s)
    send(s, type="text", context_id="c", text=text)
    send(s, type="flush", context_id="c", final=True)
    requests = s.pieces_to_schedule()
    for request in requests:
        s.set_parts(request, 1, 0.0)
    return s, requests


def result_of(samples: int, seed: int) -> SynthesisResult:
    audio = speech(samples // 600, 0, seed)[:samples]
    return SynthesisResult(audio=audio, durations=np.array([1, samples // 600 - 3, 2, 0]), phonemes="xy")


def head_of(result: SynthesisResult, samples: int) -> Head:
    return Head(audio=result.audio[:samples], durations=result.durations, phonemes=result.phonemes)


WORDS = [WordSpan("x", 0, 1), WordSpan("y", 1, 2)]


@pytest.mark.parametrize("alignment", [False, True])
def test_the_session_sends_a_head_at_once_and_then_only_the_rest(alignment) -> None:
    text = "Hello there, my friend. How are you doing today?"
    (s, requests), (plain_session, plain_requests) = (session_with_pieces(text, alignment=alignment) for _ in range(2))
    results = [result_of(600 * (20 + 5 * i), i) for i in range(len(requests))]
    assert s.receive_head(requests[0], 0, head_of(results[0], 4800), 0.0, words=WORDS)
    early = drain(s)
    assert sum(len(p) // 2 for _, p in frames(early)) == 4800  # the head's audio left before its result came
    assert len(messages(early, "alignment")) == int(alignment)  # with its timings, before its audio
    assert not s.receive_head(requests[0], 0, head_of(results[0], 4800), 0.0)  # once
    assert len(requests) >= 2 and not s.receive_head(requests[1], 0, head_of(results[1], 600), 0.0)  # not next
    for request, result in zip(requests, results):
        s.receive_audio(request, 0, result, 0.0, words=WORDS)
    out = early + drain(s)
    for request, result in zip(plain_requests, results):
        plain_session.receive_audio(request, 0, result, 0.0, words=WORDS)
    plain = drain(plain_session)
    # The same messages and frames, in the same order (the head's frames are the result's first).
    assert [o if isinstance(o, dict) else (o[0].seq, o[0].sample_offset, o[1]) for o in out] == [
        o if isinstance(o, dict) else (o[0].seq, o[0].sample_offset, o[1]) for o in plain
    ]


def tiny_factory(**kwargs: Any) -> Any:
    return lambda: KokoroEngine.tiny(seed=0, num_threads=1, max_batch_size=4, preferred_batch_size=4, **kwargs)


async def test_through_the_server_a_first_piece_streams_its_head_and_sounds_the_same() -> None:
    text = "The quick brown fox jumped over the lazy dog near the old stone bridge."

    async def script(ws: Any) -> None:
        await ws.send(msg(type="session.update", alignment=True))
        for word in text.split(" "):
            await ws.send(msg(type="text", context_id="c", text=word + " "))
        await ws.send(msg(type="flush", context_id="c", final=True))

    runs = {}
    for heads, factory in (("on", tiny_factory(decoder_cost=SLOW_ENOUGH, stream_heads=True)), ("off", tiny_factory(decoder_cost=SLOW_ENOUGH))):
        async with run_server(SERVER, engine_factory=factory) as gw:
            runs[heads] = await run_client(f"ws://127.0.0.1:{gw.port}/v1/stream", script, until=done_contexts(1), timeout=120)
            sent = metric((await asyncio.to_thread(http_get, gw.port, "/metrics"))[1].decode(), "voxgate_piece_heads_total")
        assert sent == (1.0 if heads == "on" else 0.0)
    on, off = runs["on"], runs["off"]
    assert_gap_free(on)
    a, b = on.audio().astype(np.int32), off.audio().astype(np.int32)
    assert len(a) == len(b) and np.abs(a - b).max() <= 2  # int16 rounding of ~1e-7 differences
    assert on.of_type("context.done")[0]["audio_ms"] == off.of_type("context.done")[0]["audio_ms"] == pytest.approx(len(a) / 24)
    assert on.of_type("alignment") == off.of_type("alignment") and on.of_type("alignment")
