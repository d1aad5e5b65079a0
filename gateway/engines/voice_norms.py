"""The decoder's norms with a voice's statistics, so that a piece is rendered as in its sentence.

Every ``AdaIN1d`` of Kokoro's decoder (the ``encode``/``decode`` blocks and the generator's
resblocks) normalises each channel by its mean and variance over the whole item, and the item's
style row is picked by its length. A piece of a few words therefore gets other statistics, and a
short utterance's style, where the same words inside their sentence get the sentence's: Whisper
mishears it (``benchmarks/seam_context.py``: pieces 0.149 against 0.033 for the sentences whole).

With ``engine.decoder_norm = "voice"`` (the default) each voice's statistics per layer are measured
once per style row bucket - the reference sentences below, spoken in that row's style with Kokoro's
own norms - and every item is normalised by them instead of its own; and every item takes at least
the style of an ``MIN_STYLE_ROW``-phoneme utterance. Measured on the 28 sentences of
``voxgate bench quality``, each piece rendered as the server cuts it (``benchmarks/README.md``,
"Fifth round"): WER 0.100 with Kokoro's own norms, 0.089 with the voice's statistics at each
piece's own row, 0.046 with them at row >= 79 (Kokoro's own norms at row >= 79: 0.081); the
sentences spoken whole by Kokoro 0.064. A piece's length no longer changes how its phonemes sound,
and the decoder no longer reads the whole item (only its convolutions' reach).

Why rows are bucketed: the statistics follow the style. Measured at rows 75-95 and applied at row 20
they left a piece 13 dB too quiet (at row 5 silent); matched to the row, it came within 1-3 dB of
its own instance norms.

``"instance"`` is Kokoro's arithmetic exactly (``tests/test_batched_forward.py``), and what
``bench quality`` compares against. ``NormRecorder`` measures; ``FixedNorms`` applies; both plug
into the batched decoder (``gateway.engines.batched``) as its ``norms``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
from torch import nn

__all__ = ["MIN_STYLE_ROW", "REFERENCE_PHONEMES", "ROW_BUCKETS", "FixedNorms", "NormRecorder", "NormSource", "VoiceNorms", "bucket_row"]

#: What a voice says to measure its statistics (misaki's phonemes of an English and a Japanese
#: sentence, ~9 s of speech): statements, a comma, both languages' phoneme sets.
REFERENCE_PHONEMES: tuple[str, ...] = (
    "ðə wˈɛðəɹ wʌz plˈɛzᵊnt, sˌO wi dəsˈIdᵻd tə tˈAk ɐ lˈɔŋ wˈɔk θɹu ðə pˈɑɹk bəfˈɔɹ dˈɪnəɹ.",
    "kʲinoː βa ame ɡa ɸɯʔte ita no de, iʨi ɲiʔʨɨː ka de hoɴ o jonde i maɕita.",
)

#: The least style row an item takes with the voice's statistics: a voice pack holds one style per
#: utterance length (row n - 1 for n phonemes); a piece of a sentence is spoken in a sentence's.
MIN_STYLE_ROW = 79
#: Style rows at which the statistics are measured; an item uses its row's nearest in ratio.
ROW_BUCKETS: tuple[int, ...] = (91, 128, 181, 256, 362, 509)


def bucket_row(row: int, rows: int) -> int:
    """The measured row for style row ``row`` of a pack of ``rows`` rows: the nearest bucket in
    ratio, at most the pack's last row."""
    row = max(row, 1)
    best = min(ROW_BUCKETS, key=lambda bucket: abs(math.log(bucket / row)))
    return min(best, rows - 1)


#: One voice's statistics: per ``AdaIN1d`` layer, (mean, variance) per channel, float32 ``(C,)``.
VoiceNorms = Mapping[nn.Module, tuple[torch.Tensor, torch.Tensor]]


class NormSource(Protocol):
    """Where the batched decoder's ``AdaIN1d`` layers take their statistics from."""

    def statistics(self, layer: nn.Module, x: torch.Tensor, lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mean, variance) ``(B, C, 1)`` for ``layer``'s input ``x`` ``(B, C, W)`` (item b's
        frames are ``[:lengths[b]]``), or None: each item's own, as Kokoro computes them."""
        ...


class NormRecorder:
    """Pools each layer's statistics over every frame it sees (float64); uses the items' own."""

    def __init__(self) -> None:
        self._sums: dict[nn.Module, list[torch.Tensor | int]] = {}

    def statistics(self, layer: nn.Module, x: torch.Tensor, lengths: Sequence[int]) -> None:
        acc = self._sums.get(layer)
        if acc is None:
            zeros = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
            acc = self._sums[layer] = [zeros, zeros, 0]
        for b, n in enumerate(lengths):
            frames = x[b, :, :n].double()
            acc[0] = acc[0] + frames.sum(dim=-1)
            acc[1] = acc[1] + frames.square().sum(dim=-1)
            acc[2] = int(acc[2]) + n
        return None

    def result(self) -> dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
        """The pooled (mean, biased variance) per layer, float32."""
        out = {}
        for layer, (total, squares, count) in self._sums.items():
            mean = total / count
            var = (squares / count - mean.square()).clamp(min=0.0)
            out[layer] = (mean.float(), var.float())
        return out


class FixedNorms:
    """Item b of the batch is normalised by ``voices[b]``'s statistics."""

    def __init__(self, voices: Sequence[VoiceNorms]) -> None:
        self._voices = list(voices)
        self._stacked: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def select(self, items: Sequence[int]) -> FixedNorms:
        """The statistics of a batch made of items ``items`` of this one (in that order): this one
        itself, with the statistics it has stacked already, when that is all of its items in order."""
        if list(items) == list(range(len(self._voices))):
            return self
        return FixedNorms([self._voices[b] for b in items])

    def statistics(self, layer: nn.Module, x: torch.Tensor, lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        stacked = self._stacked.get(layer)
        if stacked is None:
            pairs = [voice[layer] for voice in self._voices]
            stacked = (torch.stack([m for m, _ in pairs])[:, :, None], torch.stack([v for _, v in pairs])[:, :, None])
            self._stacked[layer] = stacked
        return stacked
