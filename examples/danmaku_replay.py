"""Replay a live-stream comment log through the danmaku responder into one WAV and a report.

    # against a running server
    python examples/danmaku_replay.py --url ws://127.0.0.1:8765 --time-scale 2
    # in-process (starts a gateway from configs/default.toml: the real Kokoro weights)
    python examples/danmaku_replay.py --local
    # in-process with the tiny random-weight model of the tests (noise, but the same decisions)
    python examples/danmaku_replay.py --local --config configs/test.toml --time-scale 2

Writes ``danmaku_out/stream.wav`` (the streamer's audio, silence between utterances, as it would have
sounded live), ``danmaku_out/report.json`` (every comment: spoken, merged or dropped with the reason)
and prints a readable summary. ``--time-scale 4`` replays four times faster than the log (TTLs, rate
limits and audio timing all scale with it, so the decisions are the same as live, given an engine
fast enough). The whole log is read before the session starts: to feed comments live (stdin, HTTP,
WebSocket, Twitch) and hear them in OBS, use ``voxgate danmaku`` (docs/danmaku.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.client import VoxgateClient  # noqa: E402
from gateway.integrations.danmaku import DanmakuConfig, DanmakuReport, WavSink, load_comments, replay  # noqa: E402

__all__ = ["main"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", nargs="?", default=str(REPO / "examples" / "comments.jsonl"), help="JSON-lines comment log")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", default="ws://127.0.0.1:8765", help="a running voxgate server")
    where.add_argument("--local", action="store_true", help="run a gateway in-process instead")
    parser.add_argument("--config", default=None, help="TOML config: its [danmaku] policy, and the gateway for --local (default: configs/default.toml)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override (danmaku.ttl_chat_s=5, ...)")
    parser.add_argument("--token", default=None, help="bearer token for --url")
    parser.add_argument("--out", default="danmaku_out", help="output folder (stream.wav, report.json)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="replay this many times faster than the log")
    parser.add_argument("--voice", default=None)
    parser.add_argument(
        "--streamer", action="append", default=None, help="streamer name(s) that make a mention (default: Mika, 米卡)"
    )
    parser.add_argument("--ttl-chat", type=float, default=None, help="seconds an ordinary comment may wait")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def _overrides(items: list[str]) -> dict[str, Any]:
    from gateway.config import ConfigError, parse_overrides

    try:
        return dict(parse_overrides(items))
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None


async def run(args: argparse.Namespace) -> DanmakuReport:
    comments = load_comments(args.log)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sink = WavSink(out / "stream.wav")
    from dataclasses import replace

    from gateway.config import load_config

    # The policy is the config's [danmaku] section (configs/danmaku.toml); flags override it.
    config: DanmakuConfig = load_config(args.config, overrides=_overrides(args.set)).danmaku
    if args.streamer or not config.streamer_names:
        config = replace(config, streamer_names=tuple(args.streamer or ("Mika", "米卡")))
    if args.ttl_chat is not None:
        config = replace(config, ttl_chat_s=args.ttl_chat)

    async def go(client: VoxgateClient) -> DanmakuReport:
        print(f"session {client.session_id}: languages {', '.join(client.langs)}; {len(comments)} comments", file=sys.stderr)
        # The first use of a language loads its G2P (seconds, on the server's one G2P thread, which
        # would hold up every other line meanwhile): do it before the clock starts.
        warmups = {"en": "Starting.", "zh": "开始。", "ja": "はじめ。"}
        for lang in [lang for lang in warmups if lang in client.langs]:
            await client.speak(warmups[lang], lang=lang).read_all()
        return await replay(comments, client, sink, config=config, time_scale=args.time_scale, voice=args.voice)

    if args.local:
        from gateway.config import load_config
        from gateway.server import Gateway

        overrides = {"server.host": "127.0.0.1", "server.port": 0, **_overrides(args.set)}
        async with Gateway(load_config(args.config, overrides=overrides)) as gateway:
            async with VoxgateClient.local(gateway) as client:
                report = await go(client)
    else:
        async with VoxgateClient(args.url, token=args.token) as client:
            report = await go(client)
    sink.close()
    document = {
        "log": str(args.log),
        "time_scale": args.time_scale,
        "wav": str(sink.path),
        "wav_seconds": round(sink.duration_s, 3),
        **report.to_dict(),
    }
    (out / "report.json").write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    report = asyncio.run(run(args))
    print(report.summary(max_lines=40))
    print(f"\nwrote {Path(args.out) / 'stream.wav'} and {Path(args.out) / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
