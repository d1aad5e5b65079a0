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

Context across a seam (``SynthesisItem.left_context`` / ``right_context``). A piece spoken alone is
spoken as an utterance of its own: ALBERT, the text encoder and the duration predictor see only it,
so its first words get an utterance's onset and its last ones the lengthening and falling pitch of
an utterance end ("When the rain" alone came out as "One way" for Whisper). So an item may carry
the phonemes of its neighbours in the same sentence, token layout ``[BOS, *left, *piece, *right,
EOS]``: the text side reads them all, so the piece gets mid-sentence durations and prosody. On a
side with context the boundary token gets 0 frames and the context tokens only the
``CONTEXT_KEEP_FRAMES`` next to the piece (the decoder is not causal: it needs frames on both sides
of a phoneme to render it; with none after it, a piece's last, now mid-sentence short, phonemes came
out too quiet to hear), in the same masked op as the edges. After decoding exactly those frames are
cut (``cut_context``), with the fade: the audio and durations are the piece's alone, the decoder
spends a few frames on the neighbours instead of ~0.3 s of lead-in silence and an utterance-final
lengthening, and both sides of a seam are rendered as the same continuous speech. The piece's own
edge tokens on that side keep what the model predicts mid-sentence (a comma's pause is Kokoro's
own, so no pause is added there, ``gateway.audio_join``).

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

__all__ = [
    "NON_SPEECH",
    "EdgeSpan",
    "edge_span",
    "clamp_edges",
    "clamp_edges_batch",
    "context_window",
    "without_context",
    "cut_context",
    "trim_edges",
    "trimmed_head",
    "FADE_SAMPLES",
    "LEAD_LOOKBACK_FRAMES",
]

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
    """How many tokens of ``[BOS, *phonemes, EOS]`` are non-speech at each trimmed edge (0: keep),
    and how many context tokens sit between BOS and the phonemes (``left``) and between the phonemes
    and EOS (``right``) in what the model reads; those get 0 frames."""

    lead: int
    tail: int
    left: int = 0
    right: int = 0
    #: The last tokens of the left context that are the spaces before the phonemes: their frames
    #: stay with the piece (see ``cut_context``).
    joint: int = 0

    def __bool__(self) -> bool:
        return bool(self.lead or self.tail or self.left or self.right)


def edge_span(phonemes: str, *, trim_start: bool, trim_end: bool, left: int = 0, right: int = 0) -> EdgeSpan:
    """The edge tokens to trim for ``phonemes`` (the characters the engine actually speaks), with
    ``left`` / ``right`` context tokens around them.

    The leading span is BOS plus the non-speech characters before the first spoken one, the trailing
    span the non-speech characters after the last spoken one plus EOS. A side with context is not
    trimmed (its frames are cut exactly, ``cut_context``). An item with nothing to say keeps its
    tokens (there is no speech to cut them from); its context is cut all the same.
    """
    spoken = [i for i, ch in enumerate(phonemes) if ch not in NON_SPEECH]
    if not spoken:
        return EdgeSpan(0, 0, left, right)
    lead = 1 + spoken[0] if trim_start and not left else 0
    tail = 1 + (len(phonemes) - 1 - spoken[-1]) if trim_end and not right else 0
    return EdgeSpan(lead, tail, left, right)


#: Frames kept on the leading edge tokens: the decoder needs its lead-in to render the first
#: phonemes (measured with the real weights: with 1-3 frames "the" came out silent; with 8 it is
#: close to the predicted ~12-14 but Whisper still lost onsets), so BOS keeps up to 12 (~its
#: prediction) and only the quiet part is trimmed from the audio.
LEAD_KEEP_FRAMES = 12
#: Frames kept on the trailing edge tokens: one is enough (measured), the rest was silence.
TAIL_KEEP_FRAMES = 1
#: Frames of context kept on each side with context: the decoder's lead-in / lead-out (cut after).
CONTEXT_KEEP_FRAMES = 8


def clamp_edges(
    durations: torch.Tensor,
    span: EdgeSpan | None,
    *,
    lead_frames: int = LEAD_KEEP_FRAMES,
    tail_frames: int = TAIL_KEEP_FRAMES,
    context_frames: int = CONTEXT_KEEP_FRAMES,
) -> torch.Tensor:
    """``durations`` (one item, ``[BOS, *left, *phonemes, *right, EOS]``) with the edge tokens held
    short and the context down to ``context_frames`` next to the phonemes.

    Call it where predicted durations become the alignment, so neither the prosody predictor nor the
    decoder generates the silence. The leading tokens keep the lead-in the decoder needs, the
    trailing ones one frame each; ``trim_edges`` removes what stays quiet afterwards. The last spoken
    phoneme keeps its predicted (utterance-final, often ~0.5 s) duration: held shorter, the decoder
    rendered it too quietly to hear; its silent part is trimmed from the audio instead. On a side
    with context the boundary token gets 0 frames and the context tokens nearest the phonemes keep
    up to ``context_frames`` in all (``cut_context`` cuts them after decoding).
    """
    if not span:
        return durations
    return clamp_edges_batch(
        durations[None], [durations.shape[0]], [span], lead_frames=lead_frames, tail_frames=tail_frames, context_frames=context_frames
    )[0]


