"""A deterministic engine for unit tests of the session, scheduler and server plumbing.

Each token gets ``frames_per_token`` frames of a tone whose pitch comes from the item's seed, so
a test can tell whose audio is whose. Not a speech model: server tests use the tiny Kokoro.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gateway.engines.base import SAMPLE_RATE, SAMPLES_PER_FRAME, Engine, EngineError, SynthesisItem, SynthesisResult

__all__ = ["FakeEngine"]


class FakeEngine(Engine):
    name = "fake"

    def __init__(
        self,
        *,
        voices: Sequence[str] = ("af_test", "am_test"),
        frames_per_token: int = 2,
        max_batch_size: int = 8,
        fail_on: str | None = None,
    ) -> None:
        self._voices = list(voices)
        self.frames_per_token = frames_per_token
        self.max_batch_size = max_batch_size
        self.preferred_batch_size = max_batch_size
        #: Any item whose phonemes contain this string raises: for fault-injection tests.
        self.fail_on = fail_on
        self.batches: list[list[SynthesisItem]] = []

    def voices(self) -> list[str]:
        return list(self._voices)

    def synthesize(self, items: Sequence[SynthesisItem]) -> list[SynthesisResult]:
        self.batches.append(list(items))
        if len(items) > self.max_batch_size:
            raise EngineError(f"batch of {len(items)} over max {self.max_batch_size}")
        results = []
        for item in items:
            if item.voice not in self._voices:
                raise EngineError(f"unknown voice {item.voice!r}")
            if self.fail_on is not None and self.fail_on in item.phonemes:
                raise EngineError("injected failure")
            durations = np.full(len(item.phonemes) + 2, self.frames_per_token, dtype=np.int64)
            n = int(durations.sum()) * SAMPLES_PER_FRAME
            pitch = 100.0 + item.effective_seed() % 700
            t = np.arange(n, dtype=np.float64) / SAMPLE_RATE
            audio = (0.3 * np.sin(2 * np.pi * pitch * t)).astype(np.float32)
            results.append(SynthesisResult(audio=audio, durations=durations, phonemes=item.phonemes))
        return results
