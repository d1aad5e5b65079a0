"""Remove the silence Kokoro puts around every item, before the decoder makes it.

Kokoro speaks each item as a whole utterance: the boundary token before the speech (BOS) is given
~0.30 s, and the end token (EOS) plus trailing punctuation up to ~0.6 s. Between two pieces of one
sentence that makes a ~1 s hole, and the decoder spends its compute generating it. So, for items
that ask for it (``SynthesisItem.trim_start`` / ``trim_end``), the durations of the non-speech
tokens at the edges are clamped *before* the alignment is built (trailing ones to one frame; the
leading ones to the lead-in the decoder needs to render the first phonemes), and after decoding
the edge frames, and the frames at a trimmed edge that stay quiet, are cut from the audio with a
few-ms fade against clicks. Cut frames are taken from their tokens' durations, so ``len(audio) ==
durations.sum() * 600`` still holds and word/phoneme timings computed from them stay exact.

The pause a speaker makes at the cut is not the engine's business: the session adds it
(``gateway.audio_join``), by the punctuation that ends the piece.

Pure functions on one item's tensors: no model, no state.
"""

from __future__ import annotations

from collections.abc import Sequence

from dataclasses import dataclass

import numpy as np
import torch

from gateway.engines.base import SAMPLES_PER_FRAME

__all__ = ["NON_SPEECH", "EdgeSpan", "edge_span", "clamp_edges", "clamp_edges_batch", "trim_edges", "FADE_SAMPLES", "LEAD_LOOKBACK_FRAMES"]

#: Phoneme characters that carry no speech of their own: Kokoro gives them pause durations.
NON_SPEECH = frozenset(" ;:,.!?—–…\"()“”«»'-↓→↗↘")
#: Fade at a trimmed edge: 5 ms at 24 kHz, short enough to keep the onset, long enough against clicks.
FADE_SAMPLES = 120
#: A 25 ms frame this quiet at a trimmed edge is silence the decoder made (its start-up, or the
#: decay of the last phoneme): cut too, all but ``_QUIET_MARGIN_FRAMES`` next to the speech.
QUIET_DBFS = -50.0
_QUIET_MARGIN_FRAMES = 1
#: Before the speech a little more is kept: soft onsets (f, h, th) start under the threshold.
_LEAD_MARGIN_FRAMES = 2
#: The last frames of the leading edge tokens are not cut outright but trimmed like quiet speech:
#: the decoder starts a piece's first consonant there (measured: cutting every lead-in frame turned
#: "Could" into "Good", "fox" into "box", "My" into "I" for Whisper).
LEAD_LOOKBACK_FRAMES = 4


@dataclass(frozen=True, slots=True)
class EdgeSpan:
    """How many tokens of ``[BOS, *phonemes, EOS]`` are non-speech at each trimmed edge (0: keep)."""

    lead: int
    tail: int

    def __bool__(self) -> bool:
        return bool(self.lead or self.tail)


def edge_span(phonemes: str, *, trim_start: bool, trim_end: bool) -> EdgeSpan:
    """The edge tokens to trim for ``phonemes`` (the characters the engine actually speaks).

    The leading span is BOS plus the non-speech characters before the first spoken one, the trailing
    span the non-speech characters after the last spoken one plus EOS. An item with nothing to say
    keeps its tokens (there is no speech to cut them from).
    """
    spoken = [i for i, ch in enumerate(phonemes) if ch not in NON_SPEECH]
    if not spoken:
        return EdgeSpan(0, 0)
    lead = 1 + spoken[0] if trim_start else 0
    tail = 1 + (len(phonemes) - 1 - spoken[-1]) if trim_end else 0
    return EdgeSpan(lead, tail)


#: Frames kept on the leading edge tokens: the decoder needs its lead-in to render the first
#: phonemes (measured with the real weights: with 1-3 frames "the" came out silent; with 8 it is
#: close to the predicted ~12-14 but Whisper still lost onsets), so BOS keeps up to 12 (~its
#: prediction) and only the quiet part is trimmed from the audio.
LEAD_KEEP_FRAMES = 12
#: Frames kept on the trailing edge tokens: one is enough (measured), the rest was silence.
TAIL_KEEP_FRAMES = 1


def clamp_edges(
    durations: torch.Tensor, span: EdgeSpan | None, *, lead_frames: int = LEAD_KEEP_FRAMES, tail_frames: int = TAIL_KEEP_FRAMES
) -> torch.Tensor:
    """``durations`` (one item, ``[BOS, *phonemes, EOS]``) with the edge tokens held short.

    Call it where predicted durations become the alignment, so neither the prosody predictor nor the
    decoder generates the silence. The leading tokens keep the lead-in the decoder needs, the
    trailing ones one frame each; ``trim_edges`` removes what stays quiet afterwards. The last spoken
    phoneme keeps its predicted (utterance-final, often ~0.5 s) duration: held shorter, the decoder
    rendered it too quietly to hear; its silent part is trimmed from the audio instead.
    """
    if not span:
        return durations
    out = durations.clone()
    if span.lead:
        out[: span.lead] = out[: span.lead].clamp(max=lead_frames)
    if span.tail:
        out[-span.tail :] = out[-span.tail :].clamp(max=tail_frames)
    return out


