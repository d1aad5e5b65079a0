"""Game NPC voices: per-NPC voice and speed, interruptible lines, viseme and word events.

One job per module:

- ``visemes``: the phoneme -> Oculus/OVR viseme table and ``VisemeTrack`` (pure, no I/O).
- ``hook``: ``NpcHook`` speaks NPC lines over one ``VoxgateClient`` and turns each line's audio and
  alignment into ``NpcEvent``s, in the order ``docs/npc.md`` promises.
- ``bridge``: the JSON-lines bridge a game engine talks to (``python -m gateway.integrations.npc``),
  over stdio or, with ``--listen``, a local WebSocket.

The names below are re-exported so ``from gateway.integrations.npc import NpcHook`` keeps working.
"""

from __future__ import annotations

from gateway.integrations.npc.bridge import serve_bridge, serve_bridge_websocket
from gateway.integrations.npc.hook import LineHandle, NpcEvent, NpcHook, NpcVoice
from gateway.integrations.npc.visemes import PHONEME_VISEMES, VISEMES, Viseme, VisemeTrack, phonemes_to_visemes

__all__ = [
    "VISEMES",
    "PHONEME_VISEMES",
    "Viseme",
    "VisemeTrack",
    "phonemes_to_visemes",
    "NpcVoice",
    "NpcEvent",
    "LineHandle",
    "NpcHook",
    "serve_bridge",
    "serve_bridge_websocket",
    "main",
]


def main(argv: list[str] | None = None) -> int:
    """The bridge's command line (see ``gateway.integrations.npc.bridge.main``)."""
    from gateway.integrations.npc.bridge import main as bridge_main

    return bridge_main(argv)
