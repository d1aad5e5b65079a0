"""``voxgate bench load``, the workload: seeded LLM-like scripts, and the playback model that turns
arrival times into underruns.

Pure and deterministic (no I/O, no clock): everything random is drawn from the seed, so every mode
of a run gets byte-identical inputs at the same offsets.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from gateway.protocol import SAMPLE_RATE

__all__ = ["UNDERRUN_TOLERANCE_S", "make_fragments", "make_utterance", "percentile", "playback", "session_script"]

#: Stalls shorter than this are timestamp noise, not an audible underrun.
UNDERRUN_TOLERANCE_S = 0.001

# Common English words: every one is in misaki's lexicon, so G2P cost and phoneme lengths are typical.
_WORDS = tuple(
    """
the a an and or but so because if when while then that this these those it its they them their we
our you your he she his her i my me is are was were be been being have has had do does did can could
will would should might must not no yes very really just also only even still already about after
before over under into onto from with without between through during around across along near far
time day night week year people person friend family child world city country house home room door
window table water food coffee music book story question answer idea reason problem plan way part
place point case system number group company money work job team game line word name hand head eye
voice sound light color morning evening weather rain river mountain road street car train station
good great small large long short new old big little high low early late easy hard simple clear
quick slow warm cold bright quiet happy ready sure important different possible certain public
make take give find think know want need help try call tell ask show feel seem leave keep start
turn move live believe hold bring begin write read learn change follow stop speak listen play run
walk open close watch meet send build stay wait understand remember explain describe consider
today tomorrow yesterday always never often sometimes usually maybe perhaps probably together
first second next last every other another each many much more most some few several enough
""".split()  # noqa: SIM905 - a word list reads better as text
)

_OPENERS = ["Sure", "Okay", "Well", "Alright", "So", "Right", "Of course", "Good question", "Honestly"]


# --- scripts: seeded LLM-like text ----------------------------------------------------------------


def make_utterance(rng: random.Random, *, min_words: int = 20) -> str:
    """One assistant turn: sentences of 5-16 words until at least ``min_words`` words."""
    sentences: list[str] = []
    num_words = 0
    if rng.random() < 0.5:
        sentences.append(rng.choice(_OPENERS) + ",")
    while num_words < min_words:
        n = rng.randint(5, 16)
        words = [rng.choice(_WORDS) for _ in range(n)]
        if n > 7 and rng.random() < 0.4:
            at = rng.randint(3, n - 3)
            words[at] += ","
        words[0] = words[0][0].upper() + words[0][1:]
        words[-1] += rng.choices([".", "?", "!"], weights=[7, 2, 1])[0]
        sentences.append(" ".join(words))
        num_words += n
    return " ".join(sentences)


def make_fragments(text: str, rng: random.Random) -> list[tuple[str, int]]:
    """Cut text into LLM-token-like fragments: (fragment, word index it belongs to).

    Short words are one token (with their leading space), longer ones two or three; trailing
    punctuation is sometimes its own token.
    """
    fragments: list[tuple[str, int]] = []
    for index, word in enumerate(text.split(" ")):
        lead = " " if index else ""
        core, punct = word, ""
        while core and not core[-1].isalnum():
            core, punct = core[:-1], core[-1] + punct
        if punct and rng.random() < 0.5:
            core, punct = core + punct, ""
        pieces: list[str] = []
        rest = core
        while len(rest) > 5:
            cut = rng.randint(2, 4)
            pieces.append(rest[:cut])
            rest = rest[cut:]
        pieces.append(rest)
        pieces[0] = lead + pieces[0]
        fragments.extend((piece, index) for piece in pieces if piece)
        if punct:
            fragments.append((punct, index))
    return fragments


def session_script(
    seed: int,
    session_index: int,
    *,
    utterances: int,
    words_per_second: float,
    min_words: int,
    think_seconds: float,
    ramp_seconds: float,
) -> dict[str, Any]:
    """Everything session ``session_index`` will do, drawn from (seed, index) only, so a session's
    inputs do not depend on N or the mode: start offset, and per turn the fragments with their send
    offsets (seconds from the turn's start) and the pause after the turn's playback."""
    rng = random.Random(f"voxgate-load:{seed}:{session_index}")
    start = rng.uniform(0.0, ramp_seconds) if ramp_seconds > 0 else 0.0
    turns = []
    for _ in range(utterances):
        text = make_utterance(rng, min_words=min_words)
        fragments = make_fragments(text, rng)
        per_word: dict[int, int] = {}
        for _, word in fragments:
            per_word[word] = per_word.get(word, 0) + 1
        offsets: list[float] = []
        t = 0.0
        word_start: dict[int, float] = {}
        seen: dict[int, int] = {}
        for _, word in fragments:
            if word not in word_start:
                word_start[word] = t
                t += rng.uniform(0.6, 1.4) / words_per_second
            k = seen.get(word, 0)
            seen[word] = k + 1
            duration = t - word_start[word]
            offsets.append(word_start[word] + duration * k / per_word[word])
        turns.append(
            {
                "text": text,
                "fragments": [f for f, _ in fragments],
                "offsets": offsets,
                "think": rng.uniform(0.5, 1.5) * think_seconds,
            }
        )
    return {"start": start, "turns": turns}


# --- the playback model ---------------------------------------------------------------------------


def playback(
    frames: Sequence[tuple[float, int, int]],
    *,
    sample_rate: int = SAMPLE_RATE,
    jitter_s: float = 0.0,
    complete: bool = True,
    until: float | None = None,
) -> dict[str, float]:
    """Simulate real-time playback of one context's frames, ``(arrival, sample_offset, num_samples)``
    in order. Returns ``underruns``, ``underrun_s``, ``audio_s`` and ``end`` (when playback ends).

    An incomplete context (cut by the deadline ``until``) whose playhead ran dry before ``until``
    counts one more underrun lasting until ``until``.
    """
    if not frames:
        return {"underruns": 0, "underrun_s": 0.0, "audio_s": 0.0, "end": until or 0.0}
    start = frames[0][0] + jitter_s
    stall = 0.0
    underruns = 0
    for arrival, offset, _ in frames:
        need = start + offset / sample_rate + stall
        if arrival > need + UNDERRUN_TOLERANCE_S:
            underruns += 1
            stall += arrival - need
    _, last_offset, last_n = frames[-1]
    total = (last_offset + last_n) / sample_rate
    end = start + total + stall
    if not complete and until is not None and end < until:
        underruns += 1
        stall += until - end
        end = until
    return {"underruns": underruns, "underrun_s": stall, "audio_s": total, "end": end}


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
