"""Who may open a session or call a route: the Origin allow-list and the bearer token.

Pure functions of ``server`` config and a request's headers and query (no I/O): the hub's handshake
check and the server's HTTP routes share them.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from gateway.config import ServerConfig

__all__ = ["check_access", "authenticated", "credential_digest", "presented_token"]


def check_access(
    server: ServerConfig, headers: Mapping[str, str], query: Mapping[str, list[str]], *, adapter: Any = None
) -> tuple[int, str] | None:
    """(status, text) when a request must be refused: a disallowed Origin, then a missing or wrong
    token (for a vendor-compatible endpoint, the key where that vendor sends it)."""
    # The front door refuses a request with two Origin or Authorization headers, so one
    # value (or none) is all there is to read here.
    if server.allowed_origins:
        origin = headers.get("Origin") or headers.get("origin")
        if origin is not None and origin not in server.allowed_origins:
            return 403, "origin not allowed"
    if adapter is not None:
        from gateway.adapters import (
            adapter_key_refusal,  # the adapters import the OpenAI module
        )

        return adapter_key_refusal(adapter, server.auth_token, headers, query)
    if server.auth_token and not authenticated(server, headers, query):
        return 401, "missing or wrong token"
    return None


def authenticated(server: ServerConfig, headers: Mapping[str, str], query: Mapping[str, list[str]]) -> bool:
    """True when a token is configured and the request carries it (compared in constant time)."""
    if not server.auth_token:
        return False
    return hmac.compare_digest(presented_token(headers, query).encode(), server.auth_token.encode())


def credential_digest(headers: Mapping[str, str], query: str) -> bytes:
    """A digest of the auth token a connection presented (bearer header or ``?token=``), so that
    a session can be bound to it without keeping the token itself."""
    return hashlib.sha256(presented_token(headers, parse_qs(query)).encode()).digest()


def presented_token(headers: Mapping[str, str], query: Mapping[str, list[str]]) -> str:
    """The token a request presents: a bearer ``Authorization`` header, else ``?token=``."""
    auth = headers.get("Authorization") or headers.get("authorization") or ""
    supplied = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    return supplied or (query.get("token") or [""])[0]
