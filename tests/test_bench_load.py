"""``voxgate bench load``: a smoke run at N = 1-2 with the tiny model and all three modes, plus the
pure parts (scripts, playback model). Timings are measured, never asserted."""

from __future__ import annotations

import json
import random
from pathlib import Path

from gateway.bench import load
from gateway.config import REPO_ROOT


def test_scripts_are_deterministic_and_fragments_rebuild_the_text() -> None:
    kwargs = {"utterances": 2, "words_per_second": 20.0, "min_words": 12, "think_seconds": 1.0, "ramp_seconds": 2.0}
    first = load.session_script(7, 3, **kwargs)
    assert first == load.session_script(7, 3, **kwargs)
    assert first != load.session_script(7, 4, **kwargs)
    for turn in first["turns"]:
        assert "".join(turn["fragments"]) == turn["text"]
        assert turn["offsets"] == sorted(turn["offsets"])
        assert turn["text"][-1] in ".?!"


def test_fragments_look_like_llm_tokens() -> None:
    text = load.make_utterance(random.Random(1), min_words=30)
    fragments = [f for f, _ in load.make_fragments(text, random.Random(2))]
    assert len(fragments) > len(text.split())  # long words are split
    assert all(0 < len(f.strip()) <= 6 for f in fragments)


def test_playback_counts_a_late_frame_as_one_underrun_of_its_lateness() -> None:
    sr = 24_000
    frames = [(0.0, 0, sr), (0.5, sr, sr), (2.5, 2 * sr, sr)]  # the third second arrives 0.5 s late
    played = load.playback(frames, sample_rate=sr)
    assert played["underruns"] == 1
    assert abs(played["underrun_s"] - 0.5) < 1e-9
    assert abs(played["end"] - 3.5) < 1e-9
    assert load.playback(frames, sample_rate=sr, jitter_s=0.5)["underruns"] == 0


def test_playback_of_a_context_cut_by_the_deadline_counts_the_dry_tail() -> None:
    played = load.playback([(0.0, 0, 24_000)], complete=False, until=3.0)
    assert played["underruns"] == 1 and abs(played["underrun_s"] - 2.0) < 1e-9


def test_bench_load_smoke_run_writes_table_json_and_plot(tmp_path: Path) -> None:
    rc = load.main(
        [
            "--config", str(REPO_ROOT / "configs" / "test.toml"),
            "--engine", "tiny",
            "--sessions", "1,2",
            "--modes", "batched,serial,locked",
            "--utterances-per-session", "1",
            "--words-per-utterance", "8",
            "--words-per-second", "30",
            "--ramp-seconds", "0",
            "--think-seconds", "0",
            "--max-seconds", "60",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    assert rc == 0
    written = {p.suffix: p for p in tmp_path.iterdir()}
    assert set(written) == {".md", ".json", ".png"}
    assert written[".md"].name.startswith("load-tiny-")
    assert written[".png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    markdown = written[".md"].read_text()
    assert "| " + " | ".join(load.TABLE_COLUMNS) + " |" in markdown
    assert "Largest N sustained" in markdown and "Machine:" in markdown

    result = json.loads(written[".json"].read_text())
    cells = {(c["mode"], c["sessions"]): c for c in result["cells"]}
    assert set(cells) == {(m, n) for m in ("batched", "serial", "locked") for n in (1, 2)}
    for (mode, n), cell in cells.items():
        assert cell["contexts"] == n, (mode, n)
        assert cell["incomplete"] == 0 and not cell["truncated"] and not cell["errors"], (mode, n)
        assert cell["audio_s"] > 0 and cell["ttfa_ms"]["p95"] is not None
        assert cell["mean_batch"] is not None and cell["mean_batch"] >= 1
    assert set(result["summary"]["sustained"]) == {"batched", "serial", "locked"}
    assert result["machine"]["logical_cores"] >= 1