def clamp_edges_batch(
    durations: torch.Tensor,
    lengths: Sequence[int],
    spans: Sequence[EdgeSpan | None],
    *,
    lead_frames: int = LEAD_KEEP_FRAMES,
    tail_frames: int = TAIL_KEEP_FRAMES,
    context_frames: int | None = CONTEXT_KEEP_FRAMES,
) -> torch.Tensor:
    """``clamp_edges`` over a padded batch ``(B, T)`` (item b's tokens are ``[:lengths[b]]``), in a
    fixed number of tensor ops whatever the batch size (the batched forward keeps its op count flat).
    ``context_frames=None`` leaves the context tokens their predicted durations (``context_window``
    cuts them later)."""
    r = _Regions(durations, lengths, spans)
    out = torch.where(r.position < r.lead_end, durations.clamp(max=lead_frames), durations)
    out = torch.where((r.position >= r.tail_start) & (r.position < r.end), out.clamp(max=tail_frames), out)
    out = out.masked_fill(r.boundary, 0)
    if context_frames is not None:
        out = torch.where(r.in_left | r.in_right, torch.minimum(out, r.kept(out, context_frames)), out)
    return out


def context_window(
    durations: torch.Tensor, lengths: Sequence[int], spans: Sequence[EdgeSpan | None], *, context_frames: int = CONTEXT_KEEP_FRAMES
) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's share of ``clamp_edges_batch(..., context_frames=None)``'s durations: context
    down to ``context_frames`` next to the phonemes. Returns those durations and, per item, how many
    frames were dropped before the first kept one (``(B,)``): the prosody curves computed over the
    whole context start that many frames earlier than the decoder's window."""
    r = _Regions(durations, lengths, spans)
    out = torch.where(r.in_left | r.in_right, torch.minimum(durations, r.kept(durations, context_frames)), durations)
    dropped = (durations - out).masked_fill(~r.in_left, 0).sum(dim=1)
    return out, dropped


class _Regions:
    """Where the edges and the context of each item of a padded ``(B, T)`` batch are, as masks."""

    def __init__(self, durations: torch.Tensor, lengths: Sequence[int], spans: Sequence[EdgeSpan | None]) -> None:
        device = durations.device
        spans = [span or EdgeSpan(0, 0) for span in spans]
        # Per item, positions in its tokens. The edge spans count tokens of [BOS, *phonemes, EOS]:
        # the context inside them shifts them.
        bounds = torch.tensor(
            [
                [
                    s.lead + s.left if s.lead else 0,  # lead_end
                    n - s.tail - s.right if s.tail else n,  # tail_start
                    1 + s.left,  # left_end
                    n - 1 - s.right,  # right_start
                    n,  # end
                    int(s.left > 0),
                    int(s.right > 0),
                ]
                for s, n in zip(spans, lengths)
            ],
            device=device,
        )
        self.lead_end, self.tail_start, left_end, right_start, self.end, has_left, has_right = bounds.T[:, :, None]
        self.position = position = torch.arange(durations.shape[1], device=device)[None, :]
        self.in_left = (position >= 1) & (position < left_end)
        self.in_right = (position >= right_start) & (position < self.end - 1)
        # The boundary token on a side with context gets no frames: the context is the edge there.
        self.boundary = ((position == 0) & (has_left > 0)) | ((position == self.end - 1) & (has_right > 0))

    def kept(self, durations: torch.Tensor, context_frames: int) -> torch.Tensor:
        """Frames each context token may keep: what is left of ``context_frames`` after the context
        tokens between it and the phonemes (a cumulative sum from the phonemes outwards)."""
        left = durations.masked_fill(~self.in_left, 0)
        right = durations.masked_fill(~self.in_right, 0)
        left_cum, right_cum = left.cumsum(dim=1), right.cumsum(dim=1)
        nearer_left = left_cum[:, -1:] - left_cum
        nearer_right = right_cum - right
        return torch.where(self.in_left, context_frames - nearer_left, context_frames - nearer_right).clamp(min=0)


def without_context(durations: np.ndarray, span: EdgeSpan | None) -> np.ndarray:
    """One item's durations with its context tokens removed: ``[BOS, *phonemes, EOS]`` again.

    Call it after ``cut_context`` (the context tokens then have 0 frames: the audio is unchanged).
    """
    if not span or not (span.left or span.right):
        return durations
    n = len(durations)
    return np.concatenate([durations[:1], durations[1 + span.left : n - 1 - span.right], durations[n - 1 :]])


