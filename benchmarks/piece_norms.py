"""Which statistics and style row make a piece intelligible (issue 12, fifth round).

    PYTHONPATH=. python benchmarks/piece_norms.py own own-row voice voice~L12C4   # needs the bench extra

The 28 sentences of ``voxgate bench quality``, each cut into the pieces the server cut them into
(``piece_texts`` of a ``bench quality`` result, ``--cuts``), each piece synthesized alone the way
the server does (edges trimmed, ``with_pause`` joins, 3 words of its sentence around it as
``left_context`` / ``right_context``), the pieces of a sentence joined and transcribed by
Whisper-base. Variants (the engine runs with ``decoder_norm = "voice"``; a variant may override
where the norms take their statistics from):

- ``own``: each item's own statistics (Kokoro's instance norms) at style row >= 79;
- ``own-row``: each item's own statistics at its own row (Kokoro's arithmetic: the server before);
- ``voice``: the voice's statistics at style row >= 79 (the default now);
- ``voice-row``: the voice's statistics at each item's own row (the row floor off, statistics
  measured at rows 2^0.5 apart);
- ``voice-dec`` / ``voice-gen``: the voice's statistics in the frame-rate decoder blocks only / in the
  generator only, the item's own elsewhere;
- a suffix ``~L<lead>C<context>``: the lead-in and context frames the decoder keeps (12 and 8).

Prints per sentence the WER (beside it the sentence spoken whole by Kokoro, from the result file)
and the transcript, then the means, English and Japanese apart.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

import gateway.engines.kokoro as kokoro_engine
import gateway.engines.voice_norms as voice_norms
from gateway.audio_join import PauseLengths, with_pause
from gateway.bench.quality import _Recognizer, word_error_rate
from gateway.config import EngineConfig
from gateway.engines import SynthesisItem, create_engine, edges
from gateway.engines.voice_norms import FixedNorms
from gateway.engines.weights import default_cache_dir
from gateway.text.g2p import G2P

DEFAULT_CUTS = Path(__file__).parent / "results" / "quality-after-final-r4-vm-20261201-2354.json"
CONTEXT_WORDS = 3
#: Statistics measured at every row ratio 2^0.5 apart, for the variants at each item's own row.
EVERY_ROW_BUCKET = (1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 509)


class VariantNorms(FixedNorms):
    """The voice's statistics, or the item's own, per layer as the variant says."""

    kind = "voice"
    generator_layers: frozenset[int] = frozenset()

    def statistics(self, layer: nn.Module, x: torch.Tensor, lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        kind = self.kind
        if kind.startswith("own"):
            return None
        if kind == "voice-dec" and id(layer) in self.generator_layers:
            return None
        if kind == "voice-gen" and id(layer) not in self.generator_layers:
            return None
        return super().statistics(layer, x, lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--cuts", type=Path, default=DEFAULT_CUTS, help="a bench quality result (.json) with piece_texts")
    parser.add_argument("--voice", default="jf_alpha")
    args = parser.parse_args()
    rows = [r for r in json.loads(args.cuts.read_text())["rows"] if r["mode"] == "stream"]
    kokoro_engine.FixedNorms = VariantNorms  # the engine builds its norms source with this name
    engine = create_engine(EngineConfig(kind="kokoro", weights="offline", warmup=False, decoder_norm="voice"))
    VariantNorms.generator_layers = frozenset(id(m) for m in engine.model.decoder.generator.modules())
    recognizer = _Recognizer(default_cache_dir())
    g2ps = {lang: G2P(lang) for lang in ("en", "ja")}
    min_row, row_buckets = kokoro_engine.MIN_STYLE_ROW, voice_norms.ROW_BUCKETS

    def phonemes(text: str, lang: str) -> str:
        return " ".join(p.phonemes for p in g2ps[lang].phonemize(text)).strip() if text else ""

    def spoken(pieces: list[str], lang: str) -> np.ndarray:
        joiner = " " if lang == "en" else ""  # Japanese piece_texts hold MeCab's words, space-separated
        out = []
        for k, piece in enumerate(pieces):
            left = joiner.join(" ".join(pieces[:k]).split()[-CONTEXT_WORDS:]) if k else ""
            right = joiner.join(" ".join(pieces[k + 1 :]).split()[:CONTEXT_WORDS])
            item = SynthesisItem(
                phonemes=phonemes(piece.replace(" ", joiner), lang), voice=args.voice, trim_start=True, trim_end=True,
                left_context=phonemes(left, lang) + " " if left else "",
                right_context=" " + phonemes(right, lang) if right else "",
            )
            out.append(with_pause(engine.synthesize([item])[0], PauseLengths()))
        return np.concatenate([r.audio for r in out])

    for name in args.variants:
        kind, _, frames = name.partition("~")
        lead, context = (int(v) for v in frames[1:].split("C")) if frames else (edges.LEAD_KEEP_FRAMES, edges.CONTEXT_KEEP_FRAMES)
        edges.clamp_edges_batch.__kwdefaults__["lead_frames"] = lead
        edges.context_window.__kwdefaults__["context_frames"] = context
        VariantNorms.kind = kind
        at_own_row = kind.endswith("-row")
        kokoro_engine.MIN_STYLE_ROW = 0 if at_own_row else min_row
        voice_norms.ROW_BUCKETS = EVERY_ROW_BUCKET if at_own_row else row_buckets
        started = time.monotonic()
        wers: dict[str, list[float]] = {"en": [], "ja": []}
        for row in rows:
            transcript = recognizer.transcribe(spoken(row["piece_texts"], row["lang"]), row["lang"])
            wer = word_error_rate(row["text"], transcript, row["lang"])
            wers[row["lang"]].append(wer)
            print(f"{name:14s} {wer:.2f} (whole {row['baseline_wer']:.2f}) | {transcript}", flush=True)
        every = wers["en"] + wers["ja"]
        whole = np.mean([row["baseline_wer"] for row in rows])
        print(
            f"{name:14s} MEAN {np.mean(every):.3f} en {np.mean(wers['en']):.3f} ja {np.mean(wers['ja']):.3f} "
            f"(whole by Kokoro {whole:.3f}) [{time.monotonic() - started:.0f} s]",
            flush=True,
        )


if __name__ == "__main__":
    main()
