"""Vendor-compatible WebSocket endpoints (ElevenLabs, Cartesia, Deepgram) on voxgate's own port.

Each vendor module is a sans-I/O translator between the vendor's messages and protocol v1; this
module maps paths to them, checks the vendor-style API key against ``server.auth_token``, and runs
the translator on a normal in-process session (``base.serve_translator``). The server calls
``find_adapter`` and ``adapter_key_refusal`` from its handshake check and ``serve_adapter`` from its
WebSocket handler: that is the whole hook. What each endpoint supports: docs/compat.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.adapters import cartesia, deepgram, elevenlabs
from gateway.adapters.base import Translator, VoiceResolver, credential_ok, serve_translator
from gateway.openai_api import parse_voice_map

if TYPE_CHECKING:
    from gateway.server import Gateway

__all__ = ["Adapter", "find_adapter", "adapter_key_refusal", "serve_adapter"]


@dataclass(frozen=True, slots=True)
class Adapter:
    name: str
    credential: Callable[[Mapping[str, str], Mapping[str, list[str]]], str | None]
    make: Callable[[str, str, VoiceResolver], Translator]


_ELEVENLABS = Adapter(
    "elevenlabs", elevenlabs.credential, lambda path, query, voices: elevenlabs.ElevenLabsTranslator(path, query, voices=voices)
)
_CARTESIA = Adapter("cartesia", cartesia.credential, lambda path, query, voices: cartesia.CartesiaTranslator(voices=voices))
_DEEPGRAM = Adapter("deepgram", deepgram.credential, lambda path, query, voices: deepgram.DeepgramTranslator(query, voices=voices))


def find_adapter(path: str) -> Adapter | None:
    """The adapter serving ``path`` (without its query), or None."""
    if path == cartesia.ROUTE:
        return _CARTESIA
    if path == deepgram.ROUTE:
        return _DEEPGRAM
    if elevenlabs.ROUTE.match(path):
        return _ELEVENLABS
    return None


def adapter_key_refusal(
    adapter: Adapter, auth_token: str, headers: Mapping[str, str], query: Mapping[str, list[str]]
) -> tuple[int, str] | None:
    """(401, text) when the vendor-style key (sent where ``adapter``'s vendor sends it) is not
    voxgate's token; None when it is, or when no token is configured. The Origin check is the
    gateway's, shared with protocol v1."""
    if not credential_ok(auth_token, adapter.credential(headers, query)):
        return 401, f"missing or wrong API key (voxgate's token, sent as {adapter.name} sends its key)"
    return None


async def serve_adapter(gateway: Gateway, ws: Any, adapter: Adapter) -> None:
    """Serve one vendor WebSocket with its own session until either side ends."""
    path, _, query = ws.request.path.partition("?")
    compat = gateway.config.compat
    voices = VoiceResolver(
        list(gateway.engine_facts.voices) if gateway.engine_facts is not None else [],
        voice_map=parse_voice_map(compat.voice_map),
        default_voice=compat.default_voice,
    )
    await serve_translator(gateway, ws, adapter.make(path, query, voices))
