"""``voxgate bench attack`` at toy size: one short scenario against a real server subprocess."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.bench.attack import main


def test_bench_attack_runs_a_scenario_and_writes_its_report(tmp_path: Path) -> None:
    assert main(["--only", "error_flood", "--seconds", "2", "--out", str(tmp_path)]) == 0
    (report,) = tmp_path.glob("attack-tiny-*.json")
    scenario = json.loads(report.read_text())["scenarios"][0]
    assert scenario["name"] == "error_flood" and scenario["alive"]
    assert scenario["ttfa_before_s"] is not None and scenario["ttfa_during_s"] is not None
    # A flood of thousands of rejected messages is logged a handful of times, not per message.
    assert scenario["observed"]["sent"] > 100 and scenario["log_lines"] < 100
