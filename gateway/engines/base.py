"""The engine contract: a batch of synthesis items in, one result per item out.

An engine is called from exactly one thread (the engine worker's) and never touches asyncio. It is
language-blind: text becomes phonemes before it gets here (``gateway.text.g2p``), so the scheduler
can budget in phoneme tokens.
"""

from __future__ import annotations

import abc
import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from gateway.protocol import SAMPLE_RATE

__all__ = [
    "SAMPLE_RATE",
    "SAMPLES_PER_FRAME",
    "MAX_PHONEMES",
    "SynthesisItem",
    "SynthesisResult",
    "ScheduleHints",
    "Engine",
    "EngineError",
    "Head",
    "HeadCallback",
    "default_seed",
]

# One predicted duration unit is 600 samples (25 ms at 24 kHz): hop 5 x upsampling 120.
SAMPLES_PER_FRAME = 600
# ALBERT has 512 positions; two are the boundary tokens.
MAX_PHONEMES = 510


def default_seed(phonemes: str, voice: str, speed: float) -> int:
    """Seed derived from the request, so the same request gives the same audio (and is cacheable)."""
    digest = hashlib.blake2b(
        phonemes.encode("utf-8") + b"\x00" + voice.encode("utf-8") + struct.pack("<d", speed),
        digest_size=8,
    ).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF




@dataclass(frozen=True, slots=True)
class ScheduleHints:
    """What a remote scheduler needs to order a piece (``engines.ray_serve``); local engines ignore it.

    Times are relative to when the batch left the caller (monotonic clocks differ across machines):
    ``due_in_s`` is when the listener needs the audio (inf: playback has not started), ``start_within_s``
    the TTL left (None: no limit).
    """

    session_id: str
    context_id: str
    priority: int = 0
    is_first: bool = False
    due_in_s: float = 0.0
    start_within_s: float | None = None


@dataclass(frozen=True, slots=True)
class SynthesisItem:
    """One piece of speech to synthesize.

    ``phonemes`` must already be within ``MAX_PHONEMES`` characters of the engine's vocabulary
    (``gateway.text.g2p`` guarantees that). ``seed`` left as None means ``default_seed(...)``.
    """

    phonemes: str
    voice: str
    speed: float = 1.0
    seed: int | None = None
    #: The graphemes the phonemes came from, for engines that read text (RealtimeTTS); phoneme
    #: engines ignore it, and it is not part of ``default_seed``.
    text: str = ""
    #: Ordering facts for engines that schedule remotely; not part of ``default_seed``.
    hints: ScheduleHints | None = None
    #: The item continues speech before / after it (a piece cut from a longer text): engines that
    #: can, skip the silence they would put at that edge (``gateway.engines.edges``) and say so in
    #: ``SynthesisResult.extra["edges_trimmed"]``; others ignore it. Not part of ``default_seed``.
    trim_start: bool = False
    trim_end: bool = False
    #: Phonemes of the same sentence just before / after the item (its neighbours' edges, with the
    #: space between as the whole sentence's phonemes have it). Engines that can read them for the
    #: item's prosody but give them no audio (``gateway.engines.edges``), so a piece cut from a
    #: sentence is spoken as its middle, not as an utterance of its own; the result (audio,
    #: durations, phonemes) is the item's alone. Others ignore them. Not part of ``default_seed``.
    left_context: str = ""
    right_context: str = ""
    #: The listener waits for this item's first audio (a context's first piece): an engine that can
    #: decode an item in two parts hands over the first before making the rest
    #: (``Engine.synthesize_with_heads``); others ignore it. Not part of ``default_seed``.
    stream_head: bool = False

    def effective_seed(self) -> int:
        if self.seed is not None:
            return self.seed
        return default_seed(self.phonemes, self.voice, self.speed)


@dataclass(frozen=True, slots=True)
class SynthesisResult:
    """Audio for one item plus what alignment needs.

    ``phonemes`` is what was actually spoken (characters outside the engine's vocabulary dropped);
    ``durations[i]`` is the number of 600-sample frames given to token i of ``[BOS, *phonemes, EOS]``
    (so ``len(durations) == len(phonemes) + 2``) and ``len(audio) == durations.sum() * 600``.
    """

    audio: np.ndarray  # float32, mono, SAMPLE_RATE
    durations: np.ndarray  # int64, one per token including the two boundary tokens
    phonemes: str = ""
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Head:
    """The start of an item's result, made before the rest (``Engine.synthesize_with_heads``).

    ``audio`` is what the result's audio will start with, exactly; ``durations`` and ``phonemes``
    are the finished result's already (its timings are known before all of its audio is), so
    ``len(audio) < durations.sum() * 600``.
    """

    audio: np.ndarray  # float32, mono, SAMPLE_RATE
    durations: np.ndarray
    phonemes: str


#: ``on_head(item index, head)``: called on the engine thread (``synthesize_with_heads``).
HeadCallback = Callable[[int, Head], None]


class EngineError(Exception):
    """Raised by an engine when a batch cannot be synthesized; fails only that batch."""


class Engine(abc.ABC):
    """A speech synthesizer behind voxgate's scheduler.

    Responsibilities: turn a batch of ``SynthesisItem`` into one ``SynthesisResult`` each, in order,
    where each result depends only on its own item, up to float rounding (~1e-6 relative): never on
    the batch's other items or their order.
    Not its job: text, queues, threads, asyncio, timing decisions.
    """

    sample_rate: int = SAMPLE_RATE
    #: Largest batch the engine accepts in one call.
    max_batch_size: int = 1
    #: Batch size with the best audio-seconds per second on this device (from a probe or config).
    preferred_batch_size: int = 1
    #: Phoneme characters the engine can read; anything else is dropped by G2P.
    vocab: frozenset[str] = frozenset()
    name: str = "engine"
    #: True when another scheduler orders the items again (Ray Serve replicas): the server then
    #: attaches ``ScheduleHints`` to each item.
    schedules_remotely: bool = False

    @abc.abstractmethod
    def voices(self) -> list[str]:
        """Names of the voices this engine can speak with."""

    @abc.abstractmethod
    def synthesize(self, items: Sequence[SynthesisItem]) -> list[SynthesisResult]:
        """Synthesize a batch. Called from the engine thread only; may raise ``EngineError``."""

    def synthesize_with_heads(self, items: Sequence[SynthesisItem], on_head: HeadCallback) -> list[SynthesisResult]:
        """``synthesize``, and for items with ``stream_head`` that the engine can decode in two parts,
        ``on_head(b, head)`` as soon as the first part is made (``Head``: the samples result b's audio
        will start with, and its timings). Called on the engine thread before this returns, at most
        once per item. The default never calls it. An item decoded in two parts may differ from
        ``synthesize``'s by more than float rounding at the join (Kokoro: within 2e-4 of a peak ~0.3,
        ``batched.WINDOW_REACH_FRAMES``); its timings do not."""
        return self.synthesize(items)

    def warmup(self) -> None:  # noqa: B027 - optional hook
        """Run once on the engine thread before serving (allocate buffers, compile kernels)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; called on the engine thread at shutdown."""

    def describe(self) -> dict[str, object]:
        """Facts for logs, /readyz and benchmarks (device, weights source, batch limits)."""
        return {
            "name": self.name,
            "max_batch_size": self.max_batch_size,
            "preferred_batch_size": self.preferred_batch_size,
        }
