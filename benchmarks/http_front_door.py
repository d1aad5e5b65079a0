"""The HTTP front door under attack, before and after a change: a bounded, loopback-only script.

Starts ``python -m gateway serve --engine tiny`` from ``--repo`` (any checkout: run it against an
old commit's worktree and against this one) with a 1,024 file-descriptor limit, then runs, one
after the other:

- ``idle_sockets``: 1,100 connections that send nothing (more than the server's fd limit);
- ``slowloris``: 200 connections that send part of a request head and then a byte every second;
- ``malformed``: bare LF, short body, two Content-Lengths, ``+14``, ``1_4``, ``HTTP/9.9``, a space
  before the colon, a 17 KB head, Transfer-Encoding with Content-Length;
- ``errors_500``: requests that used to get a 500 (a 300-character path segment with ``%0a``,
  ``response_format`` as a dict, two Origins / two Authorizations on a WebSocket upgrade);
- ``non_reader``: a ``/v1/audio/speech`` client that never reads its answer.

For each: is the server alive, how long ``/healthz`` and a WebSocket handshake take while the
attack is on (or whether they fail), the server's RSS before and after, and what each probe got.
Writes JSON and a Markdown table. Other work may share the CPU: latencies are indicative.

    python benchmarks/http_front_door.py --repo /path/to/checkout --label base --out benchmarks/results
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOKEN = "bench-token-4a1f"
ORIGIN = "http://good.example"
FD_LIMIT = 1_024


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


async def raw_exchange(port: int, data: bytes, *, timeout: float = 3.0) -> str:
    """What the server answered: its status line, ``hang`` (nothing within ``timeout``), ``closed``
    (closed without a word) or ``reset``/``refused``."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, TimeoutError) as exc:
        return f"connect failed ({type(exc).__name__})"
    try:
        writer.write(data)
        answer = await asyncio.wait_for(reader.read(200), timeout)
        return answer.split(b"\r\n", 1)[0].decode("latin-1") if answer else "closed"
    except TimeoutError:
        return "hang"
    except ConnectionResetError:
        return "reset"
    finally:
        writer.close()


async def healthz_ms(port: int, *, timeout: float = 3.0) -> float | str:
    started = time.perf_counter()
    status = await raw_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", timeout=timeout)
    if not status.startswith("HTTP/1.1 200"):
        return status
    return round((time.perf_counter() - started) * 1000, 1)


async def websocket_ms(port: int, *, timeout: float = 3.0) -> float | str:
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /v1/stream?token={TOKEN} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    started = time.perf_counter()
    status = await raw_exchange(port, request.encode(), timeout=timeout)
    if not status.startswith("HTTP/1.1 101"):
        return status
    return round((time.perf_counter() - started) * 1000, 1)


async def open_many(port: int, count: int) -> list[socket.socket]:
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 2)
        except (OSError, TimeoutError):
            sock.close()
            continue
        socks.append(sock)
    return socks


def count_closed_by_server(socks: list[socket.socket]) -> int:
    closed = 0
    for sock in socks:
        try:
            data = sock.recv(4096)
            closed += data == b"" or data.startswith(b"HTTP/1.1 408")
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    return closed


async def probes(port: int) -> dict[str, Any]:
    return {"healthz_ms": [await healthz_ms(port) for _ in range(3)], "websocket_ms": await websocket_ms(port)}


async def idle_sockets(port: int) -> dict[str, Any]:
    socks = await open_many(port, 1_100)
    await asyncio.sleep(1.0)
    during = await probes(port)
    await asyncio.sleep(12.0)  # past a 10 s head deadline
    result = {"opened": len(socks), "during": during, "closed_by_server_after_12s": count_closed_by_server(socks)}
    for sock in socks:
        sock.close()
    return result


