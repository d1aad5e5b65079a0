"""``voxgate ray up|down|status``: a local Ray cluster with the engine replicas, for trying scale-out.

``up`` runs ``ray start --head`` (no dashboard, few CPUs: this is a laptop set-up) and deploys a Ray
Serve config file (default ``configs/ray-serve-cpu.yaml``) with ``serve run --non-blocking``; the
replicas stay up after the command returns. Front ends then run ``voxgate serve --set
engine.kind=ray``. ``down`` removes the Serve applications and stops the local Ray processes that
``ray start`` started; ``status`` prints ``serve.status()`` (``serve status`` needs the dashboard). Real clusters use ``serve deploy`` or KubeRay (docs/scale-out.md).

The ``ray`` and ``serve`` commands come with ``pip install 'voxgate[ray]'``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config import REPO_ROOT

__all__ = ["add_parser", "main"]

DEFAULT_CONFIG = REPO_ROOT / "configs" / "ray-serve-cpu.yaml"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ray = sub.add_parser("ray", help="a local Ray cluster with engine replicas: up, down, status")
    actions = ray.add_subparsers(dest="ray_command", required=True)
    up = actions.add_parser("up", help="ray start --head, then deploy the engine replicas")
    up.add_argument("--serve-config", default=str(DEFAULT_CONFIG), help="Ray Serve config file (default configs/ray-serve-cpu.yaml)")
    up.add_argument("--num-cpus", type=int, default=2, help="CPUs the local Ray may use (default 2)")
    up.add_argument("--num-gpus", type=int, default=None, help="GPUs the local Ray may use (default: Ray detects them)")
    actions.add_parser("down", help="remove the Serve applications and stop the local Ray")
    actions.add_parser("status", help="serve status of the local cluster")


def _tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(found).exists():
        raise SystemExit(f"voxgate: `{name}` not found; install the extra: pip install 'voxgate[ray]'")
    return found


def _run(argv: list[str]) -> int:
    # Ray's workers import gateway from this checkout, whatever the venv has installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))}
    print("+ " + " ".join(argv), flush=True)
    return subprocess.run(argv, env=env, cwd=REPO_ROOT, check=False).returncode


def main(args: argparse.Namespace) -> int:
    if args.ray_command == "up":
        start = [_tool("ray"), "start", "--head", f"--num-cpus={args.num_cpus}", "--include-dashboard=false", "--disable-usage-stats"]
        if args.num_gpus is not None:
            start.append(f"--num-gpus={args.num_gpus}")
        code = _run(start)
        if code != 0:
            return code
        code = _run([_tool("serve"), "run", "--non-blocking", "--address=auto", str(Path(args.serve_config).resolve())])
        if code == 0:
            print("voxgate: engine replicas deployed; front ends: voxgate serve --set engine.kind=ray", flush=True)
        return code
    if args.ray_command == "down":
        # `serve shutdown` asks the dashboard, which `up` does not start: use the Python API.
        _with_cluster(lambda serve: serve.shutdown())
        return _run([_tool("ray"), "stop"])
    if args.ray_command == "status":
        return _with_cluster(lambda serve: print(serve.status()))
    return 2


def _with_cluster(action: Callable[[Any], Any]) -> int:
    import ray
    from ray import serve

    try:
        ray.init(address="auto", log_to_driver=False)
    except ConnectionError as exc:
        print(f"voxgate: no local Ray cluster ({exc})", file=sys.stderr)
        return 1
    try:
        action(serve)
    finally:
        ray.shutdown()
    return 0
