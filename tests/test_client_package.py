"""The client SDK stands alone: it imports no server code, and speaks through a transport that
the caller may inject (the server side provides the in-process one)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import numpy as np
import orjson

from gateway.client import Transport, TransportClosed, VoxgateClient
from gateway.protocol import FrameFlags, encode_audio_frame
from gateway.ratelimit import TokenBucket


def test_importing_the_client_loads_neither_the_server_nor_the_hub() -> None:
    code = (
        "import sys, gateway.client\n"
        "from gateway.client import VoxgateClient, Speech, VoxgateClientError, VoxgateConnectionError, AudioChunk\n"
        "loaded = sorted(m for m in ('gateway.server', 'gateway.hub', 'gateway.local', 'gateway.session',"
        " 'gateway.scheduler', 'gateway.openai_api', 'gateway.adapters') if m in sys.modules)\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


class _ScriptedTransport:
    """A transport with a one-context session behind it: what an injected transport must do."""

    can_resume = False

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self._out: list[str | bytes] = [
            orjson.dumps({"type": "session.created", "session_id": "s", "voices": ["v"], "langs": ["en"], "settings": {"format": "pcm_s16le", "sample_rate": 24_000, "alignment": False}}).decode()
        ]
        self._closed = False
        self._ready = asyncio.Event()
        self._ready.set()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if message["type"] == "flush":
            cid = message["context_id"]
            pcm = (np.ones(240) * 1000).astype("<i2").tobytes()
            self._out += [
                orjson.dumps({"type": "context.started", "context_id": cid, "index": 0}).decode(),
                encode_audio_frame(0, 0, 0, FrameFlags.FIRST | FrameFlags.LAST, pcm),
                orjson.dumps({"type": "context.done", "context_id": cid, "last_seq": 0, "audio_ms": 10.0}).decode(),
            ]
            self._ready.set()

    async def recv(self) -> str | bytes:
        while not self._out:
            if self._closed:
                raise TransportClosed
            self._ready.clear()
            await self._ready.wait()
        return self._out.pop(0)

    async def close(self) -> None:
        self._closed = True
        self._ready.set()

    def close_info(self) -> tuple[int | None, str]:
        return (1000 if self._closed else None), ""


async def test_an_injected_transport_carries_a_whole_speech() -> None:
    transport = _ScriptedTransport()

    async def factory() -> Transport:
        return transport

    async with VoxgateClient("", transport_factory=factory) as client:
        samples = await client.speak("Hello.").read_all()
    assert len(samples) == 240
    assert [m["type"] for m in transport.sent] == ["text", "flush"]


def test_the_client_pacer_is_the_one_token_bucket() -> None:
    from gateway.client.pacing import Pacer

    async def take() -> TokenBucket | None:
        pacer = Pacer(100.0)
        await pacer.take(10)
        return pacer._bucket

    bucket = asyncio.run(take())
    assert isinstance(bucket, TokenBucket) and bucket.rate == 90.0
