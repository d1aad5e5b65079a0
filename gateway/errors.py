"""Errors with stable codes, mapped to the wire in one place (``gateway.server``).

Hierarchy::

    VoxgateError                 root; every client-visible error has ``code`` and ``close_code``
    ├── ProtocolError            a client message is malformed or out of range; session goes on
    ├── LimitExceeded            a configured limit was hit (rate, size, contexts)
    ├── SessionRefused           the connection is refused before any work (busy, auth)
    └── EngineFailed             synthesis failed for a batch or an item

``InvalidState`` is not a client error: it subclasses ``AssertionError`` because a call in the wrong
state is a bug in the caller (as in websockets).

The exception text is for the client only when it is one of ours; anything else is logged with
``exc_info`` and the client gets a generic message.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "CloseCode",
    "VoxgateError",
    "ProtocolError",
    "LimitExceeded",
    "SessionRefused",
    "EngineFailed",
    "InvalidState",
]


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013


class VoxgateError(Exception):
    """An error a client may see: ``code`` goes on the wire, ``str(self)`` is the message."""

    code: str = "internal_error"
    #: When not None the session is closed with this code after the error message.
    close_code: CloseCode | None = None

    def __init__(self, message: str, *, code: str | None = None, context_id: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.context_id = context_id


class ProtocolError(VoxgateError):
    code = "bad_field"


class LimitExceeded(VoxgateError):
    code = "rate_limited"


class SessionRefused(VoxgateError):
    code = "busy"
    close_code = CloseCode.TRY_AGAIN_LATER


class EngineFailed(VoxgateError):
    code = "engine_failed"


class InvalidState(AssertionError):
    """A method was called in a state where it is not allowed: a bug in the caller."""
