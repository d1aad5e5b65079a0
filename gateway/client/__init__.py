"""Python client SDK for voxgate protocol v1 (``docs/protocol.md``).

Async, one session per client, many utterances multiplexed on it::

    async with VoxgateClient("ws://127.0.0.1:8765/v1/stream", voice="af_heart") as client:
        speech = client.speak("Hello there! How are you?")
        async for chunk in speech:          # AudioChunk: float32 samples, seq, offsets, flags
            play(chunk.samples)
        print(speech.done, speech.words)   # SpeechDone(audio_ms, last_seq), word timings

``speak()`` also takes an async (or plain) iterable of text fragments, e.g. tokens from an LLM;
several ``speak()`` calls may run at once on one client: one reader task routes frames by context
index and messages by ``context_id`` to their ``Speech``. ``await speech.wait_started()`` returns as
soon as the first audio frame arrived (for a game NPC that must not block on the whole line);
``await speech.cancel()`` barges in.

Errors: the server's ``error`` messages become ``VoxgateClientError(code, message, context_id)``,
raised from the ``Speech`` they concern, or, for session-level ones, from the client's next
``speak()`` / ``update()`` (they are also kept in ``client.errors``). A lost connection raises
``VoxgateConnectionError`` from every unfinished ``Speech``; ``await client.reconnect()`` resumes the
same session (see its docstring for what that guarantees).

The package: ``values`` (errors and the values of a speech), ``transport`` (the ``Transport``
interface and the WebSocket one), ``speech`` (``Speech``), ``session`` (``VoxgateClient``),
``pacing``. It imports nothing of the server: an in-process session is a transport the server
side provides and the caller injects (``VoxgateClient(transport_factory=gateway.open_transport)``,
or ``VoxgateClient.local(gateway)``). Blocking code (``VoxgateSyncClient``) and the helpers behind
``voxgate voices`` and ``voxgate say`` live in ``gateway.client_sync``.
"""

from __future__ import annotations

from gateway.client.session import DEFAULT_MAX_MESSAGE_CHARS, VoxgateClient
from gateway.client.speech import Speech
from gateway.client.transport import (
    STREAM_PATH,
    Transport,
    TransportClosed,
    WebSocketTransport,
)
from gateway.client.values import (
    AudioChunk,
    DroppedPiece,
    PhonemeTiming,
    SpeechDone,
    VoxgateClientError,
    VoxgateConnectionError,
    WordTiming,
)
from gateway.protocol import split_text as _split_text  # noqa: F401  # the name tests and callers knew

__all__ = [
    "DEFAULT_MAX_MESSAGE_CHARS",
    "STREAM_PATH",
    "AudioChunk",
    "DroppedPiece",
    "PhonemeTiming",
    "Speech",
    "SpeechDone",
    "Transport",
    "TransportClosed",
    "VoxgateClient",
    "VoxgateClientError",
    "VoxgateConnectionError",
    "WebSocketTransport",
    "WordTiming",
]
