"""``voxgate bench engine|load|soak|quality``: benchmarks that write their results under ``benchmarks/results``."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("engine", "load", "soak", "quality"):
        print("usage: voxgate bench {engine,load,soak,quality} [options]  (--help after the name for options)", file=sys.stderr)
        return 2
    if argv[0] == "soak":
        from gateway.bench.soak import main as soak_main

        return soak_main(argv[1:])
    if argv[0] == "quality":
        from gateway.bench.quality import main as quality_main

        return quality_main(argv[1:])
    if argv[0] == "engine":
        from gateway.bench.engine import main as engine_main

        return engine_main(argv[1:])
    from gateway.bench.load import main as load_main

    return load_main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
