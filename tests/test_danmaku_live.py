"""``voxgate danmaku`` live: comments in over stdin, HTTP, WebSocket and Twitch IRC (a local fake),
voice and captions out to overlay pages and a player command. Tiny random-weight model."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets

from gateway.config import load_config
from gateway.integrations.danmaku import Comment, DanmakuConfig
from gateway.integrations.danmaku_cli import CommandSink
from gateway.integrations.danmaku_live import LiveDanmaku, parse_comments_body
from gateway.integrations.danmaku_twitch import TwitchChat, parse_line, to_comment
from gateway.protocol import decode_audio_frame
from tests.utils import run_server

REPO = Path(__file__).resolve().parent.parent
OVERRIDES = {"session.max_messages_per_s": 0, "session.max_chars_per_s": 0}


# --- the schema -----------------------------------------------------------------------------------


def test_a_comment_body_may_be_one_object_an_array_or_json_lines() -> None:
    one = b'{"user": "u1", "text": "hi", "kind": "mention", "timestamp": 12.5}'
    [c] = parse_comments_body(one, id_prefix="p")
    assert (c.viewer, c.text, c.kind, c.at, c.id) == ("u1", "hi", "mention", 12.5, "p-1")
    many = b'[{"user": "a", "text": "x"}, {"viewer": "b", "text": "y", "kind": "gift", "amount": 5, "id": "g"}]'
    assert [(c.viewer, c.kind, c.id) for c in parse_comments_body(many, id_prefix="p")] == [("a", "chat", "p-1"), ("b", "gift", "g")]
    lines = b'{"user": "a", "text": "x"}\n\n{"user": "b", "text": "y"}\n'
    assert len(parse_comments_body(lines, id_prefix="p")) == 2


@pytest.mark.parametrize(
    ("body", "fragment"),
    [(b"", "empty"), (b"{nope", "not JSON"), (b'{"text": "no user"}', "without user"),
     (b'{"user": "a", "kind": "shout"}', "unknown comment kind"), (b'[1, 2]', "JSON object")],
)
def test_a_bad_comment_body_is_refused_with_what_is_wrong(body: bytes, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_comments_body(body, id_prefix="p")


def test_the_danmaku_policy_is_a_config_section_loaded_from_toml_and_environment() -> None:
    config = load_config(REPO / "configs" / "danmaku.toml", environ={"VOXGATE_DANMAKU_TTL_CHAT_S": "5"})
    assert isinstance(config.danmaku, DanmakuConfig)
    assert config.danmaku.ttl_chat_s == 5.0
    assert config.danmaku.streamer_names == ("Mika", "米卡")
    assert config.danmaku.emoji == "name" and config.danmaku.emoji_names["🦄"] == "unicorn"
    assert config.danmaku.replacements["en"]["pog"] == "pog champ"
    assert config.danmaku.templates["gift"]["en"].startswith("Thank you")
    assert load_config(None, environ={}).danmaku == DanmakuConfig()


# --- in-process: HTTP, WebSocket, overlay, player -------------------------------------------------


async def http_post(port: int, path: str, body: bytes, content_type: str = "application/json") -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, payload = response.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    try:
        return status, orjson.loads(payload)
    except orjson.JSONDecodeError:
        return status, payload.decode()


async def overlay_messages(url: str, out: list[Any], done: asyncio.Event, want: int) -> None:
    async with websockets.connect(url) as ws:
        async for message in ws:
            out.append(message)
            if isinstance(message, str) and json.loads(message)["type"] == "utterance.done":
                want -= 1
                if want == 0:
                    done.set()
                    return


async def test_comments_posted_over_http_and_websocket_are_spoken_to_the_overlay_and_the_player(tmp_path: Path) -> None:
    from gateway.client import VoxgateClient

    played = tmp_path / "played.raw"
    player = CommandSink(f"{sys.executable} -c \"import sys; open({str(played)!r}, 'wb').write(sys.stdin.buffer.read())\"")
    events: list[dict[str, Any]] = []
    config = DanmakuConfig(streamer_names=("Mika",), listen_port=0, ttl_chat_s=60, ttl_mention_s=60, settle_s=0.2)
    async with run_server(OVERRIDES) as gateway, VoxgateClient(f"ws://127.0.0.1:{gateway.port}") as client:
        await player.start()
        live = LiveDanmaku(config, client, sinks=(player,), on_event=events.append)
        await live.start()
        try:
            assert live.port
            overlay: list[Any] = []
            heard_two = asyncio.Event()
            watcher = asyncio.create_task(overlay_messages(f"ws://127.0.0.1:{live.port}/overlay/ws", overlay, heard_two, 2))
            while live.overlay.num_viewers == 0:
                await asyncio.sleep(0.01)

            status, reply = await http_post(live.port, "/comments", b'{"user": "u1", "name": "Ann", "text": "hello Mika 666", "id": "h1"}')
            assert status == 202 and reply == {"results": [{"id": "h1", "outcome": "queued", "group_id": "dm-0", "reason": None}]}
            assert (await http_post(live.port, "/comments", b'{"user": "u1"', "application/json"))[0] == 400
            assert (await http_post(live.port, "/comments", b'{"user": "u2", "text": "x"}', "text/plain"))[0] == 415

            async with websockets.connect(f"ws://127.0.0.1:{live.port}/comments") as ws:
                await ws.send('{"user": "u2", "text": "nice play", "id": "w1"}')
                assert json.loads(await ws.recv())["results"][0]["outcome"] == "queued"
                await ws.send("not json")
                assert json.loads(await ws.recv())["type"] == "error"
            # A page of another site in the streamer's browser must not speak on the stream.
            async with websockets.connect(f"ws://127.0.0.1:{live.port}/comments", origin="http://evil.example") as ws:  # type: ignore[arg-type]
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 1008

            await asyncio.wait_for(heard_two.wait(), 120)
            await live.drain()
        finally:
            await live.stop()
            watcher.cancel()
        await player.close()
    report = live.policy.report
    assert [s.comment_ids for s in report.spoken] == [["h1"], ["w1"]]
    assert report.spoken[0].speech == "hello Mika six six six"  # netspeak: what is sent
    # The overlay got, per utterance: started (who, what they typed), its frames, done - in that order.
    texts = [json.loads(m) for m in overlay if isinstance(m, str)]
    assert [m["type"] for m in texts] == ["overlay.hello", "utterance.started", "utterance.done", "utterance.started", "utterance.done"]
    assert (texts[1]["name"], texts[1]["text"], texts[1]["said"]) == ("Ann", "hello Mika 666", "hello Mika 666")
    kinds = ["frame" if isinstance(m, bytes) else json.loads(m)["type"] for m in overlay]
    first_done = kinds.index("utterance.done")
    assert kinds[2] == "frame" and set(kinds[2:first_done]) == {"frame"}
    frames = [decode_audio_frame(m) for m in overlay if isinstance(m, bytes)]
    assert [h.seq for h, _ in frames] == list(range(len(frames)))
    assert {h.context_index for h, _ in frames} == {1, 2}
    samples = sum(len(p) // 2 for _, p in frames)
    total_ms = sum(s.audio_ms or 0 for s in report.spoken)
    assert abs(samples / 24 - total_ms) < 1.0
    # The player command got the same audio.
    assert played.stat().st_size == 2 * samples == 2 * player.num_samples
    assert [e["event"] for e in events if e["event"] in ("speaking", "spoken")] == ["speaking", "spoken", "speaking", "spoken"]


# --- the command, live on stdin -------------------------------------------------------------------


def test_voxgate_danmaku_speaks_stdin_comments_as_they_arrive_before_stdin_ends(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "gateway", "danmaku", "--local", "--config", str(REPO / "configs" / "test.toml"),
               "--stdin", "--no-listen", "--report", str(report), "--set", "session.max_messages_per_s=0"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None

    def next_event(kind: str) -> dict[str, Any]:
        assert process.stdout is not None
        for line in process.stdout:
            event = json.loads(line)
            if event["event"] == kind:
                return event
        raise AssertionError(f"no {kind} event; stderr: {process.stderr.read().decode()[-2000:] if process.stderr else ''}")

    try:
        assert next_event("ready")["langs"]
        process.stdin.write(b'{"user": "u1", "text": "Thank you \xe5\xb0\x8f\xe6\x98\x8e16!", "id": "s1"}\n')
        process.stdin.flush()
        assert next_event("queued")["comment_id"] == "s1"
        # Spoken while stdin is still open: the session did not wait for EOF.
        speaking = next_event("speaking")
        assert speaking["comment_ids"] == ["s1"] and speaking["text"] == "Thank you 小明16!"
        assert next_event("spoken")["utterance_id"] == speaking["utterance_id"]
        process.stdin.write(b"this is not json\n")
        process.stdin.flush()
        assert "not JSON" in next_event("error")["message"]
        process.stdin.close()
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    data = json.loads(report.read_text())
    assert data["num_comments"] == 1 and data["num_comments_spoken"] == 1


# --- Twitch IRC, against a local fake -------------------------------------------------------------

TWITCH_LINES = [
    "@badge-info=;badges=;color=;display-name=Ann;emotes=;id=m1;tmi-sent-ts=1700000000000;user-id=101 "
    ":ann!ann@ann.tmi.twitch.tv PRIVMSG #mika :hello chat",
    "@bits=250;display-name=Bob;id=m2;user-id=102 :bob!bob@bob.tmi.twitch.tv PRIVMSG #mika :Cheer250 great stream",
    "@display-name=Cy;id=m3;reply-parent-user-login=mika;user-id=103 :cy!cy@cy.tmi.twitch.tv PRIVMSG #mika :@mika what game?",
    "@display-name=Dee;id=m4;login=dee;msg-id=sub;system-msg=Dee\\ssubscribed\\sat\\sTier\\s1.;user-id=104 :tmi.twitch.tv USERNOTICE #mika",
    "@display-name=Eve;id=m5;login=eve;msg-id=raid;msg-param-viewerCount=42;user-id=105 :tmi.twitch.tv USERNOTICE #mika",
    ":tmi.twitch.tv 001 justinfan1 :Welcome, GLHF!",
]


def test_twitch_irc_lines_become_comments_of_the_right_kind() -> None:
    comments = [to_comment(m, broadcaster="mika") for m in map(parse_line, TWITCH_LINES) if m is not None]
    assert [(c.viewer, c.name, c.kind, c.text, c.amount) for c in comments if c] == [
        ("101", "Ann", "chat", "hello chat", 0.0),
        ("102", "Bob", "superchat", "great stream", 2.5),
        ("103", "Cy", "mention", "@mika what game?", 0.0),
        ("104", "Dee", "gift", "subscription", 0.0),
        ("105", "Eve", "gift", "raid", 42.0),
    ]
    assert comments[-1] is None
    tagged = parse_line("@display-name=A\\sB\\:C;user-id=1 :a!a@a PRIVMSG #x :hi")
    assert tagged is not None and tagged.tags["display-name"] == "A B;C"


async def test_the_twitch_reader_logs_in_joins_answers_ping_and_reconnects_against_a_fake_server() -> None:
    received: list[str] = []
    sessions: list[list[str]] = []

    async def fake_twitch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines: list[str] = []
        sessions.append(lines)
        while len(lines) < 3:  # CAP, NICK, JOIN
            lines.append((await reader.readline()).decode().strip())
        writer.write(b"PING :tmi.twitch.tv\r\n")
        await writer.drain()
        lines.append((await reader.readline()).decode().strip())
        if len(sessions) == 1:
            writer.write(("\r\n".join(TWITCH_LINES[:2]) + "\r\nRECONNECT\r\n").encode())
        else:
            writer.write(("\r\n".join(TWITCH_LINES[2:]) + "\r\n").encode())
        await writer.drain()
        await reader.read()  # until the client goes
        writer.close()

    server = await asyncio.start_server(fake_twitch, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    chat = TwitchChat("#Mika", host="127.0.0.1", port=port, max_backoff_s=0.05)
    comments: list[Comment] = []
    done = asyncio.Event()

    def submit(comment: Comment) -> None:
        comments.append(comment)
        received.append(comment.id)
        if len(comments) == 5:
            done.set()

    task = asyncio.create_task(chat.feed(submit))
    try:
        await asyncio.wait_for(done.wait(), 30)
    finally:
        task.cancel()
        server.close()
    assert received == ["m1", "m2", "m3", "m4", "m5"]
    assert chat.num_connections == 2
    first = sessions[0]
    assert first[0] == "CAP REQ :twitch.tv/tags twitch.tv/commands"
    assert first[1].startswith("NICK justinfan") and first[2] == "JOIN #mika"
    assert first[3] == "PONG :tmi.twitch.tv"
    assert not any(line.startswith("PASS") for line in first)


async def test_json_lines_are_read_from_a_regular_file_as_well_as_a_pipe(tmp_path: Path) -> None:
    from gateway.integrations.danmaku_live import read_json_lines

    path = tmp_path / "comments.jsonl"
    path.write_bytes(b'{"user": "a", "text": "x"}\n{"user": "b", "text": "y"}\n')
    with open(path, "rb") as f:
        assert [line async for line in read_json_lines(f)] == path.read_bytes().splitlines(keepends=True)
    read_end, write_end = os.pipe()
    os.write(write_end, b'{"user": "c"}\n')
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        assert [line async for line in read_json_lines(f)] == [b'{"user": "c"}\n']
