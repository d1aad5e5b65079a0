"""Log lines a client cannot forge and that never carry a credential.

Everything a client controls (paths, headers, ids, text, error messages built from them) may hold
line breaks, terminal escapes or a token. ``quote()`` is the helper for call sites;
``LogHygiene`` is a ``logging.Filter`` installed on the server's loggers (``install()``) as a
second line of defence, also for third-party code that logs on our behalf (websockets logs every
handshake header at DEBUG, ``Authorization`` and ``?token=`` included). It:

- escapes control characters in every ``str`` (and exception) argument of a record, so a ``%0a``
  in a path cannot start a new log line;
- redacts credentials in the formatted message and in the traceback text: the configured secrets
  wherever they appear, ``token=`` style query parameters, ``Authorization`` / ``xi-api-key`` /
  cookie header values, ``Bearer`` tokens.

It rewrites the record in place (``msg`` becomes the formatted, cleaned text, ``args`` empty), so
handlers and formatters need no change. Filters run only for records a logger lets through, so a
disabled DEBUG costs nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

__all__ = ["quote", "escape_controls", "redact", "LogHygiene", "install", "SERVER_LOGGERS"]

#: The loggers of a running server (ours and websockets', which logs under the name we give it).
SERVER_LOGGERS = (
    "voxgate.server",
    "voxgate.session",
    "voxgate.http",
    "voxgate.openai",
    "voxgate.websockets",
    "voxgate.client",
    "voxgate.scheduler",
    "voxgate.text",
)
REDACTED = "[redacted]"

# C0 and C1 controls, DEL, and the Unicode line/paragraph separators some viewers break lines on.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_QUERY_SECRET = re.compile(r"(?i)\b([\w-]*(?:token|api[_-]?key|secret|password))=([^&\s'\"]*)")
_HEADER_SECRET = re.compile(
    r"(?i)\b(authorization|proxy-authorization|xi-api-key|x-api-key|api-key|cookie|set-cookie)(\s*[:=]\s*)(.*)$",
    re.MULTILINE,
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[^\s'\",]+")


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``, ``\\u2028``)."""
    return _CONTROLS.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def quote(value: object, *, limit: int = 200) -> str:
    """A client-controlled value for a log line: control characters escaped, cut to ``limit``
    characters (with the full length noted), in quotes so its bounds are visible."""
    text = value.decode("latin-1") if isinstance(value, bytes | bytearray) else str(value)
    shown = escape_controls(text[:limit])
    suffix = f"...({len(text)} chars)" if len(text) > limit else ""
    return f"'{shown}'{suffix}"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with credentials replaced by ``[redacted]``: each of ``secrets`` wherever it appears,
    query parameters named like a token or key, credential header values, Bearer/Basic tokens."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    text = _QUERY_SECRET.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    text = _HEADER_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)


class LogHygiene(logging.Filter):
    """Escapes client-controlled arguments and redacts credentials in every record it sees.

    ``secrets`` (e.g. the configured auth token) are redacted wherever they appear, even inside an
    exception message. The filter never drops a record.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: set[str] = {s for s in secrets if s}

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            args = record.args
            if isinstance(args, tuple):
                record.args = tuple(_clean_arg(a) for a in args)
            elif isinstance(args, dict):
                record.args = {k: _clean_arg(v) for k, v in args.items()}
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not lose the record
            message = escape_controls(str(record.msg))
        record.msg = redact(message, self.secrets)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info), self.secrets)
        elif record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        return True


def _clean_arg(value: object) -> object:
    if isinstance(value, str):
        return escape_controls(value)
    if isinstance(value, bytes | bytearray):
        return escape_controls(value.decode("latin-1"))
    if isinstance(value, BaseException):
        return escape_controls(str(value))
    return value


def install(secrets: Iterable[str] = (), names: Iterable[str] = SERVER_LOGGERS) -> None:
    """Put a ``LogHygiene`` on each named logger, or add ``secrets`` to the one already there (a
    second gateway in the same process, as in tests, adds its own: redacting more never hurts)."""
    for name in names:
        log = logging.getLogger(name)
        present = next((f for f in log.filters if isinstance(f, LogHygiene)), None)
        if present is None:
            log.addFilter(LogHygiene(secrets))
        else:
            present.secrets.update(s for s in secrets if s)
