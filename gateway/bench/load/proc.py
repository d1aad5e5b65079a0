"""``voxgate bench load``, measuring processes and the machine from ``/proc`` (Linux; zeros or None
elsewhere): RSS and its peak, the machine's busy CPU time, waiting for quiet between cells."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import time

__all__ = ["QUIET_CORES", "cpu_busy_s", "release_garbage", "reset_peak_rss", "status_kib", "wait_for_quiet"]

#: Other processes' CPU load (cores) below which the machine counts as quiet for a cell.
QUIET_CORES = 0.3


def status_kib(field: str, pid: str = "self") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_busy_s() -> float | None:
    """Seconds of non-idle CPU time of the whole machine so far (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def reset_peak_rss() -> bool:
    """Restart VmHWM at the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


def release_garbage() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc: hand freed arenas back, so RSS starts low


def wait_for_quiet(max_wait_s: float, *, threshold_cores: float = QUIET_CORES) -> float | None:
    """Wait (up to ``max_wait_s``) until the machine's CPU, measured over 1 s, is below
    ``threshold_cores`` busy; we are idle between cells, so that is other processes' load.
    Returns the last load seen (cores), None where /proc/stat is unreadable."""
    deadline = time.monotonic() + max_wait_s
    while True:
        before, t0 = cpu_busy_s(), time.monotonic()
        time.sleep(1.0)
        after, t1 = cpu_busy_s(), time.monotonic()
        if before is None or after is None:
            return None
        load = (after - before) / (t1 - t0)
        if load < threshold_cores or time.monotonic() >= deadline:
            return load
