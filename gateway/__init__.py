"""voxgate: a WebSocket real-time voice gateway.

Many WebSocket sessions, one micro-batched Kokoro-82M engine. The package is laid out by job:
``protocol`` (wire values), ``session`` (per-connection state machine), ``text`` (segmentation and
G2P), ``scheduler`` (cross-session micro-batching), ``engines`` (synthesis), ``audio`` (encoding),
``server`` (asyncio glue), ``metrics``, ``config``.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
