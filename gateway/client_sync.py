"""Blocking use of the voxgate client, and what ``voxgate voices`` / ``voxgate say`` run.

- ``VoxgateSyncClient``: one session on a private event loop thread, for scripts and notebooks.
- ``list_voices`` / ``say_to_wav``: through a running server, or in-process (``url=None``) on the
  server's own hub (``Gateway.open_local_session``, ``gateway.local``), not through the client SDK.
- ``write_wav``: 16-bit mono WAV with the stdlib ``wave`` module.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import wave
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.client import VoxgateClient
from gateway.pcm import to_pcm16
from gateway.protocol import SAMPLE_RATE

if TYPE_CHECKING:
    from gateway.config import Config

__all__ = ["VoxgateSyncClient", "list_voices", "say_to_wav", "write_wav"]


# --- blocking wrapper -------------------------------------------------------------------------


class VoxgateSyncClient:
    """A blocking client for scripts and notebooks: one session, served by a private event loop
    on a daemon thread. Same options as ``VoxgateClient``; connects in the constructor.

    ``speak_to_array(text)`` returns ``(samples, sample_rate)``; ``voices()`` the server's voices;
    ``close()`` (or ``with VoxgateSyncClient(url) as client:``) ends the session and the thread.
    Calls may come from any thread; they run one after another on the client's loop.
    """

    def __init__(self, url: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="voxgate-sync-client", daemon=True)
        self._thread.start()
        self._client: VoxgateClient | None = None
        try:
            self._client = self._call(self._open(url, options))
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _open(url: str, options: dict[str, Any]) -> VoxgateClient:
        client = VoxgateClient(url, **options)
        await client.connect()
        return client

    def _call(self, coro: Any) -> Any:
        if threading.current_thread() is self._thread:
            raise RuntimeError("VoxgateSyncClient called from its own event loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def client(self) -> VoxgateClient:
        if self._client is None:
            raise RuntimeError("the client is closed")
        return self._client

    @property
    def session_id(self) -> str | None:
        return self.client.session_id

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.client.settings)

    def voices(self) -> list[str]:
        return list(self.client.voices)

    def speak_to_array(
        self,
        text: str | Iterable[str],
        *,
        voice: str | None = None,
        speed: float | None = None,
        lang: str | None = None,
        priority: int | None = None,
        timeout: float | None = None,
    ) -> tuple[np.ndarray, int]:
        """Speak ``text`` and return all of its audio: float32 samples and their sample rate.
        Raises ``VoxgateClientError`` / ``VoxgateConnectionError`` like ``Speech``; on ``timeout``
        (seconds) the speech is cancelled and ``TimeoutError`` raised."""
        client = self.client

        async def run() -> tuple[np.ndarray, int]:
            speech = client.speak(text, voice=voice, speed=speed, lang=lang, priority=priority)
            async with speech:
                async with asyncio.timeout(timeout):
                    samples = await speech.read_all()
            return samples, speech.sample_rate

        return self._call(run())

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                self._call(client.close())
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> VoxgateSyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- CLI helpers --------------------------------------------------------------------------------


def list_voices(config: Config, url: str | None = None) -> list[str]:
    """Voices of a running server (``url``) or, with ``url`` None, of the engine ``config`` names,
    built in-process (this loads its weights)."""
    if url is not None:

        async def ask() -> list[str]:
            async with VoxgateClient(url, token=config.server.auth_token or None) as client:
                return list(client.voices)

        return asyncio.run(ask())
    from gateway.engines import create_engine

    engine = create_engine(config.engine)
    try:
        return list(engine.voices())
    finally:
        engine.close()


def say_to_wav(
    config: Config,
    text: str,
    output: str | Path,
    *,
    url: str | None = None,
    voice: str | None = None,
    speed: float | None = 1.0,
    lang: str | None = None,
) -> Path:
    """Speak ``text`` into a 16-bit mono WAV file at ``output``; returns its path.

    With ``url``, through a running server (token: ``config.server.auth_token``). With ``url``
    None, in-process: a ``Gateway(config)`` is started on a free port and the text goes through an
    in-process session, so the path is the server's own (G2P, segmenter, scheduler, encoder).
    Raises ``VoxgateClientError`` (e.g. ``unknown_voice``) or ``VoxgateConnectionError``.
    """
    if not text.strip():
        raise ValueError("nothing to say: the text is empty")

    async def speak(client: VoxgateClient) -> tuple[np.ndarray, int]:
        speech = client.speak(text, voice=voice, speed=speed, lang=lang)
        return await speech.read_all(), speech.sample_rate

    async def remote() -> tuple[np.ndarray, int]:
        assert url is not None
        async with VoxgateClient(url, token=config.server.auth_token or None) as client:
            return await speak(client)

    async def local() -> tuple[np.ndarray, int]:
        from gateway.audio import decode_samples
        from gateway.client import VoxgateClientError, VoxgateConnectionError
        from gateway.local import LocalSessionClosed, LocalSessionError
        from gateway.server import Gateway

        async with Gateway(config.replace({"server.host": "127.0.0.1", "server.port": 0})) as gateway:
            session = config.session
            async with gateway.open_local_session() as local:
                try:
                    await local.start()
                    settings = await local.update(format="pcm_s16le", sample_rate=SAMPLE_RATE)
                    speech = local.speak(
                        text,
                        voice=voice,
                        speed=speed,
                        lang=lang,
                        max_message_chars=session.max_text_chars_per_message,
                        max_chars_per_s=session.max_chars_per_s or None,
                    )
                    parts = [decode_samples(payload, "pcm_s16le") async for payload in speech]
                except LocalSessionError as exc:
                    raise VoxgateClientError(exc.code, exc.message) from None
                except LocalSessionClosed as exc:
                    raise VoxgateConnectionError(str(exc), close_code=exc.close_code) from None
            samples = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
            return samples, int(settings["sample_rate"])

    samples, sample_rate = asyncio.run(remote() if url is not None else local())
    if not len(samples):
        # No empty WAV: emoji, symbols and punctuation alone are not read aloud.
        raise ValueError("nothing in this text can be spoken (emoji, symbols and punctuation are not read aloud); no file written")
    return write_wav(output, samples, sample_rate)


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> Path:
    """Write float samples in [-1, 1] as a 16-bit mono PCM WAV file; returns the path."""
    path = Path(path)
    pcm = to_pcm16(samples)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm.tobytes())
    return path
