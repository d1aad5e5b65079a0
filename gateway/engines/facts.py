"""What the server knows about its engine, read once on the engine thread when it is loaded.

An engine is touched only from its own thread (``EngineWorker``): ``voices()`` and ``describe()``
may read device state or model files, so the event loop never calls them. ``EngineWorker`` records
``EngineFacts.of(engine)`` after loading and warm-up (the preferred batch size is decided there),
and the server answers ``/readyz``, session voice lists and logs from this frozen copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gateway.engines.base import Engine

__all__ = ["EngineFacts"]


@dataclass(frozen=True, slots=True)
class EngineFacts:
    name: str
    voices: tuple[str, ...]
    sample_rate: int
    max_batch_size: int
    preferred_batch_size: int
    #: ``engine.describe()``: device, weights source (which may be a local path), batch limits.
    #: For logs and authenticated callers only.
    description: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, engine: Engine) -> EngineFacts:
        """Read the facts. Call on the engine thread."""
        return cls(
            name=engine.name,
            voices=tuple(engine.voices()),
            sample_rate=engine.sample_rate,
            max_batch_size=engine.max_batch_size,
            preferred_batch_size=engine.preferred_batch_size,
            description=MappingProxyType(dict(engine.describe())),
        )

    def public(self) -> dict[str, Any]:
        """Facts safe to show anyone: no paths, no device names, no versions."""
        return {
            "name": self.name,
            "num_voices": len(self.voices),
            "max_batch_size": self.max_batch_size,
            "preferred_batch_size": self.preferred_batch_size,
        }
