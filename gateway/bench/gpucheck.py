"""``voxgate bench gpu-check``: one command that measures what a lent GPU is good for.

    scripts/gpu-check                         # on the GPU machine: full size, ~5 minutes
    voxgate bench gpu-check --device cpu --smoke   # any machine: the same steps, tiny sizes, seconds

Steps, in order, all offline (nothing from the network):

1. weights: the real Kokoro-82M weights converted from the offline int8 packages when installed
   (``--weights offline``, the default when they are), else random weights of the full-size
   architecture (``--weights random``); ``--smoke`` uses the tiny random model. The report says which.
2. engine sweep: batch sizes 1..64 of mixed realistic lengths (seeded, 10-200 phonemes): aten ops
   dispatched per batch (``opcount``), seconds per batch, audio-seconds per second.
3. precision: bfloat16 and float16 autocast against float32 on the same batch (CUDA only): the
   worst relative audio error, and how many items changed their durations.
4. CUDA graphs (``engine.cuda_graphs``, off by default, never run before a GPU is lent): eager
   against graphed per batch size, time per batch and the worst audio difference; on CPU the
   bucket-padded decoder runs eagerly instead (the padding is still checked).
5. ``voxgate bench load`` at N = 1, 16, 64 real-time sessions (batched mode), its table copied in.

Writes one Markdown file, ``benchmarks/results/gpu-check-<device name>-<date>.md``. On a lent
device machine (see /work/.library/device/README.md for carrying wheels): build the venv wheels
here, carry them, ``pip install --no-index`` there, then run ``scripts/gpu-check``.
"""

from __future__ import annotations

import argparse
import datetime
import math
import random
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "mixed_items"]

_SAMPLE_PHONEMES = "ðə kwˈɪk bɹˈaʊn fˈɑks ʤˈʌmps ˌOvəɹ ðə lˈAzi dˈɔɡ, ænd ðˈɛn ɪt ɹˈʌnz fˈɑɹ ɐwˈA. "


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxgate bench gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:1, cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny model and sizes: the steps end to end in seconds")
    parser.add_argument("--weights", choices=["auto", "offline", "random"], default="auto", help="auto: offline if installed, else random full-size")
    parser.add_argument("--batch-sizes", default="", help="comma-separated (default 1,2,4,8,16,32,64; smoke 1,2)")
    parser.add_argument("--repeats", type=int, default=0, help="timed runs per batch size (default 3; smoke 1)")
    parser.add_argument("--sessions", default="", help="bench load N values (default 1,16,64; smoke 1); 'none' skips it")
    parser.add_argument("--out", default="", help="results file (default benchmarks/results/gpu-check-<device>-<date>.md)")
    return parser


def mixed_items(num_items: int, voices: Sequence[str], *, seed: int = 0, smoke: bool = False) -> list[Any]:
    """``num_items`` synthesis items of mixed, realistic lengths (10-200 phonemes; smoke 5-40)."""
    from gateway.engines.base import SynthesisItem

    rng = random.Random(seed)
    text = _SAMPLE_PHONEMES * 4
    low, high = (5, 20) if smoke else (10, 200)
    return [
        SynthesisItem(text[(start := rng.randrange(60)) : start + rng.randint(low, high)].strip() or "ə", voices[i % len(voices)], seed=i)
        for i in range(num_items)
    ]


