"""The bridge for game engines: NPC commands in, NPC events out, one JSON object per line or message.

``serve_bridge`` runs the protocol of ``docs/npc.md`` over one connected ``VoxgateClient``; ``main``
(``python -m gateway.integrations.npc``) carries it over stdin/stdout (a game spawns the bridge and
pipes to it) or, with ``--listen``, over a local WebSocket (one message per command or event), for
engines that cannot pipe to a child process (Godot 3, Godot 4 before 4.3, browsers). Each WebSocket
connection gets its own voxgate session.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

import orjson

from gateway.integrations.npc.hook import LineHandle, NpcEvent, NpcHook, _slug
from gateway.integrations.npc.visemes import VISEMES
from gateway.pcm import to_pcm16
from gateway.protocol import SAMPLE_RATE

__all__ = ["AudioMode", "BRIDGE_FORMATS", "BRIDGE_SAMPLE_RATES", "serve_bridge", "serve_bridge_websocket", "main"]

logger = logging.getLogger("voxgate.integrations.npc")

AudioMode = Literal["stream", "wav", "none"]
#: Protocol v1 formats the bridge streams as they come (base64 in a field named by the format).
BRIDGE_FORMATS: tuple[str, ...] = ("pcm_s16le", "pcm_f32le")
#: Rates the bridge offers (the server resamples from the model's 24 kHz).
BRIDGE_SAMPLE_RATES: tuple[int, ...] = (16_000, 22_050, 24_000, 44_100, 48_000)


async def serve_bridge(
    client: Any,
    commands: AsyncIterable[str | bytes],
    emit: Callable[[dict[str, Any]], None],
    *,
    audio: AudioMode = "stream",
    wav_dir: str | Path | None = None,
) -> None:
    """Run the bridge protocol (``docs/npc.md``) over one connected client until ``commands`` ends
    (then lines in progress finish) or a ``quit`` command (then they are interrupted).

    ``commands`` yields JSON lines; ``emit`` gets each event as a dict, ready for ``orjson.dumps``.
    ``audio``: ``"stream"`` sends ``audio`` events with base64 PCM in the session's format (field
    ``pcm_s16le`` or ``pcm_f32le``); ``"wav"`` writes each
    finished line to ``wav_dir/<line_id>.wav`` and names the file in its ``done`` event; ``"none"``
    sends no audio (timings only).
    """
    if audio == "wav":
        wav_dir = Path(wav_dir or "npc_wav")
        wav_dir.mkdir(parents=True, exist_ok=True)

    def on_event(event: NpcEvent) -> None:
        data = event.to_dict()
        if event.kind == "audio":
            pcm = data.pop("pcm")
            samples = data.pop("samples")
            audio_format = data.pop("format")
            if audio_format not in BRIDGE_FORMATS:  # ulaw, from a client made elsewhere: widen it
                audio_format = "pcm_s16le"
                pcm = to_pcm16(samples).tobytes()
            data[audio_format] = base64.b64encode(pcm).decode("ascii")
        elif event.kind == "done" and audio == "wav":
            assert wav_dir is not None
            handle = hook_lines.get(event.line_id or "")
            if handle is not None:
                path = Path(wav_dir) / f"{_slug(event.line_id or 'line')}.wav"
                from gateway.client_sync import write_wav

                data["wav"] = str(write_wav(path, handle.samples(), handle.sample_rate).resolve())
        if event.kind in ("done", "interrupted", "error"):
            hook_lines.pop(event.line_id or "", None)
        emit(data)

    hook_lines: dict[str, LineHandle] = {}
    hook = NpcHook(client, on_event=on_event, stream_audio=audio == "stream", keep_audio=audio == "wav")
    emit({
        "event": "ready",
        "voices": list(client.voices),
        "langs": list(client.langs),
        "sample_rate": int(client.settings.get("sample_rate", SAMPLE_RATE)),
        "format": str(client.settings.get("format", "pcm_s16le")),
        "audio": audio,
        "visemes": list(VISEMES),
    })
    tasks: set[asyncio.Task[Any]] = set()

    def error(message: str, code: str = "bad_command", **where: Any) -> None:
        emit({"event": "error", "code": code, "message": message, **where})

    async def say(npc: str, text: str, line_id: str | None) -> None:
        try:
            handle = await hook.start(npc, text, line_id=line_id)
            hook_lines[handle.line_id] = handle
            if handle.done():  # ended before the map knew it (no audio at all)
                hook_lines.pop(handle.line_id, None)
        except ValueError as exc:
            error(str(exc), "bad_field", npc=npc, line_id=line_id)
        except Exception as exc:  # the client refused before the line existed
            error(str(exc), getattr(exc, "code", "internal_error"), npc=npc, line_id=line_id)

    def spawn(coro: Any) -> None:
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    quit_requested = False
    async for raw in commands:
        raw = raw.strip() if isinstance(raw, str) else raw.decode("utf-8", "replace").strip()
        if not raw:
            continue
        try:
            command = orjson.loads(raw)
        except orjson.JSONDecodeError:
            error("command is not valid JSON")
            continue
        if not isinstance(command, dict) or not isinstance(command.get("cmd"), str):
            error('command must be a JSON object with a "cmd" string')
            continue
        cmd = command["cmd"]
        npc = command.get("npc")
        if cmd in ("say", "interrupt", "configure") and (not isinstance(npc, str) or not npc):
            error(f'"{cmd}" needs an "npc" string')
            continue
        npc = str(npc)
        if cmd == "say":
            line = command.get("line")
            line_id = command.get("id")
            if not isinstance(line, str) or not line.strip():
                error('"say" needs a non-empty "line" string', npc=npc)
                continue
            if line_id is not None and (not isinstance(line_id, str) or not 1 <= len(line_id) <= 128):
                error('"id" must be a string of 1..128 characters', npc=npc)
                continue
            # Serialised per NPC inside the hook; the command loop goes on (an interrupt may follow).
            spawn(say(npc, line, line_id))
            await asyncio.sleep(0)  # let it take its NPC's lock before the next command
        elif cmd == "interrupt":
            spawn(hook.interrupt(npc))
            await asyncio.sleep(0)
        elif cmd == "configure":
            try:
                settings = hook.configure(
                    npc,
                    voice=command.get("voice"),
                    speed=_number(command.get("speed")),
                    lang=command.get("lang"),
                    priority=command.get("priority"),
                )
            except (ValueError, TypeError) as exc:
                error(str(exc), "bad_field", npc=npc)
                continue
            emit({"event": "configured", "npc": npc, "voice": settings.voice, "speed": settings.speed, "lang": settings.lang})
        elif cmd == "voices":
            emit({"event": "voices", "voices": list(client.voices)})
        elif cmd == "quit":
            quit_requested = True
            break
        else:
            error(f"unknown cmd {cmd!r}; expected say, interrupt, configure, voices or quit")
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    if quit_requested:
        await hook.close()
    else:
        await hook.wait_idle()
    emit({"event": "bye"})


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("speed must be a number")
    return float(value)


async def serve_bridge_websocket(
    connect: Callable[[], Any],
    host: str,
    port: int,
    *,
    audio: AudioMode = "stream",
    wav_dir: str | Path | None = None,
    on_listening: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the bridge protocol over WebSocket at ``host:port`` (port 0: any free port) until
    ``stop`` is set: each text message is a command, each event goes out as one text message.

    ``connect()`` returns a new, unconnected ``VoxgateClient`` (used as ``async with``) for each game
    connection. A game that disconnects counts as ``quit``: its lines are interrupted.
    ``on_listening`` gets the ``ws://`` URL once the socket is bound.
    """
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    async def handle(ws: ServerConnection) -> None:
        outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        async def send_events() -> None:
            while (event := await outbox.get()) is not None:
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(orjson.dumps(event).decode())

        async def commands() -> AsyncIterator[str | bytes]:
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    yield message
            yield b'{"cmd":"quit"}'  # the game went away: nobody listens to its lines any more

        sender = asyncio.create_task(send_events(), name="npc-bridge-ws-send")
        try:
            async with connect() as client:
                await serve_bridge(client, commands(), outbox.put_nowait, audio=audio, wav_dir=wav_dir)
        except Exception as exc:  # the voxgate server refused or went away: tell this game, keep serving
            logger.warning("NPC bridge connection failed: %s", exc)
            outbox.put_nowait({"event": "error", "code": getattr(exc, "code", "fatal"), "message": str(exc)})
        finally:
            outbox.put_nowait(None)
            await sender
            await ws.close()

    async with serve(handle, host, port, max_size=2**20) as server:
        bound = next(iter(server.sockets)).getsockname()
        if on_listening is not None:
            on_listening(f"ws://{host}:{bound[1]}")
        await (stop or asyncio.Event()).wait()


