"""Plain HTTP on the front door, from raw sockets: malformed heads, deadlines, caps, non-reading
clients, auth per route, log hygiene. One real server (tiny Kokoro) with short deadlines."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import pytest_asyncio
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.config import ConfigError
from gateway.engines.kokoro import KokoroEngine
from gateway.http import HttpRequest
from gateway.server import Gateway
from tests.utils import eventually, run_server, test_config

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "s3same-Open-7c1d"
GOOD_ORIGIN = "http://good.example"
LOCAL_PATH = "/srv/models/private-dir/kokoro-v1_0.pth"
DEADLINE_S = 1.0
MAX_PENDING_HEADS = 8
MAX_HTTP_CONNECTIONS = 3
MAX_BODY = 4_096
SERVER = {
    "server.auth_token": TOKEN,
    "server.allowed_origins": GOOD_ORIGIN,
    "server.http_head_timeout_s": DEADLINE_S,
    "server.http_body_timeout_s": DEADLINE_S,
    "server.http_write_timeout_s": DEADLINE_S,
    "server.max_pending_heads": MAX_PENDING_HEADS,
    "server.max_http_connections": MAX_HTTP_CONNECTIONS,
    "server.max_http_body_bytes": MAX_BODY,
    "session.max_messages_per_s": 0,
    "session.max_chars_per_s": 0,
}


class ThreadRecordingEngine(KokoroEngine):
    """The tiny Kokoro, noting the thread of every ``voices()`` and ``describe()`` call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.caller_threads: list[str] = []
        super().__init__(*args, **kwargs)

    def voices(self) -> list[str]:
        self.caller_threads.append(threading.current_thread().name)
        return super().voices()

    def describe(self) -> dict[str, object]:
        self.caller_threads.append(threading.current_thread().name)
        return super().describe()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw() -> AsyncIterator[Gateway]:
    engines: list[ThreadRecordingEngine] = []

    def factory() -> ThreadRecordingEngine:
        engine = ThreadRecordingEngine.tiny(0, num_threads=1, max_batch_size=4, preferred_batch_size=4, weights_source=LOCAL_PATH)
        engines.append(engine)
        return engine

    async with run_server(SERVER, engine_factory=factory) as gateway:
        gateway.test_engines = engines  # type: ignore[attr-defined]
        yield gateway


async def exchange(port: int, data: bytes, *, timeout: float = 10.0, rcvbuf: int | None = None) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    reader, writer = await open_raw(port, rcvbuf=rcvbuf)
    writer.write(data)
    try:
        return await asyncio.wait_for(read_to_end(reader), timeout)
    finally:
        writer.close()