def _engine(args: argparse.Namespace, max_batch: int) -> tuple[Any, str]:
    from gateway.engines.kokoro import KokoroEngine

    common: dict[str, Any] = {"device": args.device, "max_batch_size": max_batch, "preferred_batch_size": 1}
    if args.smoke:
        return KokoroEngine.tiny(0, num_threads=1, **common), "tiny random weights (smoke)"
    from gateway.engines import weights as W

    use_offline = args.weights == "offline" or (args.weights == "auto" and W._offline_installed())
    if use_offline:
        loaded = W.load_kokoro("offline")
        return KokoroEngine(W.build_kmodel(loaded), loaded.voices, weights_source=loaded.source, **common), loaded.source
    import torch

    from gateway.engines.tiny import make_tiny_voices

    with tempfile.TemporaryDirectory(prefix="voxgate-gpucheck-") as tmp:
        path = Path(tmp) / "random.pth"
        torch.manual_seed(0)
        torch.save(W.kmodel_template(), path)
        loaded = W.LoadedWeights(W.kokoro_config(), path, make_tiny_voices(["random"]), "random full-size weights", "path")
        model = W.build_kmodel(loaded)
    # At random init every token gets ~25 frames (half of max_dur's sigmoids): 100 s items. Bias
    # the duration head to ~3.5 frames per token, as the tiny model does, so lengths are realistic.
    proj = model.predictor.duration_proj.linear_layer
    p = 3.5 / proj.out_features
    with torch.no_grad():
        proj.weight.mul_(0.01)
        proj.bias.fill_(math.log(p / (1 - p)))
    source = "random full-size weights (duration head biased to ~3.5 frames per token)"
    return KokoroEngine(model, loaded.voices, weights_source=source, **common), source


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sweep(engine: Any, sizes: Sequence[int], repeats: int, smoke: bool) -> list[str]:
    from gateway.engines.opcount import count_aten_ops

    rows = ["| batch | audio s | aten ops | s / batch | audio-s/s |", "|---:|---:|---:|---:|---:|"]
    for size in sizes:
        items = mixed_items(size, engine.voices(), seed=size, smoke=smoke)
        with count_aten_ops() as counter:
            results = engine.synthesize(items)
        audio_s = sum(len(r.audio) for r in results) / engine.sample_rate
        _sync(engine.device)
        start = time.perf_counter()
        for _ in range(repeats):
            engine.synthesize(items)
        _sync(engine.device)
        seconds = (time.perf_counter() - start) / repeats
        rows.append(f"| {size} | {audio_s:.1f} | {counter.total} | {seconds:.3f} | {audio_s / seconds:.1f} |")
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def _precision(engine: Any, smoke: bool) -> list[str]:
    import numpy as np

    if engine.device.type != "cuda":
        return ["skipped: reduced precision runs on CUDA only (the engine keeps float32 on CPU)"]
    items = mixed_items(8, engine.voices(), seed=99, smoke=smoke)
    reference = engine.synthesize(items)
    rows = ["| dtype | worst rel. error vs float32 | items with other durations |", "|---|---:|---:|"]
    for dtype in ("bfloat16", "float16"):
        engine.dtype = dtype
        try:
            results = engine.synthesize(items)
        finally:
            engine.dtype = "float32"
        errors, changed = [], 0
        for ref, out in zip(reference, results):
            if len(ref.audio) != len(out.audio):
                changed += 1
                continue
            errors.append(float(np.linalg.norm(out.audio - ref.audio) / max(np.linalg.norm(ref.audio), 1e-12)))
        rows.append(f"| {dtype} | {max(errors) if errors else float('nan'):.2e} | {changed} of {len(items)} |")
    return rows


def _timed(engine: Any, items: Sequence[Any], repeats: int) -> tuple[list[Any], float]:
    results = engine.synthesize(items)  # first call: warm-up (or a graph's capture)
    _sync(engine.device)
    start = time.perf_counter()
    for _ in range(repeats):
        engine.synthesize(items)
    _sync(engine.device)
    return results, (time.perf_counter() - start) / repeats


