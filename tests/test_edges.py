"""Piece edges: Kokoro's edge silence clamped before decoding, trimmed after, and the pause by punctuation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gateway.audio_join import CutClass, PauseLengths, cut_class, with_pause
from gateway.config import SegmenterConfig, SessionConfig
from gateway.engines.base import SAMPLES_PER_FRAME, SynthesisItem, SynthesisResult
from gateway.engines.edges import (
    LEAD_LOOKBACK_FRAMES,
    EdgeSpan,
    clamp_edges,
    clamp_edges_batch,
    context_window,
    cut_context,
    edge_span,
    trim_edges,
)
from gateway.session import Session
from gateway.text.g2p import WordSpan
from tests.test_kokoro_engine import engine  # noqa: F401 - the tiny-engine fixture

PIECE = "ðə kwˈɪk bɹˈaʊn fˈɑks,"


def test_edge_span_counts_boundary_and_pause_tokens_at_the_trimmed_edges() -> None:
    assert edge_span(PIECE, trim_start=True, trim_end=True) == EdgeSpan(lead=1, tail=2)  # BOS | "," EOS
    assert edge_span(" “ab”. ", trim_start=True, trim_end=True) == EdgeSpan(lead=3, tail=4)
    assert edge_span(PIECE, trim_start=False, trim_end=True) == EdgeSpan(0, 2)
    assert not edge_span(PIECE, trim_start=False, trim_end=False)
    assert not edge_span("...", trim_start=True, trim_end=True)  # nothing spoken: nothing to cut from


def test_clamp_holds_the_edge_tokens_to_the_lead_in_and_one_frame() -> None:
    durations = torch.tensor([12, 3, 4, 22, 9, 14])
    assert clamp_edges(durations, EdgeSpan(1, 2)).tolist() == [12, 3, 4, 22, 1, 1]
    assert clamp_edges(torch.tensor([30, 3, 4, 22, 9, 14]), EdgeSpan(1, 2)).tolist() == [12, 3, 4, 22, 1, 1]
    assert clamp_edges(durations, EdgeSpan(1, 2), lead_frames=1).tolist() == [1, 3, 4, 22, 1, 1]
    assert clamp_edges(durations, EdgeSpan(0, 1)).tolist() == [12, 3, 4, 22, 9, 1]
    assert clamp_edges(durations, None).tolist() == durations.tolist()


def test_trim_cuts_the_edge_frames_fades_and_keeps_durations_describing_the_audio() -> None:
    durations = np.array([1, 3, 4, 1, 1])
    audio = np.ones(int(durations.sum()) * SAMPLES_PER_FRAME, dtype=np.float32)
    out, kept = trim_edges(audio, durations, EdgeSpan(1, 2), lead_lookback=0)
    assert kept.tolist() == [0, 3, 4, 0, 0]
    assert len(out) == kept.sum() * SAMPLES_PER_FRAME
    assert out[0] == 0.0 and out[-1] < 0.01 and out[len(out) // 2] == 1.0  # faded in and out


def test_trim_also_cuts_quiet_frames_at_the_edges_from_their_tokens_durations() -> None:
    durations = np.array([1, 4, 3, 4, 1])
    frame = np.ones(SAMPLES_PER_FRAME, dtype=np.float32)
    # BOS | 3 quiet + 1 loud | 3 loud | 1 loud + 3 quiet | EOS
    levels = [0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    audio = np.concatenate([frame * level * 0.5 for level in levels])
    out, kept = trim_edges(audio, durations, EdgeSpan(1, 1))
    # Two quiet frames are kept before the speech, one after.
    assert kept.tolist() == [0, 3, 3, 2, 0]
    assert len(out) == kept.sum() * SAMPLES_PER_FRAME
    assert np.abs(out[2 * SAMPLES_PER_FRAME : 7 * SAMPLES_PER_FRAME]).min() > 0.0


def test_the_onset_the_decoder_starts_inside_the_lead_in_is_kept() -> None:
    durations = np.array([8, 4, 3, 1])
    frame = np.ones(SAMPLES_PER_FRAME, dtype=np.float32)
    # BOS: 5 quiet frames, 1 quiet, 2 frames of onset | 4 loud | 3 loud | EOS
    levels = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    audio = np.concatenate([frame * level * 0.5 for level in levels])
    out, kept = trim_edges(audio, durations, EdgeSpan(1, 1), lead_lookback=4)
    # The last 4 BOS frames are looked at: the 2 with the onset stay, and so do the 2 quiet ones
    # before them (the margin kept before speech).
    assert kept.tolist() == [0, 8, 3, 0]  # counted as the first phoneme's
    assert len(out) == kept.sum() * SAMPLES_PER_FRAME
    assert out[2 * SAMPLES_PER_FRAME : 4 * SAMPLES_PER_FRAME].min() == 0.5
    # Without the look-back the onset is cut with the rest of the lead-in.
    _, cut = trim_edges(audio, durations, EdgeSpan(1, 1), lead_lookback=0)
    assert cut.tolist() == [0, 4, 3, 0]  # (the onset is lost)


def test_the_engine_skips_edge_silence_for_items_that_continue_speech(engine) -> None:
    voice = engine.voices()[0]
    whole, trimmed = engine.synthesize(
        [SynthesisItem(PIECE, voice, seed=1), SynthesisItem(PIECE, voice, seed=1, trim_start=True, trim_end=True)]
    )
    assert trimmed.durations[0] == 0 and trimmed.durations[-1] == 0 and trimmed.durations[-2] == 0
    assert whole.durations[0] > 0 and whole.durations[-1] > 0
    # Only the edges change: no token gets longer (but the first spoken one, which takes the onset
    # kept from the lead-in, at most LEAD_LOOKBACK_FRAMES), the inner ones keep their duration.
    first = 1
    assert trimmed.durations[first] <= whole.durations[first] + LEAD_LOOKBACK_FRAMES
    assert (np.delete(trimmed.durations, first) <= np.delete(whole.durations, first)).all()
    assert trimmed.durations[4:-5].tolist() == whole.durations[4:-5].tolist()
    assert len(trimmed.audio) == trimmed.durations.sum() * SAMPLES_PER_FRAME < len(whole.audio)
    assert trimmed.extra["edges_trimmed"] == (True, True) and "edges_trimmed" not in whole.extra


@pytest.mark.parametrize(
    ("text", "cut"),
    [
        ("fˈɑks", CutClass.PHRASE),
        ("fˈɑks,", CutClass.CLAUSE),
        ("fˈɑks—", CutClass.CLAUSE),
        ("fˈɑks.", CutClass.SENTENCE),
        ("fˈɑks?”", CutClass.SENTENCE),
        ("今日は、", CutClass.CLAUSE),
        ("行きます。", CutClass.SENTENCE),
    ],
)
def test_the_pause_class_comes_from_the_punctuation_ending_the_piece(text: str, cut: CutClass) -> None:
    assert cut_class(text) is cut


def _result(phonemes: str, *, trimmed: bool) -> SynthesisResult:
    durations = np.array([0, *([2] * len(phonemes)), 0], dtype=np.int64)
    audio = np.full(int(durations.sum()) * SAMPLES_PER_FRAME, 0.5, dtype=np.float32)
    extra: dict[str, object] = {"edges_trimmed": (True, True)} if trimmed else {}
    return SynthesisResult(audio=audio, durations=durations, phonemes=phonemes, extra=extra)


def test_a_trimmed_piece_gets_the_pause_of_its_cut_on_its_end_token() -> None:
    pauses = PauseLengths(phrase_ms=0, clause_ms=200, sentence_ms=500)
    assert with_pause(_result("abc", trimmed=True), pauses).audio.shape == _result("abc", trimmed=True).audio.shape
    for text, frames in (("abc,", 8), ("abc.", 20)):
        joined = with_pause(_result(text, trimmed=True), pauses)
        assert joined.durations[-1] == frames and joined.extra["pause_frames"] == frames
        assert len(joined.audio) == joined.durations.sum() * SAMPLES_PER_FRAME
        assert not joined.audio[-frames * SAMPLES_PER_FRAME :].any()
    untouched = _result("abc.", trimmed=False)
    assert with_pause(untouched, pauses) is untouched  # the engine kept its own silence


def test_timings_offsets_and_done_totals_stay_exact_with_trimmed_pieces_and_pauses() -> None:
    import orjson

    from gateway.protocol import decode_audio_frame

    seg = dataclasses.replace(SegmenterConfig(), pause_clause_ms=200, pause_sentence_ms=500, first_audio_target_ms=0)
    s = Session("s", config=SessionConfig(max_messages_per_s=0, max_chars_per_s=0), segmenter_config=seg, voices=["v"], langs=["en"], now=0)
    s.receive_text(orjson.dumps({"type": "session.update", "alignment": True}), 0)
    s.receive_text(orjson.dumps({"type": "text", "context_id": "c", "text": "Hello there, how are you doing today? Fine."}), 0)
    s.receive_text(orjson.dumps({"type": "flush", "context_id": "c", "final": True}), 0)
    requests = s.pieces_to_schedule()
    assert [r.text for r in requests] == ["Hello there,", "how are you doing today?", "Fine."]
    results = [_result(p, trimmed=True) for p in ("ab,", "cd?", "ef.")]
    for r, res in zip(requests, results):
        s.set_parts(r, 1, 0)
        s.receive_audio(r, 0, res, 0, words=[WordSpan("w", 0, 2)])
    out = []
    while (item := s.next_outgoing(0)) is not None:
        out.append(decode_audio_frame(item) if isinstance(item, bytes) else orjson.loads(item))
    aligned = [o for o in out if isinstance(o, dict) and o["type"] == "alignment"]
    # Piece 1: 3 tokens x 2 frames (150 ms) + 8 pause frames (200 ms); piece 2 starts after both.
    assert aligned[0]["words"][0] == {"word": "w", "start_ms": 0.0, "end_ms": 100.0}
    assert aligned[1]["words"][0]["start_ms"] == 350.0
    assert aligned[2]["words"][0]["start_ms"] == 350.0 + 150.0 + 500.0
    frames = [o for o in out if not isinstance(o, dict)]
    offset = 0
    for header, payload in frames:
        assert header.sample_offset == offset
        offset += len(payload) // 2
    done = next(o for o in out if isinstance(o, dict) and o["type"] == "context.done")
    assert done["audio_ms"] == pytest.approx(offset * 1000 / 24_000) == 3 * 150.0 + 200.0 + 500.0 + 500.0


async def test_streamed_pieces_join_without_a_hole_and_with_the_pause_of_each_cut() -> None:
    """Through a real server (tiny engine): a phrase cut joins with no silence, a comma with the
    clause pause, a sentence end with the sentence pause; timings say so exactly."""
    from tests.utils import done_contexts, run_client, run_server

    overrides = {
        "session.max_buffer_ms": 10_000,
        "session.max_messages_per_s": 0,
        "session.max_chars_per_s": 0,
        "segmenter.first_audio_target_ms": 0,  # a fixed first piece, whatever the engine's speed
        "segmenter.first_max_chars": 20,
        "segmenter.pause_clause_ms": 100,
        "segmenter.pause_sentence_ms": 175,
    }
    text = "The quick brown fox jumped over the lazy dog, and then it ran away. It was fast."

    async def script(ws) -> None:
        await ws.send(orjson_dumps({"type": "session.update", "alignment": True}))
        for word in text.split(" "):
            await ws.send(orjson_dumps({"type": "text", "context_id": "c", "text": word + " "}))
        await ws.send(orjson_dumps({"type": "flush", "context_id": "c", "final": True}))

    async with run_server(overrides) as gw:
        run = await run_client(f"ws://127.0.0.1:{gw.port}/v1/stream", script, until=done_contexts(1), timeout=120)
    pieces = run.of_type("alignment")
    assert [" ".join(w["word"] for w in p["words"]) for p in pieces] == [
        "The quick brown fox",
        "jumped over the lazy dog",
        "and then it ran away",
        "It was fast",
    ]
    gaps = [b["phonemes"][0]["start_ms"] - a["phonemes"][-1]["end_ms"] for a, b in zip(pieces, pieces[1:])]
    # The comma's piece was read with the words after it (seam context): its pause is the comma's
    # own predicted duration, inside its timings, and none is added; the sentence end gets one.
    assert gaps == [0.0, 0.0, 175.0]
    assert pieces[1]["phonemes"][-1]["phoneme"] == ","
    assert pieces[1]["phonemes"][-1]["end_ms"] > pieces[1]["phonemes"][-1]["start_ms"]
    assert pieces[0]["phonemes"][0]["start_ms"] == 0.0  # no lead-in silence before the first word
    done = run.of_type("context.done")[0]
    assert done["audio_ms"] == pytest.approx(pieces[-1]["phonemes"][-1]["end_ms"] + 175.0, abs=0.1)


def orjson_dumps(message: dict) -> str:
    import orjson

    return orjson.dumps(message).decode()


# -- context across a seam ----------------------------------------------------------------------


def test_context_tokens_keep_only_the_frames_next_to_the_piece_and_the_boundary_none() -> None:
    # [BOS, l1, l2, l3, p1, p2, r1, r2, EOS]: 3 left and 2 right context tokens around a 2-token piece.
    durations = torch.tensor([30, 5, 6, 7, 3, 4, 6, 9, 14])
    span = EdgeSpan(0, 0, left=3, right=2)
    assert clamp_edges(durations, span, context_frames=8).tolist() == [0, 0, 1, 7, 3, 4, 6, 2, 0]
    full = clamp_edges_batch(durations[None], [9], [span], context_frames=None)
    assert full[0].tolist() == [0, 5, 6, 7, 3, 4, 6, 9, 0]  # the prosody predictor's: context whole
    window, dropped = context_window(full, [9], [span], context_frames=8)
    assert window[0].tolist() == [0, 0, 1, 7, 3, 4, 6, 2, 0] and dropped.tolist() == [5 + 5]


def test_cut_context_leaves_exactly_the_pieces_frames_and_durations() -> None:
    durations = np.array([0, 0, 1, 7, 3, 4, 6, 2, 0])
    audio = np.repeat(np.arange(len(durations), dtype=np.float32) + 1, durations * SAMPLES_PER_FRAME)
    out, kept = cut_context(audio, durations, EdgeSpan(0, 0, left=3, right=2))
    assert kept.tolist() == [0, 3, 4, 0]  # [BOS, p1, p2, EOS]
    assert len(out) == kept.sum() * SAMPLES_PER_FRAME
    assert set(np.unique(out[200:-200])) == {5.0, 6.0}  # only the piece's own frames (fades aside)
    # The space that joins the left context to the piece (token 3 here) stays, as the piece's onset.
    out, kept = cut_context(audio, durations, EdgeSpan(0, 0, left=3, right=2, joint=1))
    assert kept.tolist() == [0, 7 + 3, 4, 0] and len(out) == kept.sum() * SAMPLES_PER_FRAME
    assert set(np.unique(out[200:-200])) == {4.0, 5.0, 6.0}


def test_an_item_read_with_context_speaks_only_itself(engine) -> None:  # noqa: F811
    """The tiny engine: context changes the piece (the text side reads it) but gives it no audio,
    no duration and no timings; batched with company it equals its solo run."""
    voice = engine.voices()[0]
    piece = SynthesisItem("bɹˈaʊn fˈɑks", voice, seed=1, trim_start=True, trim_end=True)
    read = dataclasses.replace(piece, left_context="ðə kwˈɪk ", right_context=" ʤˈʌmpt ˈOvəɹ")
    alone, with_context = engine.synthesize([piece, read])
    assert with_context.phonemes == piece.phonemes
    assert len(with_context.durations) == len(piece.phonemes) + 2
    assert len(with_context.audio) == with_context.durations.sum() * SAMPLES_PER_FRAME
    assert with_context.durations[0] == with_context.durations[-1] == 0  # no lead-in, no tail
    assert with_context.extra["context_tokens"] == (len("ðə kwˈɪk "), len(" ʤˈʌmpt ˈOvəɹ"))
    assert "edges_trimmed" not in with_context.extra  # both sides continue: no pause is added
    same = np.array_equal(alone.durations, with_context.durations) and np.allclose(alone.audio, with_context.audio)
    assert not same, "the context was not read"
    company = SynthesisItem("sˈɛvən sˈɪlvəɹ swˈɑnz", voice, seed=2)
    for batch, at in (([read, company], 0), ([company, read], 1)):
        together = engine.synthesize(batch)[at]
        assert np.array_equal(together.durations, with_context.durations)
        assert np.linalg.norm(together.audio - with_context.audio) <= 1e-4 * np.linalg.norm(with_context.audio)


def test_context_in_the_whole_batch_prosody_pass_does_not_depend_on_company() -> None:
    """``prosody="batched"`` (the CUDA default): the context window is cut per item in one gather.

    With the batch-invariant prosody kernels (``gateway.engines.prosody``) the item reads the same
    alone and in company: equal durations, audio within float noise (measured 1.3e-6 max abs)."""
    from gateway.engines.kokoro import KokoroEngine

    eng = KokoroEngine.tiny(seed=0, device="cpu", num_threads=1, max_batch_size=4, prosody="batched")
    voice = eng.voices()[0]
    read = SynthesisItem("bɹˈaʊn fˈɑks", voice, seed=1, trim_start=True, trim_end=True, left_context="ðə kwˈɪk ", right_context=" ʤˈʌmpt")
    company = SynthesisItem("sˈɛvən sˈɪlvəɹ swˈɑnz swˈæm", voice, seed=2, trim_start=True, left_context="ɡˈʊd ")
    alone = eng.synthesize([read])[0]
    assert len(alone.audio) == alone.durations.sum() * SAMPLES_PER_FRAME
    for batch, at in (([read, company], 0), ([company, read], 1)):
        together = eng.synthesize(batch)[at]
        assert np.array_equal(together.durations, alone.durations)
        assert np.abs(together.audio - alone.audio).max() <= 1e-4


def test_a_one_sided_context_keeps_the_other_edges_trim_and_pause(engine) -> None:  # noqa: F811
    voice = engine.voices()[0]
    last = SynthesisItem("ðə lˈeɪzi dˈɔɡ.", voice, seed=3, trim_start=True, trim_end=True, left_context="ˈOvəɹ ")
    result = engine.synthesize([last])[0]
    assert result.extra["edges_trimmed"] == (False, True)  # the sentence end still gets its pause
    assert result.durations[0] == 0 and result.durations[-1] == 0
    assert len(result.audio) == result.durations.sum() * SAMPLES_PER_FRAME
