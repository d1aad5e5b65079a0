"""What machine a benchmark ran on: every recorded result names it."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import socket
import sys
from typing import Any

__all__ = ["machine_info", "describe_machine"]


def machine_info() -> dict[str, Any]:
    """Facts about this machine for benchmark reports: CPU and its vector flags, cores, RAM, OS,
    allocator, package versions, torch threads and GPU when torch is loaded."""
    cpu = ""
    flags: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "cpu": cpu or platform.processor(),
        "cpu_flags": sorted(flags & {"avx", "avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma"}),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": round(mem_kib / 2**20, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "allocator": os.environ.get("LD_PRELOAD") or "glibc malloc",
    }
    with contextlib.suppress(OSError), open("/proc/loadavg") as f:
        info["loadavg_at_end"] = " ".join(f.read().split()[:3])
    for package in ("torch", "websockets", "numpy", "uvloop"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[package] = importlib.metadata.version(package)
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def describe_machine(info: dict[str, Any] | None = None) -> str:
    """One line for logs and summaries."""
    info = info or machine_info()
    return (
        f"{info['host']}: {info['cpu']}, {info['usable_cores']} cores, {info['ram_gib']} GiB, "
        f"Python {info['python']}, allocator {info['allocator']}"
    )
