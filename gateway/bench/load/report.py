"""``voxgate bench load``, the report: the table, the summary, the Markdown page, the plot, and
where they are written (``load-<engine>-<host>-<date>.{md,json,png}``)."""

from __future__ import annotations

import datetime as _dt
import json
import logging
from pathlib import Path
from typing import Any

__all__ = ["TABLE_COLUMNS", "fmt_ms", "plot", "render_markdown", "render_summary", "render_table", "write_results"]

logger = logging.getLogger("voxgate.bench.load")


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms" if value < 10_000 else f"{value / 1000:.1f} s"


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


TABLE_COLUMNS = [
    "N",
    "mode",
    "ctx",
    "TTFA p50",
    "TTFA p95",
    "TTFA p99",
    "piece p50",
    "piece p95",
    "longest pause p50",
    "longest pause max",
    "underruns",
    "underrun s",
    "audio-s/s",
    "mean batch",
    "busy",
    "peak RSS MiB",
    "GPU MiB",
    "other load",
    "status",
]


def render_table(result: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for cell in result["cells"]:
        if "skipped" in cell:
            row = [str(cell["sessions"]), cell["mode"]] + ["-"] * (len(TABLE_COLUMNS) - 3) + [f"skipped ({cell['skipped']})"]
        else:
            if cell["sustained"]:
                status = "ok"
            else:
                reasons = []
                if cell["truncated"]:
                    reasons.append("hit max-seconds")
                if cell["incomplete"]:
                    reasons.append(f"{cell['incomplete']} incomplete")
                if cell["errors"]:
                    reasons.append("errors: " + ",".join(cell["errors"]))
                if cell["underruns"]:
                    reasons.append("underruns")
                basis = cell["ttfa_piece_ms" if result["settings"]["sustain_basis"] == "piece" else "ttfa_ms"]["p95"]
                if basis is None or basis >= result["settings"]["ttfa_target_ms"]:
                    reasons.append("TTFA")
                status = "FAIL: " + ", ".join(reasons)
            row = [
                str(cell["sessions"]),
                cell["mode"],
                str(cell["contexts"]),
                fmt_ms(cell["ttfa_ms"]["p50"]),
                fmt_ms(cell["ttfa_ms"]["p95"]),
                fmt_ms(cell["ttfa_ms"]["p99"]),
                fmt_ms(cell["ttfa_piece_ms"]["p50"]),
                fmt_ms(cell["ttfa_piece_ms"]["p95"]),
                fmt_ms(cell.get("longest_pause_ms", {}).get("p50")),
                fmt_ms(cell.get("longest_pause_ms", {}).get("max")),
                str(cell["underruns"]),
                _fmt(cell["underrun_s"]),
                _fmt(cell["audio_per_s"]),
                _fmt(cell["mean_batch"]),
                "-" if cell["engine_busy"] is None else f"{100 * cell['engine_busy']:.0f}%",
                _fmt(cell["peak_rss_mib"], ".0f"),
                _fmt(cell["gpu_peak_mib"], ".0f"),
                _fmt(cell.get("foreign_cores"), ".2f"),
                status,
            ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def render_summary(result: dict[str, Any]) -> str:
    summary = result["summary"]
    basis = result["settings"]["sustain_basis"]
    target = result["settings"]["ttfa_target_ms"]
    lines = [
        f"Largest N sustained (no underrun, TTFA p95 < {target:.0f} ms; judged on `{basis}` TTFA, the other basis alongside):",
        "",
        "| mode | max N (piece TTFA) | max N (text TTFA) | max N without underrun (any TTFA) |",
        "|---|---|---|---|",
    ]
    for mode, entry in summary["sustained"].items():
        def show(e: dict[str, Any]) -> str:
            return (f">= {e['max_n']}" if e["all_tested_pass"] else str(e["max_n"])) if e["max_n"] else "0 (none)"

        no_underrun = show(entry["sustained_no_underrun"]) if "sustained_no_underrun" in entry else "-"
        lines.append(f"| {mode} | {show(entry['sustained_piece'])} | {show(entry['sustained_text'])} | {no_underrun} |")
    if summary["ratios"]:
        base = summary["reference_mode"]
        others = [m for m in result["settings"]["modes"] if m != base]
        header = ["N"]
        for mode in others:
            header += [f"TTFA p95 {mode}/{base}", f"piece p95 {mode}/{base}", f"audio-s/s {base}/{mode}"]
        lines += ["", f"Ratios against `{base}`, same run, same inputs:", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in summary["ratios"]:
            out = [str(row["sessions"])]
            for mode in others:
                out += [
                    _fmt(row.get(f"ttfa_p95_{mode}_over_{base}"), ".2f"),
                    _fmt(row.get(f"ttfa_piece_p95_{mode}_over_{base}"), ".2f"),
                    _fmt(row.get(f"audio_per_s_{base}_over_{mode}"), ".2f"),
                ]
            lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


def render_markdown(result: dict[str, Any], png_name: str | None) -> str:
    m = result["machine"]
    s = result["settings"]
    e = result["engine"]
    machine = (
        f"{m['cpu']} ({', '.join(m['cpu_flags'])}), {m['usable_cores']} usable of {m['logical_cores']} logical cores, "
        f"{m['ram_gib']} GiB RAM, {m['os']}, Python {m['python']}, torch {m.get('torch', '-')}"
        f"{' (' + str(m['torch_threads']) + ' threads)' if 'torch_threads' in m else ''}, allocator {m['allocator']}"
    )
    if "gpu" in m:
        machine += f", GPU {m['gpu']} ({m['gpu_memory_gib']} GiB)"
    engine = ", ".join(f"{k} {v}" for k, v in e.items())
    parts = [
        f"# voxgate load benchmark: {s['engine']} on {m['host']}, {result['started']}",
        "",
        f"`{result['command']}` ({result['duration_s']} s in all)",
        "",
        f"- Machine: {machine}.",
        f"- Engine: {engine}. Loaded once, shared by every cell.",
        (
            f"- Engine alone (batch 1, {result['calibration']['phonemes']} phonemes, {result['calibration']['audio_s']} s of audio): "
            f"{result['calibration']['audio_per_s']:.2f} audio-s/s, the ceiling for the cells' audio-s/s."
            if result.get("calibration")
            else "- Engine alone: not measured."
        ),
        (
            f"- Clients: {s['clients']}; voice {s.get('voice', '-')}; per session {s['utterances_per_session']} turns of >= {s['words_per_utterance']} words "
            f"at {s['words_per_second']} words/s in LLM-token fragments, next turn {s['think_seconds']} s (±50 %) after "
            f"playback ends; sessions start over {s['ramp_seconds']} s; seed {s['seed']}; frames {s['frame_ms']} ms; "
            f"jitter buffer {s['jitter_buffer_ms']} ms; at most {s['max_seconds']} s per cell."
        ),
        f"- Peak RSS while loading the engine: {result['load_peak_rss_mib']:.0f} MiB (the table's is per cell).",
    ]
    if s["simulate_rtf"]:
        parts.append(f"- **Simulated engine speed**: every batch stretched to {s['simulate_rtf']} x its audio seconds.")
    parts += ["", render_table(result), "", render_summary(result), ""]
    if png_name:
        parts += [f"![TTFA p95 and audio-s/s against N]({png_name})", ""]
    parts += [
        (
            "Columns: TTFA = first text sent -> first audio frame (p50/p95/p99 over all turns); piece = from when the "
            "text held the server's first speakable piece; underruns / underrun s = playhead stalls and their total "
            "length; audio-s/s = audio received by all clients / cell wall time; mean batch = pieces per engine batch; "
            "busy = engine time / wall time; peak RSS = the server process's peak during the cell; other load = "
            "CPU cores used by other processes on the machine during the cell (anything well above 0 makes that "
            "cell's timings suspect)."
        ),
        "",
    ]
    return "\n".join(parts)


def plot(result: dict[str, Any], path: Path) -> bool:
    """TTFA p95 (both bases), audio-s/s and underrun time against N, one line per mode."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        logger.warning("matplotlib not installed: no plot (pip install matplotlib)")
        return False
    cells = [c for c in result["cells"] if "skipped" not in c]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for mode in result["settings"]["modes"]:
        mine = sorted((c for c in cells if c["mode"] == mode), key=lambda c: c["sessions"])
        if not mine:
            continue
        n = [c["sessions"] for c in mine]
        (line,) = axes[0].plot(n, [c["ttfa_ms"]["p95"] or float("nan") for c in mine], marker="o", label=f"{mode}")
        axes[0].plot(n, [c["ttfa_piece_ms"]["p95"] or float("nan") for c in mine], marker="x", linestyle="--", color=line.get_color(), label=f"{mode} (piece)")
        axes[1].plot(n, [c["audio_per_s"] for c in mine], marker="o", label=mode, color=line.get_color())
        axes[2].plot(n, [c["underrun_s"] for c in mine], marker="o", label=mode, color=line.get_color())
    axes[0].axhline(result["settings"]["ttfa_target_ms"], color="grey", linewidth=0.8, linestyle=":")
    axes[0].set(title="TTFA p95 (solid: from first text; dashed: from first piece)", xlabel="sessions N", ylabel="ms")
    if any((c["ttfa_ms"]["p95"] or 0) > 0 for c in cells):
        axes[0].set_yscale("log")
        axes[0].yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axes[0].yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[1].set(title="aggregate audio-seconds per second", xlabel="sessions N", ylabel="audio-s/s")
    axes[2].set(title="total underrun time", xlabel="sessions N", ylabel="s")
    counts = sorted({c["sessions"] for c in cells}) or [1]
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.minorticks_off() if ax is not axes[0] else None
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"voxgate bench load: {result['settings']['engine']} on {result['machine']['cpu']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_results(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in result["machine"]["host"]) or "host"
    stamp = _dt.datetime.fromisoformat(result["started"]).strftime("%Y%m%d-%H%M%S")
    stem = f"load-{result['settings']['engine']}-{host}-{stamp}"
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md", "png": out_dir / f"{stem}.png"}
    has_png = plot(result, paths["png"])
    if not has_png:
        del paths["png"]
    paths["md"].write_text(render_markdown(result, paths["png"].name if has_png else None))
    paths["json"].write_text(json.dumps(result, indent=1))
    return paths
