"""NPC voices for a game engine: the JSON-lines stdio bridge, or a scripted demo scene.

Bridge (what Godot/Unity spawn; commands on stdin, events on stdout, see docs/npc.md)::

    python examples/npc_bridge.py --url ws://127.0.0.1:8765
    python examples/npc_bridge.py --local --set engine.kind=tiny --audio wav --wav-dir npc_wav
    python examples/npc_bridge.py --url ws://127.0.0.1:8765 --sample-rate 48000 --format pcm_f32le
    python examples/npc_bridge.py --url ws://127.0.0.1:8765 --listen 127.0.0.1:8790   # Godot 3: examples/godot3

Demo (Python API: two NPCs, an interruption, viseme timelines, one WAV per line)::

    python examples/npc_bridge.py --demo --local --set engine.kind=tiny
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.client import VoxgateClient  # noqa: E402
from gateway.client_sync import write_wav  # noqa: E402
from gateway.integrations.npc import NpcEvent, NpcHook  # noqa: E402
from gateway.integrations.npc import main as bridge_main  # noqa: E402

__all__ = ["demo"]


async def demo(client: VoxgateClient, out: Path) -> None:
    """A guard is cut off by a new line of his own; a merchant talks over both."""
    out.mkdir(parents=True, exist_ok=True)

    def show(event: NpcEvent) -> None:
        if event.kind == "viseme":
            return  # printed per line below
        details = {k: v for k, v in event.data.items() if k not in ("samples", "pcm")}
        print(f"{event.npc:>8} {event.line_id:<12} {event.kind:<11} {details}")

    await client.speak("Ready.").read_all()  # warm-up: the first line of a fresh server is slow
    hook = NpcHook(client, on_event=show, keep_audio=True)
    voices = client.voices  # what this server has: offline, jf_alpha ... jm_kumo (see docs/npc.md)
    hook.configure("guard", voice=voices[-1], speed=0.9)
    hook.configure("merchant", voice=voices[0], speed=1.15)
    guard = await hook.say("guard", "Halt! Who goes there? State your name and your business, or turn back at once.")
    merchant = await hook.say("merchant", "Fresh apples! Two coins a basket, the best in the valley!")
    await asyncio.sleep(0.3)
    guard_again = await hook.say("guard", "Oh, it is you. Go on through.")  # interrupts the first line
    await hook.wait_idle()
    for handle in (guard, merchant, guard_again):
        timeline = " ".join(f"{v.viseme}@{v.start_ms:.0f}" for v in handle.visemes[:24])
        print(f"\n{handle.line_id} ({handle.outcome}, {handle.audio_ms:.0f} ms): {timeline} ...")
        if len(handle.samples()):
            print("  ->", write_wav(out / f"{handle.line_id}.wav", handle.samples(), handle.sample_rate))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--demo" not in argv:
        return bridge_main(argv)
    argv.remove("--demo")
    parser = argparse.ArgumentParser(description="scripted NPC scene")
    parser.add_argument("--url", default="ws://127.0.0.1:8765")
    parser.add_argument("--local", action="store_true")
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--out", default="npc_demo")
    args = parser.parse_args(argv)

    async def run() -> None:
        if not args.local:
            async with VoxgateClient(args.url, alignment=True) as client:
                await demo(client, Path(args.out))
            return
        from gateway.config import load_config
        from gateway.server import Gateway

        overrides: dict[str, Any] = {"server.host": "127.0.0.1", "server.port": 0}
        overrides.update(dict(item.split("=", 1) for item in args.set))
        async with Gateway(load_config(args.config, overrides=overrides)) as gateway:
            async with VoxgateClient.local(gateway, alignment=True) as client:
                await demo(client, Path(args.out))

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
