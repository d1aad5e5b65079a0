"""Log hygiene and flood logging, without a server."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.http import FloodLog
from gateway.logsafe import LogHygiene, quote, redact


def record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("voxgate.test", logging.INFO, __file__, 1, msg, args, exc_info)


def test_quote_escapes_line_breaks_and_terminal_escapes_and_cuts_long_values() -> None:
    assert quote("/a\nFORGED line\r\x1b[31m\u2028") == "'/a\\nFORGED line\\r\\x1b[31m\\u2028'"
    assert quote(b"x\x00y") == "'x\\x00y'"
    assert quote("z" * 300, limit=10) == "'zzzzzzzzzz'...(300 chars)"


def test_redact_hides_query_tokens_credential_headers_bearer_tokens_and_named_secrets() -> None:
    assert redact("< GET /v1/stream?session_id=ab&token=s3cret&x=1 HTTP/1.1") == "< GET /v1/stream?session_id=ab&token=[redacted]&x=1 HTTP/1.1"
    assert redact("< Authorization: Bearer s3cret") == "< Authorization: [redacted]"
    assert redact("< xi-api-key: s3cret") == "< xi-api-key: [redacted]"
    assert redact("auth was Bearer s3cret, refused") == "auth was Bearer [redacted], refused"
    assert redact("context 's3cret' unknown", ["s3cret"]) == "context '[redacted]' unknown"


def test_the_filter_keeps_one_record_on_one_line_and_redacts_tracebacks() -> None:
    hygiene = LogHygiene(["s3cret"])
    forged = record("HTTP handler failed for %s %s", "GET", "/x\n2026-01-01 INFO forged")
    assert hygiene.filter(forged)
    assert forged.getMessage() == "HTTP handler failed for GET /x\\n2026-01-01 INFO forged"
    try:
        raise ValueError("token s3cret rejected")
    except ValueError as exc:
        failed = record("failed: %s", exc, exc=exc)
    hygiene.filter(failed)
    assert "s3cret" not in failed.getMessage() and "s3cret" not in (failed.exc_text or "")
    assert "ValueError" in (failed.exc_text or "")


def test_a_bad_format_string_does_not_lose_the_record() -> None:
    broken = record("%d items", "not a number\n")
    assert LogHygiene().filter(broken)
    assert "\n" not in broken.getMessage()


async def test_a_flood_logs_its_first_event_at_once_and_then_one_count_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="voxgate.test")
    flood = FloodLog(logging.getLogger("voxgate.test"), interval_s=0.2)
    for _ in range(1_000):
        flood.note("idle", "closed an idle connection")
    assert [r.getMessage() for r in caplog.records] == ["closed an idle connection"]
    await asyncio.sleep(0.4)
    assert [r.getMessage() for r in caplog.records][1:] == ["closed an idle connection (999 more times in the last 0.2 s)"]
