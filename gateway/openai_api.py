"""OpenAI-compatible ``POST /v1/audio/speech`` (being written; registers nothing yet)."""

from __future__ import annotations

from typing import Any


def register(gateway: Any) -> None:
    """Add this module's routes to ``gateway.extra_routes``."""
