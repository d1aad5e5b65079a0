"""One utterance of a session as values: its ``Context`` (addressed by the client's ``context_id``),
its settings, the text pieces it asks to have spoken, and what waits in the session's outbox.

State only; ``gateway.session.Session`` changes it (and the hub routes results back to it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from gateway.audio import ContextEncoder
from gateway.engines.base import SynthesisResult
from gateway.protocol import FrameFlags
from gateway.text.segmenter import Segmenter

if TYPE_CHECKING:
    from gateway.session import Session

__all__ = ["Context", "ContextState", "PieceRequest", "Settings"]


class ContextState(IntEnum):
    OPEN = 0  # accepting text
    CLOSING = 1  # final flush received; audio still coming
    DONE = 2
    CANCELLED = 3
    FAILED = 4

    def is_finished(self) -> bool:
        return self >= ContextState.DONE


@dataclass(frozen=True, slots=True)
class Settings:
    voice: str
    speed: float
    lang: str
    format: str
    sample_rate: int
    frame_ms: int
    alignment: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "voice": self.voice,
            "speed": self.speed,
            "lang": self.lang,
            "format": self.format,
            "sample_rate": self.sample_rate,
            "frame_ms": self.frame_ms,
            "alignment": self.alignment,
        }


@dataclass(eq=False)
class PieceRequest:
    """A text piece the server must phonemize and schedule, then report back on."""

    context: Context
    ordinal: int
    text: str
    is_first: bool
    created_at: float
    #: Set by the server after G2P: how many engine pieces the text became (0: nothing to say).
    num_parts: int | None = None


@dataclass(eq=False)
class _OutFrame:
    context: Context
    payload: bytes
    sample_offset: int
    flags: FrameFlags
    duration_ms: float


@dataclass(eq=False)
class _OutMessage:
    context: Context | None
    render: Callable[[], dict[str, Any]]
    #: Alignment and other audio-bound messages vanish with a cancel; control messages stay.
    purge_on_cancel: bool = False


@dataclass(eq=False)
class Context:
    """One utterance of a session, addressed by the client's ``context_id``."""

    session: Session
    context_id: str
    index: int
    settings: Settings
    priority: int
    ttl_ms: int | None
    segmenter: Segmenter
    encoder: ContextEncoder
    created_at: float
    state: ContextState = ContextState.OPEN
    text_chars: int = 0
    last_text_at: float = 0.0
    num_pieces: int = 0
    #: Reorder buffer: (ordinal, part) -> result, emitted strictly in order.
    results: dict[tuple[int, int], SynthesisResult | None] = field(default_factory=dict)
    #: (ordinal, part) -> samples of its audio already sent ahead of its result (an engine's head).
    head_samples: dict[tuple[int, int], int] = field(default_factory=dict)
    parts: dict[int, int] = field(default_factory=dict)
    next_ordinal: int = 0
    next_part: int = 0
    samples_out: int = 0
    source_samples: int = 0
    first_frame_sent: bool = False
    last_frame: _OutFrame | None = None
    last_seq: int | None = None
    first_piece_at: float | None = None
    #: When the context's first frame left: its listener's playback starts about then.
    first_frame_at: float | None = None
    #: Audio expected from the pieces scheduled so far (for the scheduler's deadlines).
    estimated_audio_s: float = 0.0

    def __hash__(self) -> int:
        return id(self)

    @property
    def has_unresolved_pieces(self) -> bool:
        return self.next_ordinal < self.num_pieces