async def slowloris(port: int) -> dict[str, Any]:
    socks = await open_many(port, 200)
    for sock in socks:
        try:
            sock.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        except OSError:
            pass
    during = None
    for second in range(12):
        for sock in socks:
            try:
                sock.send(b"X")
            except OSError:
                pass
        if second == 1:
            during = await probes(port)
        await asyncio.sleep(1.0)
    result = {"opened": len(socks), "during": during, "closed_by_server_after_12s": count_closed_by_server(socks)}
    for sock in socks:
        sock.close()
    return result


MALFORMED = {
    "bare LF": b"GET /healthz HTTP/1.1\nHost: x\n\n",
    "body shorter than Content-Length": b"POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc",
    "two Content-Lengths": b"POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
    "Content-Length +0": b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: +0\r\n\r\n",
    "Content-Length 1_4": b"POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: 1_4\r\n\r\n" + b"x" * 14,
    "HTTP/9.9": b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
    "space before colon": b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n",
    "17 KB head": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 17_000 + b"\r\n\r\n",
    "Transfer-Encoding + Content-Length": b"POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
}
UPGRADE = b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"


def speech(body: bytes) -> bytes:
    head = f"POST /v1/audio/speech?token={TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


ERRORS_500 = {
    "300-char path segment with %0a": b"GET /" + b"a" * 300 + b"%0aFORGED HTTP/1.1\r\nHost: x\r\n\r\n",
    "response_format as a dict": speech(b'{"input": "Hi.", "response_format": {"a": 1}}'),
    "two Origins on a WebSocket upgrade": b"GET /v1/stream?token=" + TOKEN.encode() + b" HTTP/1.1\r\nHost: x\r\n" + UPGRADE
    + b"Origin: http://evil.example\r\nOrigin: " + ORIGIN.encode() + b"\r\n\r\n",
    "two Authorizations on a WebSocket upgrade": b"GET /v1/stream HTTP/1.1\r\nHost: x\r\n" + UPGRADE
    + b"Authorization: Bearer x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n",
    "Origin evil then good on plain HTTP": b"GET /v1/models?token=" + TOKEN.encode() + b" HTTP/1.1\r\nHost: x\r\n"
    + b"Origin: http://evil.example\r\nOrigin: " + ORIGIN.encode() + b"\r\n\r\n",
    "a 400-digit number in the input": speech(b'{"input": "' + b"1" * 400 + b'"}'),
}


async def answers(port: int, cases: dict[str, bytes]) -> dict[str, Any]:
    # 35 s: past a 30 s body deadline, for the body that never ends.
    got = {name: await raw_exchange(port, data, timeout=35.0 if "shorter" in name else 5.0) for name, data in cases.items()}
    return {"answers": got, "during": await probes(port)}


async def non_reader(port: int, *, limit_s: float = 90.0) -> dict[str, Any]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(speech(json.dumps({"input": "This sentence keeps the engine busy for a while. " * 60, "response_format": "pcm"}).encode()))
    started = time.perf_counter()
    await asyncio.sleep(2.0)
    sessions_during = await active_sessions(port)
    during = await probes(port)
    freed_after_s = None
    while time.perf_counter() - started < limit_s:
        await asyncio.sleep(2.0)
        if await active_sessions(port) == 0:
            freed_after_s = round(time.perf_counter() - started, 1)
            break
    result = {
        "during": during,
        "active_sessions_during": sessions_during,
        "session_freed_after_s": freed_after_s,
        "connection_closed_by_server": closed_by_server(sock),
        "limit_s": limit_s,
    }
    sock.close()
    return result


def closed_by_server(sock: socket.socket) -> bool:
    """Read what is buffered: True at end of stream or a reset, False if the server still holds it."""
    sock.setblocking(False)
    try:
        while sock.recv(1 << 20):
            pass
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


async def active_sessions(port: int) -> float | str:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    except (OSError, TimeoutError) as exc:
        return type(exc).__name__
    for line in data.decode("latin-1").splitlines():
        if line.startswith("voxgate_active_sessions "):
            return float(line.split()[1])
    return "no metric"


