"""NPC voices: the viseme table and track (pure), then the hook and the stdio bridge on a real server."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import subprocess
import sys
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.alignment import piece_alignment
from gateway.integrations.npc import (
    PHONEME_VISEMES,
    VISEMES,
    NpcEvent,
    NpcHook,
    Viseme,
    VisemeTrack,
    phonemes_to_visemes,
    serve_bridge,
)
from gateway.text.g2p import load_vocab
from tests.utils import run_server

REPO = Path(__file__).resolve().parent.parent
LONG_LINE = (
    "Halt! Who goes there? State your name and your business in the city, traveller, "
    "or turn back now. The gates close at sundown, and nobody passes after dark without a writ."
)


def assert_contiguous(visemes: list[Viseme], audio_ms: float) -> None:
    assert visemes, "no visemes"
    assert visemes[0].start_ms == 0.0
    for a, b in zip(visemes, visemes[1:]):
        assert a.end_ms == b.start_ms, (a, b)
    assert all(v.start_ms < v.end_ms for v in visemes)
    assert visemes[-1].end_ms == pytest.approx(audio_ms, abs=0.1)
    assert {v.viseme for v in visemes} <= set(VISEMES)


# --- the table and the track --------------------------------------------------------------------


def test_every_symbol_of_kokoros_vocabulary_has_a_viseme_or_a_documented_role() -> None:
    missing = sorted(ch for ch in load_vocab() if ch != " " and ch not in PHONEME_VISEMES)
    assert missing == []
    for mapped in PHONEME_VISEMES.values():
        assert mapped is None or set(mapped) <= set(VISEMES)


def test_h_and_stress_take_the_next_sounds_viseme_and_diphthongs_split_in_two() -> None:
    phonemes = [("h", 0, 50), ("ˈ", 50, 60), ("I", 60, 160), (" ", 160, 170), ("m", 170, 220)]
    visemes = phonemes_to_visemes([{"phoneme": p, "start_ms": s, "end_ms": e} for p, s, e in phonemes])
    assert [(v.viseme, v.start_ms, v.end_ms) for v in visemes] == [
        ("aa", 0.0, 110.0), ("ih", 110.0, 170.0), ("PP", 170.0, 220.0)
    ]


def test_a_long_space_is_a_pause_and_a_short_one_is_not() -> None:
    def visemes_for(space_ms: float) -> list[str]:
        timings = [("m", 0, 50), (" ", 50, 50 + space_ms), ("p", 50 + space_ms, 100 + space_ms)]
        return [v.viseme for v in phonemes_to_visemes([{"phoneme": p, "start_ms": s, "end_ms": e} for p, s, e in timings])]

    assert visemes_for(20) == ["PP"]
    assert visemes_for(120) == ["PP", "sil", "PP"]


_vocab = sorted(load_vocab())


@given(
    pieces=st.lists(
        st.tuples(st.text(alphabet=_vocab, min_size=1, max_size=30), st.lists(st.integers(0, 6), min_size=32, max_size=32)),
        min_size=1,
        max_size=4,
    )
)
@settings(max_examples=150, deadline=None)
def test_visemes_of_any_pieces_are_ordered_contiguous_and_cover_the_audio(pieces: list[tuple[str, list[int]]]) -> None:
    track = VisemeTrack()
    visemes: list[Viseme] = []
    offset_ms = 0.0
    for phonemes, frames in pieces:
        durations = np.array(frames[: len(phonemes) + 2])
        _, timings = piece_alignment([], phonemes, durations, offset_ms)
        visemes += track.feed(timings)
        offset_ms += 25.0 * durations.sum()
    visemes += track.finish(offset_ms)
    if offset_ms == 0:
        assert visemes == []
    else:
        assert_contiguous(visemes, offset_ms)


@given(
    pieces=st.lists(
        st.tuples(
            st.text(alphabet=_vocab, min_size=1, max_size=30),
            st.lists(st.integers(0, 6), min_size=32, max_size=32),
            st.lists(st.integers(1, 400), max_size=4),  # chunk ends (ms into the piece) the audio reaches
        ),
        min_size=1,
        max_size=4,
    )
)
@settings(max_examples=150, deadline=None)
def test_cover_sends_visemes_up_to_each_chunk_before_it_and_keeps_the_track_contiguous(
    pieces: list[tuple[str, list[int], list[int]]],
) -> None:
    track = VisemeTrack()
    visemes: list[Viseme] = []
    offset_ms = 0.0
    for phonemes, frames, chunk_ends in pieces:
        durations = np.array(frames[: len(phonemes) + 2])
        _, timings = piece_alignment([], phonemes, durations, offset_ms)
        visemes += track.feed(timings)
        piece_ms = 25.0 * durations.sum()
        for end in sorted(chunk_ends) + [piece_ms]:
            until = offset_ms + min(end, piece_ms)
            visemes += track.cover(until)
            assert until == 0 or visemes[-1].end_ms >= round(until, 1)
        offset_ms += piece_ms
    visemes += track.finish(offset_ms)
    if offset_ms == 0:
        assert visemes == []
    else:
        assert_contiguous(visemes, offset_ms)


# --- the hook on a real server --------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server_url() -> AsyncIterator[str]:
    overrides = {"session.max_messages_per_s": 0, "session.max_chars_per_s": 0}
    async with run_server(overrides) as gateway:
        yield f"ws://127.0.0.1:{gateway.port}"


async def connect(url: str) -> Any:
    from gateway.client import VoxgateClient

    client = VoxgateClient(url, alignment=True)
    await client.connect()
    return client


@pytest_asyncio.fixture(loop_scope="module")
async def client(server_url: str) -> AsyncIterator[Any]:
    """A connected client with alignment on, closed after the test."""
    connected = await connect(server_url)
    try:
        yield connected
    finally:
        await connected.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_say_returns_as_soon_as_audio_started_and_visemes_cover_the_line(client: Any) -> None:
    events: list[NpcEvent] = []
    hook = NpcHook(client, on_event=events.append, keep_audio=True)
    hook.configure("guard", voice="jm_kumo", speed=1.1)
    await hook.say("guard", "Warm up.")  # loads the English G2P on a fresh server
    await hook.wait_idle()
    events.clear()
    handle = await hook.say("guard", LONG_LINE)
    assert handle.started and not handle.done()  # the rest of the line is still coming
    assert await handle.wait() == "done"
    kinds = [e.kind for e in events]
    assert kinds[0] == "started" and kinds.index("done") == len(kinds) - 1
    assert_contiguous(handle.visemes, handle.audio_ms)
    assert handle.audio_ms == pytest.approx(len(handle.samples()) / handle.sample_rate * 1000, abs=25)
    words = [w["word"] for w in handle.words]
    assert words[:4] == ["Halt", "Who", "goes", "there"]
    starts = [w["start_ms"] for w in handle.words]
    assert starts == sorted(starts) and handle.words[-1]["end_ms"] <= handle.audio_ms
    assert handle.speech.context_id.startswith("guard-")


@pytest.mark.asyncio(loop_scope="module")
async def test_a_new_line_for_the_same_npc_interrupts_the_current_one_and_no_more_of_its_audio_comes(client: Any) -> None:
    log: list[NpcEvent] = []
    hook = NpcHook(client, on_event=log.append, stream_audio=True)
    first = await hook.say("guard", LONG_LINE)
    other = await hook.say("merchant", "Fresh apples, two coins a basket!")
    second = await hook.say("guard", "Never mind.")
    assert first.done() and first.outcome == "interrupted"
    assert await second.wait() == "done" and await other.wait() == "done"
    first_events = [e for e in log if e.line_id == first.line_id]
    assert first_events[-1].kind == "interrupted" and first_events[-1].data["by"] == "new_line"
    cut = log.index(first_events[-1])
    assert not [e for e in log[cut:] if e.line_id == first.line_id and e.kind == "audio"]
    # The interrupted line reported its end before the new line said anything.
    assert cut < next(i for i, e in enumerate(log) if e.line_id == second.line_id)
    assert [e.kind for e in log if e.line_id == other.line_id][-1] == "done"  # another NPC is not cut
    assert await hook.interrupt("guard") is False  # nothing left to cut


@pytest.mark.asyncio(loop_scope="module")
async def test_interrupt_cuts_the_line_and_its_event_stream_ends_with_interrupted(client: Any) -> None:
    hook = NpcHook(client)
    handle = await hook.say("guard", LONG_LINE)
    assert await hook.interrupt("guard") is True
    kinds = [event.kind async for event in handle]
    assert kinds[0] == "started" and kinds[-1] == "interrupted" and "done" not in kinds


# --- the stdio bridge -------------------------------------------------------------------------------


async def commands(*lines: Any, pause: float = 0.0) -> AsyncIterator[str]:
    for line in lines:
        yield line if isinstance(line, str) else orjson.dumps(line).decode()
        await asyncio.sleep(pause)


@pytest.mark.asyncio(loop_scope="module")
async def test_the_stdio_bridge_speaks_interrupts_and_reports_in_json_lines(server_url: str) -> None:
    client = await connect(server_url)
    events: list[dict[str, Any]] = []
    try:
        script = commands(
            {"cmd": "configure", "npc": "guard", "voice": "jm_kumo", "speed": 1.2},
            {"cmd": "configure", "npc": "guard", "voice": "nobody"},
            {"cmd": "say", "npc": "guard", "line": LONG_LINE, "id": "g1"},
            {"cmd": "say", "npc": "merchant", "line": "Apples!", "id": "m1"},
            "not json",
            {"cmd": "dance", "npc": "guard"},
            {"cmd": "interrupt", "npc": "guard"},
            {"cmd": "say", "npc": "guard", "line": "Move along.", "id": "g2"},
            pause=0.05,
        )
        await asyncio.wait_for(serve_bridge(client, script, events.append, audio="stream"), 60)
    finally:
        await client.close()
    orjson.dumps(events)  # every event is plain JSON
    assert events[0]["event"] == "ready" and "jm_kumo" in events[0]["voices"] and events[-1]["event"] == "bye"
    assert events[1] == {"event": "configured", "npc": "guard", "voice": "jm_kumo", "speed": 1.2, "lang": None}
    assert [e["code"] for e in events if e["event"] == "error"] == ["bad_field", "bad_command", "bad_command"]
    by_line: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e.get("line_id"):
            by_line.setdefault(e["line_id"], []).append(e)
    g1 = [e["event"] for e in by_line["g1"]]
    assert g1[-1] == "interrupted" and "done" not in g1
    for line_id in ("m1", "g2"):
        kinds = [e["event"] for e in by_line[line_id]]
        assert kinds[0] == "started" and kinds[-1] == "done"
        pcm = b"".join(base64.b64decode(e["pcm_s16le"]) for e in by_line[line_id] if e["event"] == "audio")
        done = by_line[line_id][-1]
        assert len(pcm) // 2 == pytest.approx(done["audio_ms"] * 24, abs=24 * 25)
        visemes = [Viseme(e["viseme"], e["start_ms"], e["end_ms"]) for e in by_line[line_id] if e["event"] == "viseme"]
        assert_contiguous(visemes, done["audio_ms"])
        assert all(VISEMES[e["index"]] == e["viseme"] for e in by_line[line_id] if e["event"] == "viseme")


@pytest.mark.asyncio(loop_scope="module")
async def test_the_bridge_runs_as_a_subprocess_and_writes_one_wav_per_line(server_url: str, tmp_path: Path) -> None:
    script = b"".join(
        orjson.dumps(c) + b"\n"
        for c in [
            {"cmd": "configure", "npc": "innkeeper", "voice": "af_heart"},
            {"cmd": "say", "npc": "innkeeper", "line": "Welcome, friend. A room is five silver.", "id": "inn-1"},
        ]
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.integrations.npc", "--url", server_url, "--audio", "wav", "--wav-dir", str(tmp_path),
        "--sample-rate", "22050",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(tmp_path),
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(script), 60)
    assert proc.returncode == 0, stderr.decode()
    events = [orjson.loads(line) for line in stdout.splitlines()]  # stdout holds nothing but events
    kinds = [e["event"] for e in events]
    assert kinds[0] == "ready" and kinds[-1] == "bye" and "audio" not in kinds
    done = next(e for e in events if e["event"] == "done")
    assert events[0]["sample_rate"] == 22_050
    with wave.open(done["wav"]) as wav:
        assert wav.getframerate() == 22_050
        assert wav.getnframes() / 22.05 == pytest.approx(done["audio_ms"], abs=25)


# --- the event-order contract (docs/npc.md) -----------------------------------------------------------


def check_visemes_precede_their_audio(events: list[NpcEvent]) -> None:
    """Before each audio chunk goes out, the visemes sent so far cover it; they stay contiguous."""
    covered = 0.0
    for event in events:
        if event.kind == "viseme":
            assert event.data["start_ms"] == pytest.approx(covered, abs=1e-6), event
            covered = event.data["end_ms"]
        elif event.kind == "audio":
            chunk_end_ms = event.data["offset_ms"] + len(event.data["samples"]) / 24
            assert covered >= chunk_end_ms - 0.1, (event.data["seq"], covered, chunk_end_ms)


@pytest.mark.asyncio(loop_scope="module")
async def test_every_chunk_of_audio_comes_after_the_visemes_that_cover_it_silences_included(client: Any) -> None:
    log: list[NpcEvent] = []
    hook = NpcHook(client, on_event=log.append, stream_audio=True)
    handle = await hook.say("guard", LONG_LINE)
    assert await handle.wait() == "done"
    assert [e.kind for e in log][0] == "started" and log[-1].kind == "done"
    check_visemes_precede_their_audio(log)
    last_viseme = [e for e in log if e.kind == "viseme"][-1]
    assert last_viseme.data["end_ms"] == pytest.approx(log[-1].data["audio_ms"], abs=0.1)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_line_cut_before_any_audio_still_starts_with_started(client: Any) -> None:
    hook = NpcHook(client, stream_audio=True)
    handle = await hook.start("guard", LONG_LINE)
    await handle.cancel()
    events = [event async for event in handle]
    assert [e.kind for e in events] == ["started", "interrupted"]
    assert events[0].data["latency_ms"] is None  # no audio came
    assert events[1].data == {"at_ms": 0.0, "at_sample": 0, "last_seq": None, "by": "interrupt"}


@pytest.mark.asyncio(loop_scope="module")
async def test_a_cut_line_has_visemes_up_to_the_audio_delivered_and_says_how_much_was_delivered(client: Any) -> None:
    log: list[NpcEvent] = []
    hook = NpcHook(client, on_event=log.append, stream_audio=True)
    handle = await hook.say("guard", LONG_LINE)
    while handle.audio_ms < 600 and not handle.done():
        await asyncio.sleep(0.01)
    await hook.interrupt("guard")
    assert handle.outcome == "interrupted"
    check_visemes_precede_their_audio(log)
    cut = log[-1]
    audio = [e for e in log if e.kind == "audio"]
    assert cut.kind == "interrupted" and audio
    assert cut.data["last_seq"] == audio[-1].data["seq"]
    assert cut.data["at_sample"] == audio[-1].data["offset_samples"] + len(audio[-1].data["samples"])
    assert cut.data["at_ms"] == pytest.approx(cut.data["at_sample"] / 24, abs=0.1)
    assert max(e.data["end_ms"] for e in log if e.kind == "viseme") >= cut.data["at_ms"]


@pytest.mark.asyncio(loop_scope="module")
async def test_the_bridge_streams_the_rate_and_format_the_game_asked_for(server_url: str) -> None:
    from gateway.client import VoxgateClient

    client = VoxgateClient(server_url, alignment=True, sample_rate=16_000, format="pcm_f32le")
    await client.connect()
    events: list[dict[str, Any]] = []
    try:
        script = commands({"cmd": "say", "npc": "innkeeper", "line": "Welcome, friend.", "id": "i1"})
        await asyncio.wait_for(serve_bridge(client, script, events.append, audio="stream"), 60)
    finally:
        await client.close()
    assert events[0]["sample_rate"] == 16_000 and events[0]["format"] == "pcm_f32le"
    line = [e for e in events if e.get("line_id") == "i1"]
    assert line[0]["event"] == "started" and line[0]["sample_rate"] == 16_000
    audio = [e for e in line if e["event"] == "audio"]
    assert audio and all("pcm_f32le" in e and "pcm_s16le" not in e for e in audio)
    samples = np.concatenate([np.frombuffer(base64.b64decode(e["pcm_f32le"]), "<f4") for e in audio])
    assert np.all(np.isfinite(samples)) and np.abs(samples).max() > 0
    assert len(samples) == pytest.approx(line[-1]["audio_ms"] * 16, abs=16 * 25)


# --- the bridge as a game runs it -----------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_quit_ends_the_bridge_cleanly_while_the_game_keeps_stdin_open(server_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.integrations.npc", "--url", server_url, "--audio", "none", "--no-warmup",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(tmp_path),
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        proc.stdin.write(b'{"cmd":"say","npc":"guard","line":"Halt! Who goes there?","id":"g1"}\n')
        await proc.stdin.drain()
        events: list[dict[str, Any]] = []
        while not events or events[-1]["event"] != "started":
            events.append(orjson.loads(await asyncio.wait_for(proc.stdout.readline(), 60)))
        proc.stdin.write(b'{"cmd":"quit"}\n')
        await proc.stdin.drain()
        while events[-1]["event"] != "bye":
            events.append(orjson.loads(await asyncio.wait_for(proc.stdout.readline(), 60)))
        returncode = await asyncio.wait_for(proc.wait(), 30)  # stdin is still open, as a game keeps it
        stderr = (await proc.stderr.read()).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert returncode == 0 and stderr.strip() == "", stderr
    g1 = [e["event"] for e in events if e.get("line_id") == "g1"]
    assert g1[0] == "started" and g1[-1] in ("interrupted", "done")


GODOT = shutil.which("godot3-server") or shutil.which("godot3")


@pytest.mark.skipif(GODOT is None, reason="Godot 3 is not installed (Debian: apt-get install godot3-server; scripts/test does it as root)")
@pytest.mark.asyncio(loop_scope="module")
async def test_the_godot3_client_runs_headless_speaks_interrupts_and_reads_visemes(server_url: str, tmp_path: Path) -> None:
    assert GODOT is not None
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    bridge = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.integrations.npc", "--url", server_url, "--listen", "127.0.0.1:0", "--no-warmup",
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(tmp_path),
    )
    assert bridge.stdout is not None and bridge.stderr is not None
    try:
        listening = orjson.loads(await asyncio.wait_for(bridge.stdout.readline(), 60))
        assert listening["event"] == "listening"
        godot = await asyncio.create_subprocess_exec(
            GODOT, "--path", str(REPO / "examples" / "godot3"), "-s", "headless_demo.gd",
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(tmp_path),
            env={**os.environ, "VOXGATE_NPC_URL": listening["url"], "HOME": str(tmp_path)},
        )
        output, _ = await asyncio.wait_for(godot.communicate(), 150)
        bridge.send_signal(signal.SIGTERM)
        bridge_rc = await asyncio.wait_for(bridge.wait(), 30)
    finally:
        for proc in (bridge,):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    lines = [line.split(" ", 2) for line in output.decode(errors="replace").splitlines() if line.startswith("voxgate-npc ")]
    printed = [(kind, orjson.loads(data)) for _, kind, data in lines]
    assert printed and printed[-1] == ("end", {"code": 0, "why": "bye"}), output.decode(errors="replace")[-3000:]
    assert godot.returncode == 0 and bridge_rc == 0
    events = [data for kind, data in printed if kind == "event"]
    samples = {data["line_id"]: data["samples"] for kind, data in printed if kind == "samples"}
    assert events[0]["event"] == "ready" and events[-1]["event"] == "bye"
    g1 = [e for e in events if e.get("line_id") == "g1"]
    g2 = [e for e in events if e.get("line_id") == "g2"]
    assert g1[0]["event"] == "started" and g1[-1]["event"] == "interrupted" and g1[-1]["by"] == "interrupt"
    assert samples["g1"] == g1[-1]["at_sample"] > 0  # Godot decoded exactly what the bridge says it delivered
    assert g2[0]["event"] == "started" and g2[-1]["event"] == "done"
    visemes = [Viseme(e["viseme"], e["start_ms"], e["end_ms"]) for e in g2 if e["event"] == "viseme"]
    assert_contiguous(visemes, g2[-1]["audio_ms"])
    assert samples["g2"] == pytest.approx(g2[-1]["audio_ms"] * 24, abs=24 * 25)
    g1_visemes = [e for e in g1 if e["event"] == "viseme"]
    assert g1_visemes and g1_visemes[-1]["end_ms"] >= g1[-1]["at_ms"]


@pytest.mark.asyncio(loop_scope="module")
async def test_the_npc_benchmark_measures_every_round(server_url: str) -> None:
    from gateway.bench.npc import MEASURES, run_npc_bench

    report = await asyncio.wait_for(run_npc_bench(server_url, rounds=1, engine="tiny"), 120)
    assert report.errors == []
    assert report.rounds == 1
    assert {name: len(values) for name, values in report.samples_ms.items()} == {name: 1 for name in MEASURES}
    assert report.samples_ms["two_npcs_first_ms"][0] <= report.samples_ms["two_npcs_second_ms"][0]
    assert "| say -> first audio (quiet) | 1 |" in report.table()
