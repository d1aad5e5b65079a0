"""``python -m gateway.bench.load``: the same as ``voxgate bench load`` (and the clients' child process)."""

from gateway.bench.load import main

raise SystemExit(main())
