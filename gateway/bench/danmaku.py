"""``voxgate bench danmaku``: a recorded comment log replayed live through the danmaku responder.

What a streamer's viewers experience: for each spoken utterance, the time from its first comment's
arrival to its audio starting in the stream (``wait_s``: synthesis, and waiting behind earlier
speech), as p50/p95/max; and what happened to every comment: spoken, merged, dropped by reason.
The gateway runs in-process from the config (default ``configs/default.toml``: the offline Kokoro
weights), the log is ``examples/comments.jsonl``, replayed at its own pace (``--time-scale 1``) and
cut at ``--seconds`` of the log. Writes ``benchmarks/results/danmaku-<engine>-<host>-<stamp>.{json,md}``
with the machine.

    python -m gateway bench danmaku --seconds 60
    python -m gateway bench danmaku --config configs/test.toml --seconds 10 --out -   # tiny model, no file
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from gateway.bench.machine import describe_machine, machine_info
from gateway.config import REPO_ROOT, load_config, parse_overrides

__all__ = ["main", "run_bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxgate bench danmaku", description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", default=str(REPO_ROOT / "examples" / "comments.jsonl"), help="JSON-lines comment log")
    parser.add_argument("--config", default=None, help="TOML config (default configs/default.toml: real weights)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--seconds", type=float, default=60.0, help="replay the log's first N seconds (0: all)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="replay this many times faster (1: live)")
    parser.add_argument("--out", default=None, help="result path without suffix (default benchmarks/results/...; '-' writes nothing)")
    parser.add_argument("--note", default="", help="a line about the conditions (e.g. other work on the CPU)")
    return parser


async def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.client import VoxgateClient
    from gateway.integrations.danmaku import WavSink, load_comments, replay
    from gateway.server import Gateway

    config = load_config(args.config, overrides={"server.port": 0, **parse_overrides(args.set)})
    if not config.danmaku.streamer_names:  # the streamer of examples/comments.jsonl
        config = config.replace({"danmaku.streamer_names": ["Mika", "米卡"]})
    comments = [c for c in load_comments(args.log) if args.seconds <= 0 or c.at < args.seconds]
    sink = WavSink(Path("/dev/null"))
    started = time.perf_counter()
    async with Gateway(config) as gateway, VoxgateClient.local(gateway) as client:
        for lang, text in (("en", "Thank you 小明 for it."), ("zh", "开始 ok。"), ("ja", "はじめ。")):
            if lang in client.langs:
                await client.speak(text, lang=lang).read_all()
        warm_s = time.perf_counter() - started
        report = await replay(comments, client, sink, config=config.danmaku, time_scale=args.time_scale,
                              lookahead_s=config.danmaku.lookahead_s)
        engine = gateway.engine.describe() if gateway.engine is not None else config.engine.kind
    data = report.to_dict()
    return {
        "benchmark": "danmaku",
        "log": str(args.log),
        "log_seconds": args.seconds,
        "time_scale": args.time_scale,
        "engine": engine,
        "engine_kind": config.engine.kind,
        "note": args.note,
        "warm_up_s": round(warm_s, 2),
        "machine": machine_info(),
        "num_comments": data["num_comments"],
        "num_utterances": data["num_utterances"],
        "num_comments_spoken": data["num_comments_spoken"],
        "num_merged_into_spoken": sum(m["count"] - 1 for m in data["merged"]),
        "dropped_by_reason": data["dropped_by_reason"],
        "merged_dropped": data["merged_dropped"],
        "wait_s": data["wait_s"],
        "audio_s": round(sum((s.audio_ms or 0) for s in report.spoken) / 1000, 2),
        "summary": report.summary(max_lines=60),
        "spoken": [{"text": s.text, "said": s.speech, "count": s.count, "priority": s.priority, "lang": s.lang,
                    "first_at": s.first_at, "start_s": s.start_s, "wait_s": s.wait_s} for s in report.spoken],
    }


def to_markdown(result: dict[str, Any]) -> str:
    wait = result["wait_s"] or {}
    lines = [
        f"# voxgate bench danmaku ({result['engine_kind']})",
        "",
        f"- machine: {describe_machine(result['machine'])}; load average at end {result['machine'].get('loadavg_at_end', '?')}",
        f"- engine: {result['engine']}",
        f"- log: `{Path(result['log']).name}`, first {result['log_seconds']:g} s, time scale {result['time_scale']:g}",
        f"- note: {result['note'] or '-'}",
        "",
        "| comments | utterances | comments spoken | merged into spoken | audio s | arrival->start p50 | p95 | max |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {result['num_comments']} | {result['num_utterances']} | {result['num_comments_spoken']} | "
        f"{result['num_merged_into_spoken']} | {result['audio_s']} | {wait.get('p50', '-')} s | {wait.get('p95', '-')} s | {wait.get('max', '-')} s |",
        "",
        "Dropped by reason: " + (", ".join(f"{k} {v}" for k, v in result["dropped_by_reason"].items()) or "none"),
        "",
        "Merged, then dropped: " + (", ".join(f"{m['text']!r} x{m['count']} ({m['reason']})" for m in result["merged_dropped"]) or "none"),
        "",
        "```",
        result["summary"],
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = asyncio.run(run_bench(args))
    markdown = to_markdown(result)
    print(markdown)
    if args.out != "-":
        stem = args.out or str(
            REPO_ROOT / "benchmarks" / "results" / f"danmaku-{result['engine_kind']}-{result['machine']['host']}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        Path(stem + ".json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        Path(stem + ".md").write_text(markdown, encoding="utf-8")
        print(f"wrote {stem}.json and {stem}.md")
    return 0
