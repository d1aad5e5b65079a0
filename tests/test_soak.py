"""The CI version of the soak: one minute of mixed load against a server subprocess."""

from __future__ import annotations

from gateway.bench.soak import run_soak


def test_one_minute_of_mixed_load_leaves_no_errors_and_flat_memory() -> None:
    report = run_soak(duration_s=60, engine="fake", clients=4, seed=1)
    print(report.summary())
    assert report.errors == []
    assert report.sessions >= 10 and report.contexts_done >= 10
    assert report.contexts_cancelled + report.abrupt_disconnects >= 1
    assert report.rss_flat, report.rss_mib
