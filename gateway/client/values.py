"""What the client SDK hands its callers: errors and the values of a speech."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "AudioChunk",
    "DroppedPiece",
    "PhonemeTiming",
    "SpeechDone",
    "VoxgateClientError",
    "VoxgateConnectionError",
    "WordTiming",
]


# --- errors -----------------------------------------------------------------------------------


class VoxgateClientError(Exception):
    """The server answered with an ``error`` message (``code`` is one of the protocol's codes).

    Raised from the ``Speech`` named by ``context_id``, or from the client (``connect()``,
    ``speak()``, ``update()``) when the error concerns the session. The session goes on unless the
    server also closed it (``busy``, ``slow_consumer``).
    """

    def __init__(self, code: str, message: str, context_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}" + (f" (context {context_id!r})" if context_id else ""))
        self.code = code
        self.message = message
        self.context_id = context_id


class VoxgateConnectionError(ConnectionError):
    """The connection to the server could not be opened, or was lost.

    After a loss, ``await client.reconnect()`` resumes the session within the server's
    ``session.resume_grace_s`` (30 s by default): frames after ``last_seq`` are replayed.
    """

    def __init__(
        self,
        message: str,
        *,
        close_code: int | None = None,
        close_reason: str = "",
        session_id: str | None = None,
        last_seq: int | None = None,
    ) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.close_reason = close_reason
        self.session_id = session_id
        self.last_seq = last_seq


# --- values -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class AudioChunk:
    """One audio frame of a speech, decoded.

    ``samples`` are float32 in [-1, 1] at ``sample_rate``; ``data`` is the frame's payload as it
    came (in ``format``), e.g. to pass 16-bit PCM on without converting it twice.
    """

    samples: np.ndarray
    sample_rate: int
    seq: int
    sample_offset: int
    first: bool
    last: bool
    context_id: str
    data: bytes = field(default=b"", repr=False)
    format: str = "pcm_s16le"

    @property
    def duration_ms(self) -> float:
        return len(self.samples) * 1000.0 / self.sample_rate


@dataclass(frozen=True, slots=True)
class SpeechDone:
    """From ``context.done``: the speech ended normally."""

    audio_ms: float
    #: Session ``seq`` of its last frame; None if it produced no audio.
    last_seq: int | None


@dataclass(frozen=True, slots=True)
class WordTiming:
    word: str
    start_ms: float
    end_ms: float


@dataclass(frozen=True, slots=True)
class PhonemeTiming:
    phoneme: str
    start_ms: float
    end_ms: float


@dataclass(frozen=True, slots=True)
class DroppedPiece:
    """From ``context.dropped``: a piece of the text was not spoken (``ttl_ms`` passed)."""

    reason: str
    text_chars: int
