"""``voxgate bench engine``: throughput of the Kokoro engine per batch size on this machine.

    voxgate bench engine --weights offline --batch-sizes 1,2,4,8 --seconds 120
    voxgate bench engine --weights tiny --seconds 10 --out -

Runs the batch-size probe (equal-length items) over the chosen weights and device, prints a table
(batch, audio-seconds per second, RTF, seconds per batch, peak memory) headed by what ran where
(device and CPU model, threads, dtype, weights), and writes it as Markdown to ``--out``.
Peak memory is the process's peak RSS on CPU (reset per batch size where ``/proc`` allows) and
``torch.cuda.max_memory_allocated`` on GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "build_parser", "RssProbe", "CudaMemoryProbe"]


class RssProbe:
    """Peak resident memory of this process, from ``/proc/self/status`` (``VmHWM``).

    ``reset()`` writes 5 to ``/proc/self/clear_refs``, which restarts the peak at the current RSS;
    where that is not allowed the peak is since process start (still an upper bound).
    """

    def reset(self) -> None:
        with contextlib.suppress(OSError):
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")

    def peak(self) -> int | None:
        try:
            with open("/proc/self/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        except (ImportError, OSError):
            return None


class CudaMemoryProbe:
    """Peak CUDA memory allocated by torch on one device."""

    def __init__(self, device: object) -> None:
        self.device = device

    def reset(self) -> None:
        import torch

        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int | None:
        import torch

        torch.cuda.synchronize(self.device)
        return int(torch.cuda.max_memory_allocated(self.device))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxgate bench engine", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--weights",
        default="offline",
        help="tiny (random test model), offline (packaged int8 weights, converted), auto, hub, or a path",
    )
    parser.add_argument("--batch-sizes", default="1,2,4,8", help="comma-separated batch sizes")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: one per core)")
    parser.add_argument("--dtype", default="float32", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--seconds", type=float, default=60.0, help="time budget for the whole sweep")
    parser.add_argument("--phonemes", type=int, default=100, help="phonemes per item (all items equal)")
    parser.add_argument("--cache-dir", default=None, help="where converted offline weights are cached")
    parser.add_argument(
        "--out",
        default=None,
        help="Markdown output (default benchmarks/results/engine-<host>.md; '-' writes nothing)",
    )
    return parser


def _default_out() -> Path:
    from gateway.config import REPO_ROOT

    host = platform.node().split(".")[0] or "host"
    return Path(REPO_ROOT) / "benchmarks" / "results" / f"engine-{host}.md"


def _make_engine(args: argparse.Namespace, max_batch: int) -> object:
    from gateway.engines.kokoro import KokoroEngine

    common = dict(
        device=args.device,
        num_threads=args.threads or None,
        max_batch_size=max_batch,
        preferred_batch_size=1,  # the sweep measures; no probe inside warmup
        dtype=args.dtype,
    )
    if args.weights == "tiny":
        return KokoroEngine.tiny(seed=0, **common)
    # Imported late: it pulls in the weights machinery only when real weights are asked for.
    from gateway.engines.weights import build_kmodel, load_kokoro

    loaded = load_kokoro(args.weights, cache_dir=args.cache_dir)
    return KokoroEngine(build_kmodel(loaded), loaded.voices, weights_source=loaded.source, **common)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep; returns a process exit status (0 ok, 2 bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        sizes = tuple(sorted({int(s) for s in args.batch_sizes.split(",") if s.strip()}))
    except ValueError:
        parser.error(f"--batch-sizes wants integers, got {args.batch_sizes!r}")
    if not sizes or min(sizes) < 1:
        parser.error("--batch-sizes must be positive")

    import torch

    from gateway.engines.kokoro import device_name
    from gateway.engines.probe import probe_batch_sizes

    engine = _make_engine(args, max(sizes))
    engine.warmup()
    device = engine.device
    memory = CudaMemoryProbe(device) if device.type == "cuda" else RssProbe()
    result = probe_batch_sizes(
        engine, sizes, seconds_budget=args.seconds, num_phonemes=args.phonemes, memory_probe=memory
    )

    facts = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "voxgate bench engine " + shlex.join(list(sys.argv[1:] if argv is None else argv)),
        "device": f"{device} ({device_name(device)})",
        "cpu": device_name(torch.device("cpu")) + f", {os.cpu_count()} logical cores",
        "threads": str(engine.num_threads) if device.type == "cpu" else "-",
        "dtype": engine.dtype,
        "torch": torch.__version__,
        "weights": engine.weights_source,
        "items": f"{args.phonemes} phonemes each, equal lengths",
        "allocator": os.environ.get("LD_PRELOAD", "") or "default (glibc malloc)",
    }
    header = "\n".join(f"- {key}: {value}" for key, value in facts.items())
    report = f"# Engine throughput by batch size\n\n{header}\n\n{result}\n"
    print(report)
    out = args.out if args.out is not None else str(_default_out())
    if out != "-":
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report, encoding="utf-8")
        print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
