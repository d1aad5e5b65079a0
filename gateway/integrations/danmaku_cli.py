"""``voxgate danmaku``: read a live stream's comments aloud, live (see ``docs/danmaku.md``).

    # a gateway in-process (configs/default.toml: the offline Kokoro weights), comments on stdin
    chatbot | voxgate danmaku --local --stdin
    # against a running gateway; a chat bot posts to http://127.0.0.1:8790/comments
    voxgate danmaku --url ws://127.0.0.1:8765/v1/stream --config configs/danmaku.toml
    # OBS: add a Browser source http://127.0.0.1:8790/overlay (it plays the voice and shows the comment)

Events go to stdout as JSON lines (``ready``, ``queued``/``merged``/``dropped``, ``speaking``,
``spoken``, ``error``), the summary to stderr at the end. With ``--stdin`` the command ends when stdin
does (after speaking out what is queued); otherwise on Ctrl+C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gateway.protocol import STREAM_PATH

__all__ = ["add_parser", "run", "CommandSink"]

logger = logging.getLogger("voxgate.integrations.danmaku")


def add_parser(sub: Any, add_config_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``voxgate danmaku`` on the CLI's subparsers (light: nothing heavy is imported)."""
    parser = sub.add_parser("danmaku", help="read live-stream comments aloud: stdin/HTTP/WebSocket in, OBS overlay out")
    add_config_flags(parser)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", default=f"ws://127.0.0.1:8765{STREAM_PATH}", help="a running voxgate gateway")
    where.add_argument("--local", action="store_true", help="run a gateway in-process from the same config")
    parser.add_argument("--token", default=None, help="bearer token for --url")
    parser.add_argument("--stdin", action="store_true", help="read comments as JSON lines from stdin; end with it")
    parser.add_argument("--no-listen", action="store_true", help="no HTTP/WebSocket endpoint and no overlay")
    parser.add_argument("--listen-port", type=int, default=None, help="danmaku.listen_port (0: any free port)")
    parser.add_argument("--streamer", action="append", default=None, help="danmaku.streamer_names (repeatable)")
    parser.add_argument("--wav", default=None, help="also write the stream's audio to this WAV at the end")
    parser.add_argument("--report", default=None, help="write the JSON report here at the end")
    parser.add_argument("--play-cmd", default=None, help='play on the sound card through a command reading s16le mono PCM on stdin, e.g. "aplay -q -t raw -f S16_LE -r 24000 -c 1"')
    parser.add_argument("--twitch", default=None, metavar="CHANNEL", help="also read a Twitch channel's chat (anonymous IRC)")
    parser.add_argument("--twitch-server", default="irc.chat.twitch.tv:6667", metavar="HOST:PORT")


def run(args: argparse.Namespace, config: Any) -> int:
    """The command; ``config`` is the loaded ``gateway.config.Config``."""
    from dataclasses import replace

    overrides: dict[str, Any] = {}
    if args.listen_port is not None:
        overrides["listen_port"] = args.listen_port
    if args.streamer:
        overrides["streamer_names"] = tuple(args.streamer)
    if overrides:
        config = replace(config, danmaku=replace(config.danmaku, **overrides))
    try:
        return asyncio.run(_main(args, config))
    except KeyboardInterrupt:
        return 130


class CommandSink:
    """The stream's audio to a player command's stdin as s16le mono PCM (``aplay``, ``pw-play``,
    ``ffplay``): the sound card. Audio is written as it arrives (the pipe buffers it; the responder
    keeps at most about one utterance ahead); silences between utterances are not written."""

    def __init__(self, command: str) -> None:
        self.argv = shlex.split(command)
        self._process: asyncio.subprocess.Process | None = None
        self.num_samples = 0

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(*self.argv, stdin=asyncio.subprocess.PIPE)

    def write(self, samples: np.ndarray, sample_rate: int, start_s: float) -> None:
        from gateway.audio import encode_samples

        process = self._process
        if process is None or process.stdin is None or process.stdin.is_closing():
            return
        process.stdin.write(encode_samples(np.asarray(samples, dtype=np.float32), "pcm_s16le"))
        self.num_samples += len(samples)

    async def close(self) -> int | None:
        """Let the player finish what it was given; returns its exit status."""
        process = self._process
        if process is None:
            return None
        if process.stdin is not None:
            with contextlib.suppress(ConnectionError):
                await process.stdin.drain()
            process.stdin.close()
        try:
            return await asyncio.wait_for(process.wait(), 120)
        except TimeoutError:
            process.kill()
            return await process.wait()