async def _stdin_lines() -> AsyncIterator[bytes]:
    """Lines of stdin, read on a daemon thread (portable: Windows pipes have no asyncio reader).

    The thread reads the file descriptor with ``os.read``, not ``sys.stdin.buffer``: after ``quit``
    the game usually keeps the pipe open, so the thread is still blocked in a read at interpreter
    shutdown, and a thread blocked inside the buffered reader holds its lock, on which Python's
    shutdown then aborts ("_enter_buffered_busy", exit 134). ``os.read`` holds no lock.
    """
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[bytes | None] = asyncio.Queue()
    fd = sys.stdin.fileno()

    def put(item: bytes | None) -> bool:
        try:
            loop.call_soon_threadsafe(lines.put_nowait, item)
        except RuntimeError:  # the loop is closed: the bridge has ended
            return False
        return True

    def read() -> None:
        pending = b""
        try:
            while chunk := os.read(fd, 65_536):
                *complete, pending = (pending + chunk).split(b"\n")
                if not all(put(line) for line in complete):
                    return
        except OSError:
            pass  # stdin closed under us: end of input
        if pending:
            put(pending)
        put(None)

    threading.Thread(target=read, name="npc-bridge-stdin", daemon=True).start()
    while (line := await lines.get()) is not None:
        yield line


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.integrations.npc``: the JSON-lines bridge on stdio, or on a WebSocket."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.integrations.npc",
        description="JSON-lines bridge for game NPC voices (commands on stdin, events on stdout, or both "
        "on a local WebSocket with --listen; see docs/npc.md)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", default="ws://127.0.0.1:8765", help="a running voxgate server")
    where.add_argument("--local", action="store_true", help="run a gateway in-process instead (no server needed)")
    parser.add_argument("--config", default=None, help="TOML config for --local")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override for --local")
    parser.add_argument("--token", default=None)
    parser.add_argument("--listen", default=None, metavar="HOST:PORT",
                        help="serve the bridge on a WebSocket instead of stdio (port 0: any; a 'listening' event gives the URL)")
    parser.add_argument("--audio", choices=("stream", "wav", "none"), default="stream", help="how audio reaches the game")
    parser.add_argument("--wav-dir", default="npc_wav", help="folder for --audio wav")
    parser.add_argument("--sample-rate", type=int, choices=BRIDGE_SAMPLE_RATES, default=SAMPLE_RATE, help="audio sample rate (Hz)")
    parser.add_argument("--format", choices=BRIDGE_FORMATS, default="pcm_s16le", help="sample format of 'audio' events")
    parser.add_argument("--frame-ms", type=int, default=100, help="audio per 'audio' event (10..1000 ms)")
    parser.add_argument("--voice", default=None, help="default voice for NPCs not configured")
    parser.add_argument("--no-warmup", action="store_true", help="skip the silent warm-up line before 'ready'")
    args = parser.parse_args(argv)
    listen: tuple[str, int] | None = None
    if args.listen is not None:
        host, _, port = args.listen.rpartition(":")
        if not port.isdigit():
            parser.error("--listen takes HOST:PORT, e.g. 127.0.0.1:8790")
        listen = (host or "127.0.0.1", int(port))
    # stdout carries events only: keep a private handle on it and send every stray print (a
    # library's, a RealtimeTTS engine's) to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    write_lock = threading.Lock()

    def emit(event: dict[str, Any]) -> None:
        with write_lock:
            out.write(orjson.dumps(event) + b"\n")

    async def run() -> None:
        from gateway.client import VoxgateClient

        options = dict(alignment=True, frame_ms=args.frame_ms, voice=args.voice, sample_rate=args.sample_rate, format=args.format)
        async with contextlib.AsyncExitStack() as stack:
            if args.local:
                from gateway.config import load_config
                from gateway.server import Gateway

                overrides: dict[str, Any] = {"server.host": "127.0.0.1", "server.port": 0}
                for item in args.set:
                    key, _, value = item.partition("=")
                    overrides[key.strip()] = value.strip()
                gateway = await stack.enter_async_context(Gateway(load_config(args.config, overrides=overrides)))

                def connect() -> Any:
                    return VoxgateClient.local(gateway, **options)
            else:
                def connect() -> Any:
                    return VoxgateClient(args.url, token=args.token, **options)

            client = await stack.enter_async_context(connect())
            if not args.no_warmup:
                # The first line of a fresh server pays for G2P and kernel set-up (seconds on a CPU):
                # pay it before 'ready', not on the game's first line.
                await client.speak("Ready.").read_all()
            if listen is None:
                await serve_bridge(client, _stdin_lines(), emit, audio=args.audio, wav_dir=args.wav_dir)
                return
            await client.close()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, AttributeError):  # Windows: Ctrl-C raises
                    loop.add_signal_handler(signum, stop.set)
            await serve_bridge_websocket(
                connect, *listen, audio=args.audio, wav_dir=args.wav_dir, stop=stop,
                on_listening=lambda url: emit({"event": "listening", "url": url}),
            )
            emit({"event": "bye"})

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        emit({"event": "error", "code": getattr(exc, "code", "fatal"), "message": str(exc)})
        return 1
    return 0
