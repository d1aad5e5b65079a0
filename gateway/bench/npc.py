"""``voxgate bench npc``: how fast NPC lines start and stop, as a game sees them through ``NpcHook``.

    voxgate bench npc                       # starts `voxgate serve` (default config: Kokoro weights)
    voxgate bench npc --engine tiny --rounds 2 --out -
    voxgate bench npc --url ws://127.0.0.1:8765/v1/stream

Each round measures, over one session with alignment on (as the NPC bridge runs it):

- **say -> first audio**, quiet: a guard's line while nothing else is spoken;
- **interrupt -> silence**: ``interrupt()`` once the line has audio, until its ``interrupted`` event
  (the server confirmed the cancel: no frame of the line follows);
- **say after a cut**: a new line that cuts the guard's current one, from ``say`` to its first audio;
- **two NPCs at once**: a guard and a merchant start together; first audio of the first and of the
  second to speak.

Lines are cut once they have audio, so a round costs a few seconds of synthesis, not whole lines.
Prints p50/p95 per measure with the machine, and writes Markdown plus JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.bench.machine import machine_info
from gateway.bench.soak import _wait_for_port
from gateway.protocol import STREAM_PATH

__all__ = ["NpcBenchReport", "run_npc_bench", "main"]

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
LINES = (
    "Halt! Who goes there? State your name and your business in the city.",
    "The gates close at sundown, and nobody passes after dark without a writ.",
    "Fresh apples! Two coins a basket, the best in the whole valley!",
    "I have not seen a traveller on this road since the last snow.",
    "Keep your voice down. The captain does not like strangers asking questions.",
    "You look tired, friend. A room upstairs is five silver for the night.",
)
MEASURES = {
    "say_to_first_audio_ms": "say -> first audio (quiet)",
    "interrupt_to_silence_ms": "interrupt -> silence (`interrupted`)",
    "say_after_cut_to_first_audio_ms": "say that cuts a line -> its first audio",
    "two_npcs_first_ms": "two NPCs at once: first to speak",
    "two_npcs_second_ms": "two NPCs at once: second to speak",
}


@dataclass
class NpcBenchReport:
    rounds: int
    engine: str
    samples_ms: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in MEASURES})
    errors: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)

    def percentiles(self) -> dict[str, tuple[float, float] | None]:
        return {name: _p50_p95(values) for name, values in self.samples_ms.items()}

    def table(self) -> str:
        rows = ["| measure | n | p50 ms | p95 ms | max ms |", "|---|---|---|---|---|"]
        for name, label in MEASURES.items():
            values = self.samples_ms[name]
            pct = _p50_p95(values)
            if pct is None:
                rows.append(f"| {label} | 0 | - | - | - |")
            else:
                rows.append(f"| {label} | {len(values)} | {pct[0]:.0f} | {pct[1]:.0f} | {max(values):.0f} |")
        return "\n".join(rows)


def _p50_p95(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


async def _until_audio(handle: Any, min_ms: float = 200.0, timeout: float = 60.0) -> None:
    """Until the line has ``min_ms`` of audio (or ended)."""
    deadline = time.monotonic() + timeout
    while handle.audio_ms < min_ms and not handle.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def run_npc_bench(
    url: str,
    *,
    rounds: int,
    engine: str = "?",
    token: str | None = None,
    max_seconds: float | None = None,
    say_timeout_s: float = 120.0,
    progress: Callable[[str], None] | None = None,
) -> NpcBenchReport:
    """Run ``rounds`` rounds against the server at ``url`` (see the module docstring); no round
    starts after ``max_seconds``. ``progress`` gets one line per round."""
    from gateway.client import VoxgateClient
    from gateway.integrations.npc import NpcHook

    report = NpcBenchReport(rounds=0, engine=engine)
    record = report.samples_ms
    began = time.monotonic()
    async with VoxgateClient(url, token=token, alignment=True) as client:
        await client.speak("Ready.").read_all()  # the first line of a fresh server loads G2P
        hook = NpcHook(client, stream_audio=False)

        async def say(npc: str, text: str) -> Any:
            return await asyncio.wait_for(hook.say(npc, text), say_timeout_s)
        voices = list(client.voices)
        hook.configure("guard", voice=voices[-1] if voices else None)
        hook.configure("merchant", voice=voices[0] if voices else None)
        for i in range(rounds):
            if max_seconds is not None and i and time.monotonic() - began > max_seconds:
                break
            line = LINES[i % len(LINES)]
            other = LINES[(i + 1) % len(LINES)]
            try:
                start = time.monotonic()
                first = await say("guard", line)
                if first.started:
                    record["say_to_first_audio_ms"].append((time.monotonic() - start) * 1000)
                await _until_audio(first)
                start = time.monotonic()
                await first.cancel()
                record["interrupt_to_silence_ms"].append((time.monotonic() - start) * 1000)

                cut = await say("guard", other)
                await _until_audio(cut)
                start = time.monotonic()
                after = await say("guard", line)  # cuts `cut`, then speaks
                if after.started:
                    record["say_after_cut_to_first_audio_ms"].append((time.monotonic() - start) * 1000)
                await hook.interrupt("guard")

                said_at = asyncio.get_running_loop().time()  # the clock of speech.first_audio_at
                both = await asyncio.gather(say("guard", line), say("merchant", other))
                firsts = sorted(h.speech.first_audio_at for h in both if h.started)
                if len(firsts) == 2:
                    record["two_npcs_first_ms"].append((firsts[0] - said_at) * 1000)
                    record["two_npcs_second_ms"].append((firsts[1] - said_at) * 1000)
                await hook.close()
                report.rounds += 1
                if progress is not None:
                    progress(f"round {i + 1}: " + ", ".join(
                        f"{name} {values[-1]:.0f}" for name, values in record.items() if values
                    ))
            except Exception as exc:  # one bad round is reported, the others still count
                report.errors.append(f"round {i}: {type(exc).__name__}: {exc}")
                await hook.close()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voxgate bench npc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="a running server (default: start `voxgate serve`)")
    parser.add_argument("--token", default=None)
    parser.add_argument("--engine", default="kokoro", choices=["kokoro", "tiny"], help="for the server started here")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--max-seconds", type=float, default=300.0, help="start no round after this many seconds")
    parser.add_argument("--note", default="", help="a line for the report (e.g. what else shared the CPU)")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results"), help="folder, or - for none")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    proc: subprocess.Popen[str] | None = None
    url = args.url
    if url is None:
        config = REPO_ROOT / "configs" / ("default.toml" if args.engine == "kokoro" else "test.toml")
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--set", f"engine.kind={args.engine}",
             "--set", "server.port=0", "--set", "session.max_messages_per_s=0", "--set", "session.max_chars_per_s=0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT,
        )
    try:
        if proc is not None:
            url = f"ws://127.0.0.1:{_wait_for_port(proc)}{STREAM_PATH}"
        started = time.monotonic()
        report = asyncio.run(run_npc_bench(
            url, rounds=args.rounds, engine=args.engine if proc else "external", token=args.token,
            max_seconds=args.max_seconds, progress=lambda line: print(line, file=sys.stderr, flush=True),
        ))
        wall_s = time.monotonic() - started
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    report.machine = machine_info()
    facts = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "voxgate bench npc " + shlex.join(list(sys.argv[1:] if argv is None else argv)),
        "server": f"started here, engine {args.engine}" if proc is not None else url,
        "machine": f"{report.machine['cpu']}, {report.machine['usable_cores']} cores, {report.machine['ram_gib']} GiB, "
        f"load average at end {report.machine.get('loadavg_at_end', '?')}, allocator {report.machine['allocator']}",
        "rounds": f"{report.rounds} of {args.rounds} ({wall_s:.0f} s; no round starts after {args.max_seconds:.0f} s)",
    }
    if args.note:
        facts["note"] = args.note
    text = "# NPC latency (`voxgate bench npc`)\n\n" + "\n".join(f"- {k}: {v}" for k, v in facts.items())
    text += "\n\n" + report.table() + "\n"
    if report.errors:
        text += "\nErrors:\n" + "\n".join(f"- {e}" for e in report.errors) + "\n"
    print(text)
    if args.out != "-":
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = out / f"npc-{report.engine}-{stamp}"
        base.with_suffix(".md").write_text(text, encoding="utf-8")
        base.with_suffix(".json").write_text(json.dumps({**asdict(report), "facts": facts}, indent=1), encoding="utf-8")
        print(f"written {base}.md and .json")
    return 1 if report.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