async def open_raw(port: int, *, rcvbuf: int | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def read_to_end(reader: asyncio.StreamReader) -> bytes:
    data = b""
    try:
        while chunk := await reader.read(65_536):
            data += chunk
    except ConnectionResetError:
        data += b"<reset>"
    return data


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    return int(answer[9:12])


def get(path: str, *headers: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", "Host: x", *headers, "", ""]).encode()


def post(path: str, body: bytes, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}", *headers, "", ""]
    return "\r\n".join(lines).encode() + body


def speech_body(**fields: Any) -> bytes:
    return orjson.dumps({"model": "tts-1", **fields})


UPGRADE = ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]
MALFORMED = {
    "bare LF line ends": (b"GET /healthz HTTP/1.1\nHost: x\n\n", 400),
    "two Content-Lengths": (b"POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n", 400),
    "Content-Length +14": (b"POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: +14\r\n\r\n" + b"x" * 14, 400),
    "Content-Length 1_4": (b"POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: 1_4\r\n\r\n" + b"x" * 14, 400),
    "HTTP/9.9": (b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", 505),
    "space before the colon": (b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    "Transfer-Encoding with Content-Length": (
        b"POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "head over 16 KB in one piece": (get("/healthz", "X-Pad: " + "a" * 17_000), 431),
    "head over 16 KB never ended": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 17_000, 431),
    "two Origins on plain HTTP": (get(f"/v1/models?token={TOKEN}", "Origin: http://evil.example", f"Origin: {GOOD_ORIGIN}"), 400),
    "two Authorizations on plain HTTP": (get("/v1/models", "Authorization: Bearer nope", f"Authorization: Bearer {TOKEN}"), 400),
    "two Origins on a WebSocket upgrade": (
        get(f"/v1/stream?token={TOKEN}", *UPGRADE, "Origin: http://evil.example", f"Origin: {GOOD_ORIGIN}"),
        400,
    ),
    "two Authorizations on a WebSocket upgrade": (
        get("/v1/stream", *UPGRADE, f"Authorization: Bearer {TOKEN}", f"Authorization: Bearer {TOKEN}"),
        400,
    ),
    "body shorter than its Content-Length": (
        f"POST /v1/audio/speech?token={TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Length: 90\r\n\r\n{{}}".encode(),
        408,
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_a_malformed_request_gets_its_4xx_and_the_connection_is_closed(gw: Gateway, case: str) -> None:
    data, expected = MALFORMED[case]
    answer = await exchange(gw.port, data)
    assert status_of(answer) == expected, answer[:200]


async def test_the_longest_accepted_head_is_served(gw: Gateway) -> None:
    base = get("/healthz", "X-Pad: ")
    padded = get("/healthz", "X-Pad: " + "a" * (16_384 - len(base)))
    assert len(padded) == 16_384
    assert status_of(await exchange(gw.port, padded)) == 200


async def test_a_partial_head_is_closed_after_the_head_deadline_while_healthz_answers(gw: Gateway) -> None:
    loop = asyncio.get_running_loop()
    slow = [await open_raw(gw.port) for _ in range(3)]
    for _, writer in slow:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    opened = loop.time()
    assert status_of(await exchange(gw.port, get("/healthz"))) == 200
    assert gw._front_door is not None and gw._front_door.num_pending_heads >= 3
    answers = await asyncio.gather(*(asyncio.wait_for(read_to_end(r), 10 * DEADLINE_S) for r, _ in slow))
    assert loop.time() - opened >= DEADLINE_S * 0.9
    assert all(status_of(a) == 408 for a in answers), answers
    for _, writer in slow:
        writer.close()
    await eventually(lambda: gw._front_door.num_pending_heads == 0)


async def test_idle_sockets_past_the_cap_close_the_oldest_and_healthz_still_answers(gw: Gateway) -> None:
    idle = [await open_raw(gw.port) for _ in range(3 * MAX_PENDING_HEADS)]
    await eventually(lambda: gw._front_door.num_pending_heads == MAX_PENDING_HEADS)
    assert status_of(await exchange(gw.port, get("/healthz"))) == 200
    async with run_websocket(gw.port):
        pass
    # The oldest were closed to make room (without a word: they sent nothing).
    closed = await asyncio.gather(*(asyncio.wait_for(read_to_end(r), 5) for r, _ in idle[:MAX_PENDING_HEADS]))
    assert closed == [b""] * MAX_PENDING_HEADS
    for _, writer in idle:
        writer.close()
    await eventually(lambda: gw._front_door.num_pending_heads == 0)


def run_websocket(port: int) -> Any:
    return connect(f"ws://127.0.0.1:{port}/v1/stream?token={TOKEN}", open_timeout=10)


async def test_requests_past_the_http_connection_cap_get_503(gw: Gateway) -> None:
    # Requests whose body is still coming hold their exchange until the body deadline.
    held = [await open_raw(gw.port) for _ in range(MAX_HTTP_CONNECTIONS)]
    for _, writer in held:
        writer.write(b"POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    await eventually(lambda: gw._front_door.num_exchanges == MAX_HTTP_CONNECTIONS)
    busy = await exchange(gw.port, get("/healthz"))
    assert status_of(busy) == 503
    answers = await asyncio.gather(*(asyncio.wait_for(read_to_end(r), 10 * DEADLINE_S) for r, _ in held))
    assert [status_of(a) for a in answers] == [408] * MAX_HTTP_CONNECTIONS
    for _, writer in held:
        writer.close()
    await eventually(lambda: gw._front_door.num_exchanges == 0)
    assert status_of(await exchange(gw.port, get("/healthz"))) == 200


async def test_an_oversized_body_gets_413_without_being_read(gw: Gateway) -> None:
    head = f"POST /v1/audio/speech?token={TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n"
    assert status_of(await exchange(gw.port, head.encode())) == 413
    chunked = f"POST /v1/audio/speech?token={TOKEN} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n%s\r\n" % (MAX_BODY, b"x" * MAX_BODY)
    assert status_of(await exchange(gw.port, chunked.encode() + chunk * 2)) == 413


async def test_a_client_that_stops_reading_speech_is_cut_off_and_its_session_freed(gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    assert not gw._runtimes
    text = "This sentence keeps the engine busy for a long while. " * 60
    reader, writer = await open_raw(gw.port, rcvbuf=4_096)
    writer.write(post(f"/v1/audio/speech?token={TOKEN}", speech_body(input=text, response_format="pcm")))
    await eventually(lambda: len(gw._runtimes) == 1)
    # It reads nothing: its response backs up, the write deadline passes, the server lets go.
    await eventually(lambda: not gw._runtimes and gw._front_door.num_exchanges == 0, timeout=60)
    assert any("cut off an HTTP client" in r.getMessage() for r in caplog.records)
    writer.close()
    reply = await exchange(gw.port, post(f"/v1/audio/speech?token={TOKEN}", speech_body(input="Still here.")))
    assert status_of(reply) == 200


async def test_a_short_wav_answer_carries_its_real_sizes(gw: Gateway) -> None:
    answer = await exchange(gw.port, post(f"/v1/audio/speech?token={TOKEN}", speech_body(input="Hello.", response_format="wav")))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert status_of(answer) == 200 and f"Content-Length: {len(body)}".encode() in head
    riff_size, data_size = struct.unpack_from("<I", body, 4)[0], struct.unpack_from("<I", body, 40)[0]
    assert len(body) > 44 and (riff_size, data_size) == (len(body) - 8, len(body) - 44)


@pytest.mark.parametrize("fmt", [{"a": 1}, ["wav"], 3])
async def test_a_response_format_that_is_not_a_string_gets_400(gw: Gateway, fmt: Any) -> None:
    answer = await exchange(gw.port, post(f"/v1/audio/speech?token={TOKEN}", speech_body(input="Hi.", response_format=fmt)))
    assert status_of(answer) == 400 and b'"param":"response_format"' in answer


@pytest.mark.parametrize("speed", [b"1e400", b"-1e400", b"1" + b"0" * 30, b"18446744073709551616"])
async def test_an_overflowing_number_in_the_body_gets_400(gw: Gateway, speed: bytes) -> None:
    body = b'{"input": "Hi.", "speed": ' + speed + b"}"
    assert status_of(await exchange(gw.port, post(f"/v1/audio/speech?token={TOKEN}", body))) == 400


async def test_an_over_long_path_segment_is_404_and_a_newline_in_it_forges_no_log_line(
    gw: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for path in ["/" + "a" * 300 + "%0aFORGED%20line", "/web-demo/" + "b" * 256, "/%00", "/x%0d%0aFORGED"]:
        answer = await exchange(gw.port, get(path))
        assert status_of(answer) == 404, (path, answer[:100])
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not any(line.startswith("FORGED") for line in caplog.text.splitlines())


async def test_health_probes_are_open_but_say_nothing_internal_without_the_token(gw: Gateway) -> None:
    healthz = await exchange(gw.port, get("/healthz"))
    assert status_of(healthz) == 200 and orjson.loads(healthz.partition(b"\r\n\r\n")[2]) == {"status": "ok"}
    open_ready = await exchange(gw.port, get("/readyz"))
    assert status_of(open_ready) == 200 and orjson.loads(open_ready.partition(b"\r\n\r\n")[2]) == {"ready": True}
    assert LOCAL_PATH.encode() not in open_ready
    authed = orjson.loads((await exchange(gw.port, get("/readyz", f"Authorization: Bearer {TOKEN}"))).partition(b"\r\n\r\n")[2])
    assert authed["ready"] is True and authed["engine"]["weights_source"] == LOCAL_PATH


async def test_metrics_models_and_sessions_need_the_token_and_the_demo_page_does_not(gw: Gateway) -> None:
    for path in ["/metrics", "/v1/models", "/metrics?token=wrong"]:
        assert status_of(await exchange(gw.port, get(path))) == 401, path
    assert status_of(await exchange(gw.port, get(f"/metrics?token={TOKEN}"))) == 200
    assert status_of(await exchange(gw.port, get("/v1/models", f"Authorization: Bearer {TOKEN}"))) == 200
    page = await exchange(gw.port, get("/"))
    assert status_of(page) == 200 and b"<html" in page.lower()
    assert status_of(await exchange(gw.port, get("/web-demo/app.js"))) == 200
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://127.0.0.1:{gw.port}/v1/stream", open_timeout=10):
            pass
    assert refused.value.response.status_code == 401


async def test_metrics_can_be_made_public_while_the_rest_keeps_the_token() -> None:
    gateway = Gateway(test_config(**{"server.auth_token": TOKEN, "server.metrics_public": True}))
    metrics = await gateway._handle_http(HttpRequest("GET", "/metrics", {}, {}))
    models = await gateway._handle_http(HttpRequest("GET", "/v1/models", {}, {}))
    assert (metrics.status, models.status) == (200, 401)


async def test_no_credential_reaches_any_log_line_even_at_debug(gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret_headers = {"Authorization": f"Bearer {TOKEN}", "xi-api-key": TOKEN, "Cookie": f"t={TOKEN}"}
    async with connect(f"ws://127.0.0.1:{gw.port}/v1/stream?token={TOKEN}", additional_headers=secret_headers) as ws:
        await ws.recv()
        await ws.send(orjson.dumps({"type": "text", "context_id": TOKEN, "text": "Hi."}).decode())
        await ws.recv()
    for data in [
        get(f"/readyz?token={TOKEN}", f"Authorization: Bearer {TOKEN}"),
        get(f"/nope?token={TOKEN}"),
        post(f"/v1/audio/speech?token={TOKEN}", speech_body(input="Hi.", voice="nobody")),
    ]:
        await exchange(gw.port, data)
    # The test's own client logs under "websockets.client"; everything else is the server's.
    server_records = [r for r in caplog.records if not r.name.startswith("websockets.client")]
    assert any(r.levelno == logging.DEBUG and r.name == "voxgate.websockets" for r in server_records)
    for record in server_records:
        assert TOKEN not in record.getMessage() and TOKEN not in (record.exc_text or ""), record.name


async def test_the_engine_is_asked_for_facts_only_on_its_own_thread(gw: Gateway) -> None:
    async with run_websocket(gw.port) as ws:
        assert orjson.loads(await ws.recv())["type"] == "session.created"
    await exchange(gw.port, get("/readyz", f"Authorization: Bearer {TOKEN}"))
    await exchange(gw.port, get("/readyz"))
    (engine,) = gw.test_engines  # type: ignore[attr-defined]
    assert engine.caller_threads and all(name.startswith("voxgate-engine") for name in engine.caller_threads)


def test_deadlines_and_caps_are_validated() -> None:
    for key, value in [("server.http_head_timeout_s", 0), ("server.max_pending_heads", 0), ("server.max_http_connections", 0)]:
        with pytest.raises(ConfigError, match=rf"{key} must be (> 0|>= 1)"):
            test_config(**{key: value})


def test_the_front_door_works_on_uvloop_as_served_in_production() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> list[int]:
        overrides = {"engine.kind": "fake", "engine.preload_langs": "", "server.http_head_timeout_s": DEADLINE_S}
        async with run_server(overrides) as gateway:
            reader, writer = await open_raw(gateway.port)
            writer.write(b"GET /healthz HTTP/1.1\r\n")
            answers = [
                await exchange(gateway.port, get("/healthz")),
                await exchange(gateway.port, get("/healthz", "Origin: a", "Origin: b")),
                await exchange(gateway.port, post("/v1/models", b"x" * 300_000)),
                await asyncio.wait_for(read_to_end(reader), 10 * DEADLINE_S),
            ]
            writer.close()
            return [status_of(answer) for answer in answers]

    assert uvloop.run(main()) == [200, 400, 413, 408]
