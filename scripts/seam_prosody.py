"""Seam prosody: durations and F0 of a first piece's last word ("When the rain | stopped, ..."),
spoken alone, read with the words after it (seam context), and inside the whole sentence.

    python scripts/seam_prosody.py      # offline weights; prints durations and F0 over "rain"

Diagnostic only: it spies on the batched forward's prosody curves and alignment
(``gateway.engines.batched``); the numbers are in docs/pauses.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gateway.engines.batched as batched  # noqa: E402
from gateway.config import EngineConfig  # noqa: E402
from gateway.engines import SynthesisItem, create_engine  # noqa: E402

PIECE = "wˌɛn ðə ɹˈAn"  # "When the rain"
AFTER = " stˈɑpt, wi wˈɔkt"  # " stopped, we walked"
LAST_WORD_AT = 1 + len("wˌɛn ðə ")  # token index of "ɹˈAn" in [BOS, *phonemes, EOS]


def main() -> None:
    engine = create_engine(EngineConfig(weights="offline", warmup=False, num_threads=2))
    curves: list[np.ndarray] = []
    durations: list[np.ndarray] = []
    prosody, alignment = batched._prosody, batched._alignment

    def spy_prosody(*args, **kwargs):
        f0, n = prosody(*args, **kwargs)
        curves.append(f0[0].numpy().copy())
        return f0, n

    def spy_alignment(d):
        durations.append(d[0].numpy().copy())
        return alignment(d)

    batched._prosody, batched._alignment = spy_prosody, spy_alignment
    voice = engine.voices()[0]
    cases = {
        "alone": SynthesisItem(PIECE, voice, trim_start=True, trim_end=True),
        "with right context": SynthesisItem(PIECE, voice, trim_start=True, trim_end=True, right_context=AFTER),
        "whole sentence": SynthesisItem(PIECE + AFTER, voice),
    }
    for name, item in cases.items():
        curves.clear()
        durations.clear()
        engine.synthesize([item])
        d = durations[0]  # the prosody predictor's frames (the first alignment of the call)
        start, end = 2 * int(d[:LAST_WORD_AT].sum()), 2 * int(d[: LAST_WORD_AT + 4].sum())
        print(f"{name}: frames of ɹ ˈ A n {d[LAST_WORD_AT : LAST_WORD_AT + 4].tolist()}")
        print(f"    F0 over 'rain', Hz: {np.round(curves[-1][start:end:2]).astype(int).tolist()}")


if __name__ == "__main__":
    main()