def _print_event(event: dict[str, Any]) -> None:
    import orjson

    sys.stdout.write(orjson.dumps({k: v for k, v in event.items() if v is not None}).decode() + "\n")
    sys.stdout.flush()


async def _main(args: argparse.Namespace, config: Any) -> int:
    from gateway.client import VoxgateClient, VoxgateConnectionError

    if args.local:
        from gateway.server import Gateway

        async with Gateway(config.replace({"server.port": 0})) as gateway, VoxgateClient.local(gateway) as client:
            return await _serve(args, config, client)
    try:
        async with VoxgateClient(args.url, token=args.token) as client:
            return await _serve(args, config, client)
    except VoxgateConnectionError as exc:
        print(f"voxgate danmaku: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1


async def _serve(args: argparse.Namespace, config: Any, client: Any) -> int:
    from gateway.integrations.danmaku import WavSink
    from gateway.integrations.danmaku_live import LiveDanmaku, read_json_lines

    sinks: list[Any] = []
    wav = WavSink(args.wav) if args.wav else None
    if wav is not None:
        sinks.append(wav)
    player = CommandSink(args.play_cmd) if args.play_cmd else None
    if player is not None:
        await player.start()
        sinks.append(player)
    await _warm_up(client)
    live = LiveDanmaku(config.danmaku, client, sinks=tuple(sinks), listen=not args.no_listen, on_event=_print_event)
    try:
        await live.start()
    except OSError as exc:
        await live.stop()
        print(f"voxgate danmaku: cannot listen on {config.danmaku.listen_host}:{config.danmaku.listen_port}: {exc}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[Any]] = []
    if args.twitch:
        from gateway.integrations.danmaku_twitch import TwitchChat

        host, _, port = args.twitch_server.rpartition(":")
        chat = TwitchChat(args.twitch, host=host or "irc.chat.twitch.tv", port=int(port or 6667))
        tasks.append(loop.create_task(chat.feed(lambda c: live.submit(c, source="twitch")), name="danmaku-twitch"))
    ready = {"event": "ready", "session_id": client.session_id, "langs": client.langs}
    if live.port is not None:
        ready.update(comments=f"{live.base_url}/comments", overlay=f"{live.base_url}/overlay")
    _print_event(ready)
    print(f"voxgate danmaku: ready ({', '.join(f'{k} {v}' for k, v in ready.items() if k in ('comments', 'overlay'))})", file=sys.stderr)
    try:
        if args.stdin:
            feed = loop.create_task(live.feed_lines(read_json_lines(sys.stdin.buffer)), name="danmaku-stdin")
            waiter = loop.create_task(stop.wait())
            await asyncio.wait({feed, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if feed.done():
                await live.drain()
            else:
                feed.cancel()
        else:
            await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await live.stop()
        if player is not None:
            await player.close()
    report = live.policy.report
    if wav is not None and wav.sample_rate is not None:
        wav.close()
    if args.report:
        import orjson

        Path(args.report).write_bytes(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2))
    print(report.summary(max_lines=20), file=sys.stderr)
    return 0


async def _warm_up(client: Any) -> None:
    # The first use of a language loads its G2P (seconds, on the server's one G2P thread, holding up
    # every line meanwhile): load them before comments arrive; the mixed line loads the siblings.
    warmups = [("en", "Thank you 小明 for it."), ("en", "I love すし."), ("zh", "开始 ok。"), ("ja", "はじめ ok。")]
    for lang, text in warmups:
        if lang in client.langs:
            await client.speak(text, lang=lang).read_all()