def _graphs(engine: Any, sizes: Sequence[int], repeats: int, smoke: bool) -> list[str]:
    """Eager against ``engine.cuda_graphs`` per batch size: time per batch and the worst audio difference.

    On CPU nothing is captured: the bucket-padded decoder (what a graph replays) runs eagerly, so
    the error column still checks the padding.
    """
    import numpy as np

    from gateway.engines.cuda_graphs import DecoderGraphs

    on_cuda = engine.device.type == "cuda"
    rows = [] if on_cuda else ["CPU: no capture; the bucket-padded decoder runs eagerly against plain eager.", ""]
    rows += ["| batch | eager s / batch | graphs s / batch | speed-up | max abs vs eager | replays |", "|---:|---:|---:|---:|---:|---:|"]
    for size in sizes:
        items = mixed_items(size, engine.voices(), seed=size, smoke=smoke)
        engine.decoder_graphs = None
        eager, eager_s = _timed(engine, items, repeats)
        graphs = engine._decoder_graphs(True) if on_cuda else DecoderGraphs(engine.model.decoder, engine.device, capture=False)
        engine.decoder_graphs = graphs
        try:
            graphed, graphed_s = _timed(engine, items, repeats)
        finally:
            engine.decoder_graphs = None
        worst = max(
            (float(np.abs(a.audio - b.audio).max()) if len(a.audio) == len(b.audio) else float("inf"))
            for a, b in zip(eager, graphed)
        )
        rows.append(f"| {size} | {eager_s:.4f} | {graphed_s:.4f} | {eager_s / graphed_s:.2f}x | {worst:.1e} | {graphs.replays} |")
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def _load(args: argparse.Namespace, sessions: str) -> list[str]:
    from gateway.bench.load import main as load_main

    with tempfile.TemporaryDirectory(prefix="voxgate-gpucheck-load-") as tmp:
        argv = ["--sessions", sessions, "--modes", "batched", "--out", tmp, "--device", args.device]
        if args.smoke:
            argv += ["--engine", "tiny", "--utterances-per-session", "1", "--words-per-utterance", "5", "--max-seconds", "30"]
        else:
            argv += ["--engine", "kokoro", "--max-seconds", "60", "--set", "engine.max_batch_size=64"]
            if args.weights != "random":
                argv += ["--weights", "offline"]
        status = load_main(argv)
        reports = sorted(Path(tmp).glob("*.md"))
        body = reports[-1].read_text(encoding="utf-8") if reports else "(no report written)"
    return [f"`voxgate bench load {' '.join(argv)}`: exit status {status}", "", body]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    sizes = [int(s) for s in (args.batch_sizes or ("1,2" if args.smoke else "1,2,4,8,16,32,64")).split(",")]
    repeats = args.repeats or (1 if args.smoke else 3)
    sessions = args.sessions or ("1" if args.smoke else "1,16,64")
    import torch

    from gateway.bench.machine import describe_machine
    from gateway.engines.kokoro import device_name

    started = time.perf_counter()
    engine, weights = _engine(args, max(sizes))
    engine.warmup()
    load_s = time.perf_counter() - started
    name = device_name(engine.device)
    sections = [
        f"# GPU check: {name}",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- command: voxgate bench gpu-check {' '.join(sys.argv[1:] if argv is None else argv)}",
        f"- device: {engine.device} ({name}); torch {torch.__version__}",
        f"- machine: {describe_machine()}",
        f"- weights: {weights}; engine load + warmup {load_s:.1f} s",
        f"- prosody: {'per item' if engine.per_item_prosody else 'whole batch'} (engine.prosody = auto)",
        "",
        "## Engine sweep (mixed lengths, float32)",
        "",
        *_sweep(engine, sizes, repeats, args.smoke),
        "",
        "## Reduced precision against float32",
        "",
        *_precision(engine, args.smoke),
        "",
        "## CUDA graphs (engine.cuda_graphs) against eager",
        "",
        *_graphs(engine, sizes, repeats, args.smoke),
        "",
    ]
    engine.close()
    if sessions != "none":
        sections += ["## Real-time sessions (voxgate bench load, batched)", "", *_load(args, sessions), ""]
    sections.append(f"Total wall time: {time.perf_counter() - started:.0f} s")
    report = "\n".join(sections) + "\n"
    from gateway.config import REPO_ROOT

    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "device"
    out = Path(args.out or Path(REPO_ROOT) / "benchmarks" / "results" / f"gpu-check-{slug}-{datetime.datetime.now():%Y%m%d-%H%M%S}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report, encoding="utf-8")
    print(report)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
