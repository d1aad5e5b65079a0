"""The ``voxgate`` command: serve, say, voices, danmaku, bench, probe, convert-weights, ray."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from gateway.config import Config, ConfigError, load_config, parse_overrides
from gateway.protocol import STREAM_PATH

__all__ = ["main", "build_parser", "config_from_args"]


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file (default: $VOXGATE_CONFIG or configs/default.toml)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override any setting; repeatable")
    parser.add_argument("--engine", choices=["kokoro", "tiny", "fake", "realtimetts", "ray"], help="engine.kind")
    parser.add_argument("--weights", help="engine.weights: auto, offline, hub or a path")
    parser.add_argument("--device", help="engine.device: auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--log-level", default=None, help="debug, info, warning, error")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxgate", description="WebSocket real-time voice gateway (Kokoro-82M)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway and its demo page")
    _add_config_flags(serve)
    serve.add_argument("--host", help="server.host")
    serve.add_argument("--port", type=int, help="server.port")

    voices = sub.add_parser("voices", help="list the voices of the configured engine (or of a server with --url)")
    _add_config_flags(voices)
    voices.add_argument("--url", help=f"ask a running server instead, e.g. ws://127.0.0.1:8765{STREAM_PATH}")

    say = sub.add_parser("say", help="speak text into a WAV file, through a server or --local")
    _add_config_flags(say)
    say.add_argument("text")
    say.add_argument("-o", "--output", default="out.wav")
    say.add_argument("--url", default=f"ws://127.0.0.1:8765{STREAM_PATH}")
    say.add_argument("--local", action="store_true", help="run the engine in-process instead of a server")
    say.add_argument("--voice")
    say.add_argument("--speed", type=float, default=1.0)
    say.add_argument("--lang")

    probe = sub.add_parser("probe", help="measure audio-seconds per second per batch size on this device")
    _add_config_flags(probe)
    probe.add_argument("--batch-sizes", default="1,2,4,8")

    convert = sub.add_parser("convert-weights", help="convert the offline int8 ONNX weights into the KModel cache")
    convert.add_argument("--cache-dir")
    convert.add_argument("--force", action="store_true")

    from gateway.integrations.danmaku_cli import add_parser as add_danmaku_parser

    add_danmaku_parser(sub, _add_config_flags)

    from gateway.ray_cli import add_parser as add_ray_parser

    add_ray_parser(sub)

    bench = sub.add_parser("bench", help="benchmarks: engine, load, soak, attack, codecs, danmaku, npc, ray-hop (voxgate bench --help)", add_help=False)
    bench.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = dict(parse_overrides(args.set))
    shortcuts = {
        "engine.kind": getattr(args, "engine", None),
        "engine.weights": getattr(args, "weights", None),
        "engine.device": getattr(args, "device", None),
        "server.host": getattr(args, "host", None),
        "server.port": getattr(args, "port", None),
        "server.log_level": getattr(args, "log_level", None),
    }
    overrides.update({k: v for k, v in shortcuts.items() if v is not None})
    return load_config(args.config, overrides=overrides)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    try:  # kokoro reconfigures loguru globally on import; keep its chatter out of our logs
        from loguru import logger as loguru_logger

        loguru_logger.disable("kokoro")
    except ImportError:
        pass


def port_in_use(host: str, port: int) -> OSError | None:
    """Whether ``host:port`` cannot be listened on (checked before loading a model for seconds)."""
    import socket

    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in infos[:1]:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
                probe.bind(address)
    except OSError as exc:
        return exc
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # Everything after "bench" is the benchmark's own (its --help included).
        from gateway.bench.__main__ import main as bench_main

        return bench_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "bench":
        from gateway.bench.__main__ import main as bench_main

        return bench_main(args.args)
    if args.command == "ray":
        from gateway.ray_cli import main as ray_main

        return ray_main(args)
    if args.command == "convert-weights":
        _setup_logging("info")
        from gateway.engines.weights import convert_offline_weights, default_cache_dir

        path = convert_offline_weights(args.cache_dir or default_cache_dir(), force=args.force)
        print(path)
        return 0
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"voxgate: {exc}", file=sys.stderr)
        return 2
    _setup_logging(config.server.log_level)
    if args.command == "serve":
        from gateway.server import run

        problem = port_in_use(config.server.host, config.server.port)
        if problem is not None:
            print(f"voxgate: cannot listen on {config.server.host}:{config.server.port}: {problem.strerror or problem}"
                  " (another server there? choose one with --port)", file=sys.stderr)
            return 1

        return run(config)
    if args.command in ("voices", "say"):
        from gateway.client import VoxgateClientError, VoxgateConnectionError
        from gateway.client_sync import list_voices, say_to_wav

        try:
            if args.command == "voices":
                for voice in list_voices(config, url=args.url):
                    print(voice)
            else:
                url = None if args.local else args.url
                say_to_wav(config, args.text, args.output, url=url, voice=args.voice, speed=args.speed, lang=args.lang)
                print(args.output)
        except (VoxgateClientError, VoxgateConnectionError, ValueError) as exc:
            print(f"voxgate: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "danmaku":
        from gateway.integrations.danmaku_cli import run as run_danmaku

        return run_danmaku(args, config)
    if args.command == "probe":
        from gateway.engines import create_engine
        from gateway.engines.probe import probe_batch_sizes

        engine = create_engine(config.engine)
        sizes = tuple(int(s) for s in args.batch_sizes.split(","))
        result = probe_batch_sizes(engine, sizes=sizes)
        print(result)
        return 0
    parser.error(f"unknown command {args.command}")
    return 2
