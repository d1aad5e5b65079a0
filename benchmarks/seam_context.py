"""How much of a sentence a piece must see to be heard as well as the sentence spoken whole (issue 12).

    python benchmarks/seam_context.py server textfull decfull full one   # needs the bench extra

Fixed pieces (the cuts the server made in ``bench quality``, 8 English sentences with WER losses),
each synthesized alone the way the server does (edges trimmed, ``with_pause`` joins, the words
around it as ``left_context`` / ``right_context``), then transcribed by Whisper-base; the same for
the sentence spoken whole by the engine. Variants:

- ``server``: 3 context words, the decoder keeps 8 context frames (what the server does);
- ``textfull``: the whole sentence as context for the text side, 8 decoder context frames;
- ``decfull``: 3 context words, all of their frames decoded (then cut);
- ``full``: the whole sentence as context and all of it decoded (then cut): each piece costs a
  whole sentence of compute;
- ``laterW[rR]xF``: pieces after the first get W context words before (R after) and F frames;
- ``one``: the sentence as one piece, trimmed edges (the joins without cuts).

Prints per sentence WER whole / variant and the transcript, then the means.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from gateway.audio_join import PauseLengths, with_pause
from gateway.bench.quality import _Recognizer, word_error_rate
from gateway.config import EngineConfig
from gateway.engines import SynthesisItem, create_engine
from gateway.engines import edges
from gateway.engines.weights import default_cache_dir
from gateway.text.g2p import G2P

CASES = [
    ["When the rain", "stopped, we walked down", "to the harbour and watched the boats come in."],
    ["Could you tell me", "how long it takes", "to walk from the station", "to the museum?"],
    ["Our teacher", "asked us to read", "the first three chapters of the book", "before Monday."],
    ["She opened", "the window to let", "the fresh morning air", "into the small kitchen."],
    ["My sister bought", "a small red car", "from the dealer down the street last week."],
    ["He spent", "the whole afternoon", "fixing the broken fence", "behind the house."],
    ["My brother plays", "the guitar in a band", "that performs at the local cafe every Friday."],
    ["The old man", "walked slowly", "along the beach looking for shells", "in the sand."],
]
ALL = 1_000  # words / frames: the whole sentence


@dataclasses.dataclass(frozen=True)
class Variant:
    first_words: tuple[int, int] = (3, 3)  # context words before / after the first piece
    first_frames: int = edges.CONTEXT_KEEP_FRAMES
    later_words: tuple[int, int] = (3, 3)
    later_frames: int = edges.CONTEXT_KEEP_FRAMES
    one_piece: bool = False


def parse_variant(name: str) -> Variant:
    fixed = {
        "server": Variant(),
        "textfull": Variant((ALL, ALL), edges.CONTEXT_KEEP_FRAMES, (ALL, ALL), edges.CONTEXT_KEEP_FRAMES),
        "decfull": Variant((3, 3), ALL, (3, 3), ALL),
        "full": Variant((ALL, ALL), ALL, (ALL, ALL), ALL),
        "one": Variant(one_piece=True),
    }
    if name in fixed:
        return fixed[name]
    if name.startswith("later"):
        spec, frames = name[5:].split("x")
        before, after = (spec.split("r") + [spec])[:2]
        return Variant(later_words=(int(before), int(after)), later_frames=int(frames))
    raise SystemExit(f"unknown variant {name!r}")


def set_context_frames(frames: int) -> None:
    """The decoder's context frames, process-wide: they are keyword defaults of ``edges``."""
    for fn in (edges.clamp_edges_batch, edges.context_window):
        fn.__kwdefaults__["context_frames"] = frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--voice", default="jf_alpha")
    parser.add_argument(
        "--decoder-norm", default="instance", choices=("instance", "voice"),
        help="instance: Kokoro's own norms (what the fourth round measured); voice: the default since (piece_norms.py)",
    )
    args = parser.parse_args()
    engine = create_engine(EngineConfig(kind="kokoro", weights="offline", dtype=args.dtype, decoder_norm=args.decoder_norm, warmup=False))
    recognizer = _Recognizer(default_cache_dir())
    g2p = G2P("en")

    def phonemes(text: str) -> str:
        return " ".join(p.phonemes for p in g2p.phonemize(text)).strip() if text else ""

    def spoken(pieces: list[str], variant: Variant) -> np.ndarray:
        results = []
        for k, piece in enumerate(pieces):
            before, after = variant.first_words if k == 0 else variant.later_words
            set_context_frames(variant.first_frames if k == 0 else variant.later_frames)
            left = " ".join(" ".join(pieces[:k]).split()[-before:]) if k else ""
            right = " ".join(" ".join(pieces[k + 1 :]).split()[:after])
            item = SynthesisItem(
                phonemes=phonemes(piece), voice=args.voice, trim_start=True, trim_end=True,
                left_context=phonemes(left) + " " if left else "", right_context=" " + phonemes(right) if right else "",
            )
            results.append(with_pause(engine.synthesize([item])[0], PauseLengths()))
        set_context_frames(edges.CONTEXT_KEEP_FRAMES)
        return np.concatenate([r.audio for r in results])

    for name in args.variants:
        variant = parse_variant(name)
        totals = [0.0, 0.0]
        for pieces in CASES:
            text = " ".join(pieces)
            whole = engine.synthesize([SynthesisItem(phonemes=phonemes(text), voice=args.voice)])[0].audio
            audio = spoken([text] if variant.one_piece else pieces, variant)
            transcript = recognizer.transcribe(audio, "en")
            wers = [word_error_rate(text, recognizer.transcribe(whole, "en"), "en"), word_error_rate(text, transcript, "en")]
            totals = [t + w for t, w in zip(totals, wers, strict=True)]
            print(f"{name:14s} {wers[0]:.2f} {wers[1]:.2f} | {transcript}")
        print(f"{name:14s} mean WER whole {totals[0] / len(CASES):.3f}, {name} {totals[1] / len(CASES):.3f}")


if __name__ == "__main__":
    main()
