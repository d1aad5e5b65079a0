"""``voxgate bench NAME``: benchmarks that write their results under ``benchmarks/results``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

#: Benchmark name -> the module whose ``main(argv)`` runs it (imported only when asked for: each pulls
#: its own heavy dependencies).
BENCHMARKS: dict[str, str] = {
    "engine": "gateway.bench.engine",
    "load": "gateway.bench.load",
    "soak": "gateway.bench.soak",
    "danmaku": "gateway.bench.danmaku",
    "codecs": "gateway.bench.codecs",
    "ray-hop": "gateway.bench.ray_mode",
    "npc": "gateway.bench.npc",
    "attack": "gateway.bench.attack",
    "gpu-check": "gateway.bench.gpucheck",
    "quality": "gateway.bench.quality",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = f"usage: voxgate bench {{{','.join(BENCHMARKS)}}} [options]  (--help after the name for options)"
    if argv[:1] in (["-h"], ["--help"]):
        print(usage)
        return 0
    if not argv or argv[0] not in BENCHMARKS:
        print(usage, file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[argv[0]])
    return int(module.main(argv[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