def cut_context(
    audio: np.ndarray, durations: np.ndarray, span: EdgeSpan | None, *, fade_samples: int = FADE_SAMPLES
) -> tuple[np.ndarray, np.ndarray]:
    """Cut the frames of the context (and the boundary token) on each side with context, exactly
    at the phonemes' edge (before the space that joins the left context to them: ``span.joint``),
    and fade the new edge; returns (audio, durations ``[BOS, *phonemes, EOS]``).

    ``durations`` are the whole item's (``[BOS, *left, *phonemes, *right, EOS]``, ``clamp_edges``d),
    so ``len(audio) == durations.sum() * 600`` holds before and after.
    """
    if not span or not (span.left or span.right):
        return audio, durations
    durations = np.asarray(durations, dtype=np.int64).copy()
    n = len(durations)
    start = int(durations[: 1 + span.left - span.joint].sum()) if span.left else 0
    stop = int(durations[: n - 1 - span.right].sum()) if span.right else int(durations.sum())
    if span.left:
        # The space between the words of a seam is kept on the piece after it (counted as its first
        # phoneme's, as the onset in ``trim_edges``): the decoder starts a word's first consonant
        # in the frames before it, and the piece before the seam ends at its last phoneme.
        durations[1 + span.left] += durations[1 + span.left - span.joint : 1 + span.left].sum()
        durations[: 1 + span.left] = 0
    if span.right:
        durations[n - 1 - span.right :] = 0
    out = _cut(audio, start * SAMPLES_PER_FRAME, stop * SAMPLES_PER_FRAME, fade_samples, fade_in=bool(span.left), fade_out=bool(span.right))
    return out, without_context(durations, span)


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
    return _cut(audio, start, stop, fade_samples, fade_in=bool(span.lead), fade_out=bool(span.tail)), durations


def trimmed_head(
    prefix: np.ndarray,
    durations: np.ndarray,
    span: EdgeSpan | None,
    *,
    fade_samples: int = FADE_SAMPLES,
    lead_lookback: int = LEAD_LOOKBACK_FRAMES,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The start of what ``cut_context`` then ``trim_edges`` make of an item's audio, and the
    durations they return, from the first samples of that audio alone (``prefix``; ``durations``
    are the whole item's): so a decoder that made only the start of an item can already send it
    (``KokoroEngine``'s heads). The audio is a float32 array that the finished item's audio starts
    with exactly; None where the prefix cannot tell: a left context or a level-trimmed end
    (``span.left`` / ``span.tail``), a prefix still quiet where the lead-in is trimmed, or less than
    a frame of it left. It stops ``fade_samples`` before the item's own end (the right context's cut
    fades there).

    How: only the lead-in is cut by level at such an item's start, and its quiet run ends inside
    the prefix, so the two functions, run on the prefix followed by silence, cut exactly as they
    will on the whole audio; what they return up to the prefix's end is the finished audio's start.
    """
    if span is not None and (span.left or span.tail):
        return None
    durations = np.asarray(durations, dtype=np.int64)
    n = len(durations)
    right = span.right if span is not None else 0
    end = int(durations[: n - 1 - right].sum()) if right else int(durations.sum())
    limit = min(len(prefix), end * SAMPLES_PER_FRAME - (fade_samples if right else 0))
    start = 0
    if span is not None and span.lead:
        # trim_edges' arithmetic on the lead-in: all but the lookback frames go, then the quiet ones
        # (all but a margin); the quiet run must end inside the prefix.
        lead_frames = int(durations[: span.lead].sum())
        lead_frames -= min(lead_frames, lead_lookback)
        quiet = _frame_db(prefix[lead_frames * SAMPLES_PER_FRAME : limit]) < QUIET_DBFS
        run = _run_length(quiet)
        if run == len(quiet):
            return None
        start = (lead_frames + max(0, run - _LEAD_MARGIN_FRAMES)) * SAMPLES_PER_FRAME
    if limit - start < SAMPLES_PER_FRAME:
        return None
    padded = np.zeros(int(durations.sum()) * SAMPLES_PER_FRAME, dtype=np.float32)
    padded[:limit] = prefix[:limit]
    audio, final = trim_edges(*cut_context(padded, durations, span, fade_samples=fade_samples), span, fade_samples=fade_samples, lead_lookback=lead_lookback)
    return audio[: limit - start].copy(), final


def _cut(audio: np.ndarray, start: int, stop: int, fade_samples: int, *, fade_in: bool, fade_out: bool) -> np.ndarray:
    """A float32 copy of ``audio[start:stop]``, faded in / out over ``fade_samples`` at a cut edge."""
    out = np.array(audio[start:stop], dtype=np.float32, copy=True)
    fade = min(fade_samples, len(out) // 2)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade, endpoint=False, dtype=np.float32)
        if fade_in:
            out[:fade] *= ramp
        if fade_out:
            out[len(out) - fade :] *= ramp[::-1]
    return out


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
