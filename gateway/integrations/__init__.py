"""Integrations: voxgate driven by something other than a chat client.

- ``gateway.integrations.danmaku``: a live-stream comment (danmaku) responder. ``DanmakuPolicy`` is the
  pure part (priority, TTL, dedup/coalescing, per-viewer rate limits, injected clock);
  ``DanmakuResponder`` speaks its choices one after another into the streamer's single audio stream.
  ``danmaku_policy`` (the decisions), ``danmaku_text`` (netspeak as said), ``danmaku_live`` (``voxgate
  danmaku``: stdin/HTTP/WebSocket in, the OBS overlay out), ``danmaku_twitch`` (Twitch IRC),
  ``danmaku_cli`` (the command).
- ``gateway.integrations.npc``: game NPC voices. ``NpcHook.say(npc, line)`` returns when audio starts,
  a new line interrupts the NPC's current one, phoneme timings become viseme events; ``python -m
  gateway.integrations.npc`` is a JSON-lines bridge for Godot/Unity (stdio, or a local WebSocket).

Both talk to the gateway only through ``gateway.client.VoxgateClient`` (over WebSocket, or in-process
with ``Gateway.open_local_session()``), so they get the same scheduling and isolation as any session.
Import the submodule you need; this package imports nothing heavy by itself.
"""

from __future__ import annotations

__all__: list[str] = []
