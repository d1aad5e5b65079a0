"""Measure the pause Kokoro itself makes at a comma and at a sentence end inside text spoken whole.

    python scripts/measure_pauses.py [--weights offline] [--out benchmarks/results/pauses.json]

Speaks each sentence below as one engine item (no cut), then, for every clause or sentence mark
inside it, measures the silence around that mark's tokens in the audio: the run of 20 ms frames
below -45 dBFS (the quality benchmark's threshold) that overlaps the mark's token frames. Prints the
per-mark silences and their medians by class; ``gateway.audio_join.PauseLengths`` defaults come from
these medians (docs/pauses.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.audio_join import CutClass, cut_class  # noqa: E402
from gateway.bench.quality import silence_runs  # noqa: E402
from gateway.config import EngineConfig  # noqa: E402
from gateway.engines import SynthesisItem, create_engine  # noqa: E402
from gateway.engines.base import SAMPLE_RATE, SAMPLES_PER_FRAME  # noqa: E402
from gateway.text.g2p import G2P  # noqa: E402

SENTENCES = {
    "en": [
        "When the rain stopped, we walked down to the harbour and watched the boats come in.",
        "If you need anything else, just ask, and I will do my best to help.",
        "The train was late. We waited on the platform for almost an hour.",
        "She opened the door, looked around the empty room, and sat down by the window.",
        "Thank you for calling. Your order has shipped. It should arrive on Tuesday.",
        "Honestly, I did not expect that answer. Could you explain it once more?",
        "After dinner, the children played outside until the street lights came on.",
        "The results are in. Sales grew by twelve percent, and costs fell slightly.",
        "Well, the meeting ran long. Tomorrow, we will start at nine, not ten.",
        "I checked the map, and the road is closed. We should take the bridge instead.",
        "The soup was hot, the bread was fresh, and the coffee was strong.",
        "It was late. Everyone had gone home. Only the cat remained.",
    ],
    "ja": [
        "今日はとても暑いので、午後は家で本を読みます。",
        "駅に着いたら、電話してください。すぐに迎えに行きます。",
        "雨が止みました。散歩に行きましょう。",
    ],
}
_CLASS_MARKS = frozenset(",;:—.!?…")


def mark_silences(audio: np.ndarray, durations: np.ndarray, phonemes: str) -> list[tuple[CutClass, float, float]]:
    """(class, silence ms, predicted ms) for each clause/sentence mark inside ``phonemes`` (not the
    final one); predicted: the durations Kokoro gives the mark and the spaces around it."""
    starts = np.concatenate([[0], np.cumsum(durations)]) * SAMPLES_PER_FRAME  # token i: [starts[i], starts[i+1])
    runs = silence_runs(audio)
    out = []
    last_spoken = max(i for i, ch in enumerate(phonemes) if ch.isalpha())
    for i, ch in enumerate(phonemes):
        if ch not in _CLASS_MARKS or i > last_spoken:
            continue
        tok = i + 1  # BOS first
        lo, hi = starts[tok], starts[tok + 1]
        overlap = [b - a for a, b in runs if a < hi and b > lo]
        silence_ms = max(overlap, default=0) * 1000 / SAMPLE_RATE
        lo_tok, hi_tok = tok, tok + 1
        while lo_tok > 1 and phonemes[lo_tok - 2] == " ":
            lo_tok -= 1
        while hi_tok - 1 < len(phonemes) and phonemes[hi_tok - 1] in " ":
            hi_tok += 1
        predicted_ms = float(durations[lo_tok:hi_tok].sum()) * SAMPLES_PER_FRAME * 1000 / SAMPLE_RATE
        out.append((cut_class(ch), silence_ms, predicted_ms))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="auto")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    engine = create_engine(EngineConfig(weights=args.weights, warmup=False))
    voice = {"en": "af_heart" if "af_heart" in engine.voices() else engine.voices()[0]}
    voice["ja"] = next((v for v in engine.voices() if v.startswith("jf_")), voice["en"])
    by_class: dict[str, list[float]] = {"clause": [], "sentence": []}
    predicted: dict[str, list[float]] = {"clause": [], "sentence": []}
    rows = []
    for lang, sentences in SENTENCES.items():
        g2p = G2P(lang)
        for text in sentences:
            for piece in g2p.phonemize(text):
                (result,) = engine.synthesize([SynthesisItem(piece.phonemes, voice[lang], seed=0)])
                for cls, ms, pred in mark_silences(result.audio, result.durations, result.phonemes):
                    by_class[cls.value].append(ms)
                    predicted[cls.value].append(pred)
                    rows.append({"lang": lang, "text": text, "class": cls.value, "silence_ms": round(ms, 1), "predicted_ms": pred})
                    print(f"{lang} {cls.value:8s} silence {ms:6.0f} ms  predicted {pred:6.0f} ms  {text[:60]}")
    summary = {
        cls: {
            "n": len(v),
            "silence_median_ms": statistics.median(v) if v else None,
            "silence_mean_ms": statistics.fmean(v) if v else None,
            "silence_min_ms": min(v, default=None),
            "silence_max_ms": max(v, default=None),
            "predicted_median_ms": statistics.median(predicted[cls]) if v else None,
            "predicted_mean_ms": statistics.fmean(predicted[cls]) if v else None,
        }
        for cls, v in by_class.items()
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps({"engine": engine.describe(), "summary": summary, "marks": rows}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
