"""``voxgate bench gpu-check --device cpu --smoke``: every step of the GPU check, end to end, tiny."""

from __future__ import annotations

from pathlib import Path

from gateway.bench.__main__ import main


def test_the_gpu_check_smoke_size_runs_end_to_end_on_cpu_and_writes_one_report(tmp_path: Path) -> None:
    out = tmp_path / "gpu-check.md"
    assert main(["gpu-check", "--device", "cpu", "--smoke", "--out", str(out)]) == 0
    report = out.read_text(encoding="utf-8")
    assert "weights: tiny random weights (smoke)" in report
    sweep = [line for line in report.splitlines() if line.startswith(("| 1 |", "| 2 |")) and "batched" not in line and "x |" not in line]
    assert len(sweep) == 2  # one row per batch size, with its op count
    assert "reduced precision runs on CUDA only" in report
    # CUDA graphs on CPU: the bucket-padded decoder against eager, one row per batch size, within 1e-4.
    graphs = report.split("## CUDA graphs")[1].split("##")[0]
    rows = [line.split("|") for line in graphs.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert len(rows) == 2 and all(float(row[5]) < 1e-4 for row in rows)
    assert "exit status 0" in report and "| 1 | batched |" in report