SCENARIOS = {"idle_sockets": idle_sockets, "slowloris": slowloris, "malformed": None, "errors_500": None, "non_reader": non_reader}


async def run(repo: Path, port: int, log_path: Path) -> dict[str, Any]:
    def limit_fds() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    command = [
        sys.executable, "-m", "gateway", "serve", "--engine", "tiny", "--port", str(port),
        "--set", f"server.auth_token={TOKEN}", "--set", f"server.allowed_origins={ORIGIN}",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(repo))
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=repo, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=limit_fds)
    try:
        async with asyncio.timeout(180):
            while not isinstance(await healthz_ms(port, timeout=1.0), float):
                if server.poll() is not None:
                    raise RuntimeError(f"server exited: see {log_path}")
                await asyncio.sleep(0.5)
        results: dict[str, Any] = {"baseline": await probes(port)}
        for name, scenario in SCENARIOS.items():
            before = rss_mib(server.pid)
            started = time.perf_counter()
            if name == "malformed":
                outcome = await answers(port, MALFORMED)
            elif name == "errors_500":
                outcome = await answers(port, ERRORS_500)
            else:
                assert scenario is not None
                outcome = await scenario(port)
            await asyncio.sleep(1.0)
            alive = server.poll() is None
            outcome.update(
                seconds=round(time.perf_counter() - started, 1),
                rss_before_mib=before,
                rss_after_mib=rss_mib(server.pid) if alive else None,
                alive=alive,
                healthz_after_ms=await healthz_ms(port) if alive else None,
            )
            results[name] = outcome
            print(name, json.dumps(outcome)[:400], flush=True)
        return results
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def markdown(label: str, commit: str, results: dict[str, Any], machine: str) -> str:
    lines = [
        f"# HTTP front door under attack: {label} ({commit})",
        "",
        f"Machine: {machine}. Server: `voxgate serve --engine tiny`, fd limit {FD_LIMIT}, token set; "
        "other engineers' work shared the 2 cores, so latencies are indicative.",
        "",
        "| scenario | alive | /healthz during (ms or failure) | WebSocket handshake during | RSS before -> after MiB | notes |",
        "|---|---|---|---|---|---|",
    ]
    for name in SCENARIOS:
        r = results[name]
        notes = ""
        if "closed_by_server_after_12s" in r:
            notes = f"{r['closed_by_server_after_12s']} of {r['opened']} closed by the server after 12 s"
        elif "answers" in r:
            notes = "; ".join(f"{k}: {v}" for k, v in r["answers"].items())
        elif "session_freed_after_s" in r:
            freed = r["session_freed_after_s"]
            notes = (
                f"active sessions {r['active_sessions_during']} during; "
                + (f"session freed after {freed} s" if freed is not None else f"session still open after {r['limit_s']:g} s")
                + f"; connection closed by the server: {r['connection_closed_by_server']}"
            )
        during = r["during"] or {}
        lines.append(
            f"| {name} | {r['alive']} | {during.get('healthz_ms')} | {during.get('websocket_ms')} | "
            f"{r['rss_before_mib']} -> {r['rss_after_mib']} | {notes} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, required=True, help="checkout whose gateway to serve")
    parser.add_argument("--label", required=True, help="e.g. base or after")
    parser.add_argument("--port", type=int, default=18_990)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8_192)), hard))
    repo = args.repo.resolve()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"http-front-door-{args.label}"
    log_path = Path(tempfile.gettempdir()) / f"http-front-door-{args.label}.log"
    results = asyncio.run(run(repo, args.port, log_path))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from gateway.bench.machine import describe_machine, machine_info

    info = machine_info()
    stem.with_suffix(".json").write_text(json.dumps({"label": args.label, "commit": commit, "machine": info, "results": results}, indent=2))
    stem.with_suffix(".md").write_text(markdown(args.label, commit, results, describe_machine(info)))
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