def clamp_edges_batch(
    durations: torch.Tensor,
    lengths: Sequence[int],
    spans: Sequence[EdgeSpan | None],
    *,
    lead_frames: int = LEAD_KEEP_FRAMES,
    tail_frames: int = TAIL_KEEP_FRAMES,
) -> torch.Tensor:
    """``clamp_edges`` over a padded batch ``(B, T)`` (item b's tokens are ``[:lengths[b]]``), in a
    fixed number of tensor ops whatever the batch size (the batched forward keeps its op count flat)."""
    lead = torch.tensor([span.lead if span else 0 for span in spans], device=durations.device)
    tail = torch.tensor([span.tail if span else 0 for span in spans], device=durations.device)
    ends = torch.tensor(list(lengths), device=durations.device)
    position = torch.arange(durations.shape[1], device=durations.device)[None, :]
    in_lead = position < lead[:, None]
    in_tail = (position >= (ends - tail)[:, None]) & (position < ends[:, None])
    out = torch.where(in_lead, durations.clamp(max=lead_frames), durations)
    return torch.where(in_tail, out.clamp(max=tail_frames), out)


def trim_edges(
    audio: np.ndarray,
    durations: np.ndarray,
    span: EdgeSpan | None,
    *,
    fade_samples: int = FADE_SAMPLES,
    lead_lookback: int = LEAD_LOOKBACK_FRAMES,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut the edge tokens' frames from ``audio`` and fade the new edges; returns (audio, durations).

    The cut tokens' durations become 0, so ``len(audio) == durations.sum() * 600`` still holds and
    timings computed from the durations describe the returned audio exactly. Quiet frames (under
    ``QUIET_DBFS``) at a trimmed edge go too, taken from the durations of the tokens they belong to.
    The last ``lead_lookback`` frames of the leading edge tokens are kept where they are not quiet
    (a first consonant's onset; 0: cut the lead-in whole) and counted as the first spoken token's.
    """
    if not span:
        return audio, durations
    durations = np.asarray(durations, dtype=np.int64).copy()
    lead_frames = int(durations[: span.lead].sum())
    # All but the last lookback frames of the lead-in go; those are trimmed only where quiet.
    lead_frames -= min(lead_frames, lead_lookback)
    _take_frames(durations, lead_frames, from_end=False)
    if span.tail:
        durations[len(durations) - span.tail :] = 0
    middle = int(durations.sum())
    quiet = _frame_db(audio[lead_frames * SAMPLES_PER_FRAME : (lead_frames + middle) * SAMPLES_PER_FRAME]) < QUIET_DBFS
    lead_quiet = _run_length(quiet) if span.lead else 0
    tail_quiet = _run_length(quiet[::-1]) if span.tail else 0
    if lead_quiet + tail_quiet >= middle:  # all quiet: keep it as it is
        lead_quiet = tail_quiet = 0
    lead_quiet = max(0, lead_quiet - _LEAD_MARGIN_FRAMES)
    tail_quiet = max(0, tail_quiet - _QUIET_MARGIN_FRAMES)
    _take_frames(durations, lead_quiet, from_end=False)
    if span.lead:
        # What is left of the lead-in is the first phoneme's onset: timings count it as that phoneme.
        durations[span.lead] += durations[: span.lead].sum()
        durations[: span.lead] = 0
    _take_frames(durations, tail_quiet, from_end=True)
    start = (lead_frames + lead_quiet) * SAMPLES_PER_FRAME
    stop = (lead_frames + middle - tail_quiet) * SAMPLES_PER_FRAME
    out = np.array(audio[start:stop], dtype=np.float32, copy=True)
    fade = min(fade_samples, len(out) // 2)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade, endpoint=False, dtype=np.float32)
        if span.lead:
            out[:fade] *= ramp
        if span.tail:
            out[len(out) - fade :] *= ramp[::-1]
    return out, durations


def _frame_db(audio: np.ndarray) -> np.ndarray:
    """RMS level of each whole 600-sample frame, in dBFS."""
    frames = len(audio) // SAMPLES_PER_FRAME
    x = np.asarray(audio[: frames * SAMPLES_PER_FRAME], dtype=np.float64).reshape(frames, SAMPLES_PER_FRAME)
    return 20 * np.log10(np.maximum(np.sqrt(np.mean(x * x, axis=1)), 1e-10))


def _run_length(flags: np.ndarray) -> int:
    """How many leading entries of ``flags`` are True."""
    falses = np.flatnonzero(~flags)
    return int(falses[0]) if len(falses) else len(flags)


def _take_frames(durations: np.ndarray, frames: int, *, from_end: bool) -> None:
    """Remove ``frames`` from the first (or last) tokens' durations, in place."""
    order = range(len(durations) - 1, -1, -1) if from_end else range(len(durations))
    for i in order:
        if frames <= 0:
            return
        take = min(int(durations[i]), frames)
        durations[i] -= take
        frames -= take
