"""Visemes from phoneme timings: the phoneme -> Oculus/OVR viseme table and a per-line track.

**Visemes** come from the server's phoneme timings through ``PHONEME_VISEMES``, a table from Kokoro's
phoneme set (misaki's English, Japanese and Chinese output, and espeak-style IPA) to the 15 Oculus/OVR
visemes (``VISEMES``, in OVR index order, so ``index`` plugs into OVR LipSync, Unity blend shapes or
a Godot animation track):

=====  ======================================  =====  =========================================
sil    silence, pauses, punctuation            nn     n l ŋ ɲ ɳ ɴ ʎ
PP     p b m β                                 RR     ɹ r ɻ ʁ ɚ
FF     f v ʋ ɸ                                 aa     a ɑ æ ɐ ʌ
TH     θ ð                                     E      e ɛ ə ɜ ᵊ ɘ ɤ
DD     t d ɾ T ʈ ɖ ɽ                           ih     i ɪ ɨ ᵻ j
kk     k ɡ g c ɟ x ɣ χ q ɰ                     oh     o ɔ ɒ œ
CH     ʧ ʤ ʃ ʒ ʂ ʐ ɕ ʑ ʨ ʥ ꭧ ç ʝ               ou     u ʊ w ɯ ɥ y ø ᵝ
SS     s z ʦ ʣ S
=====  ======================================  =====  =========================================

Kokoro's diphthong letters are split in two halves: ``A`` (eɪ) E+ih, ``I`` (aɪ) aa+ih, ``W`` (aʊ)
aa+ou, ``O`` (oʊ) oh+ou, ``Q`` (əʊ) E+ou, ``Y`` (ɔɪ) oh+ih. ``h`` and ``ʔ`` take the viseme of the
sound after them (the mouth is already shaping it), and so do the stress marks ˈ ˌ (they stand before
the stressed vowel). Length, aspiration, palatalisation, nasalisation and tone marks (ː ʰ ʲ ̃ ↓ ↗ ↘ →)
lengthen the viseme before them. A space is ``sil`` when it lasts at least
``min_silence_ms`` (a real pause), else it lengthens the viseme before it. Unknown symbols are treated
like ``h``. Gaps (the model's leading and trailing silence, between pieces, the end of the line) are
``sil``, so a line's visemes are in order and cover its audio from 0 to ``audio_ms`` without holes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["VISEMES", "PHONEME_VISEMES", "Viseme", "VisemeTrack", "phonemes_to_visemes"]

#: The Oculus/OVR viseme set, in OVR's index order.
VISEMES: tuple[str, ...] = ("sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "ih", "oh", "ou")

_COARTICULATED = None  # takes the viseme of the next sound
_MODIFIER: tuple[str, ...] = ()  # lengthens the viseme before it


def _table() -> dict[str, tuple[str, ...] | None]:
    groups = {
        "sil": ";:,.!?—…\"()“”«»'",
        "PP": "pbmβ",
        "FF": "fvʋɸ",
        "TH": "θð",
        "DD": "tdɾTʈɖɽ",
        "kk": "kɡgcɟxɣχqɰ",
        "CH": "ʧʤʃʒʂʐɕʑʨʥꭧçʝ",
        "SS": "szʦʣS",
        "nn": "nlŋɲɳɴʎ",
        "RR": "ɹrɻʁɚ",
        "aa": "aɑæɐʌ",
        "E": "eɛəɜᵊɘɤ",
        "ih": "iɪɨᵻj",
        "oh": "oɔɒœ",
        "ou": "uʊwɯɥyøᵝ",
    }
    table: dict[str, tuple[str, ...] | None] = {ch: (viseme,) for viseme, chars in groups.items() for ch in chars}
    table.update({"A": ("E", "ih"), "I": ("aa", "ih"), "W": ("aa", "ou"), "O": ("oh", "ou"), "Q": ("E", "ou"), "Y": ("oh", "ih")})
    # Stress marks stand before the stressed vowel: they belong to what follows, like h and ʔ.
    table.update({ch: _COARTICULATED for ch in "hʔˈˌ"})
    table.update({ch: _MODIFIER for ch in "ːʰʲ\u0303↓↗↘→"})
    return table


#: Phoneme character -> visemes it shows (split evenly over its duration); None: the next sound's
#: viseme (coarticulation); (): lengthens the previous viseme. Space is handled by duration.
PHONEME_VISEMES: Mapping[str, tuple[str, ...] | None] = _table()


@dataclass(frozen=True, slots=True)
class Viseme:
    """One mouth shape from ``start_ms`` to ``end_ms`` of the line's audio."""

    viseme: str
    start_ms: float
    end_ms: float

    @property
    def index(self) -> int:
        """Position in ``VISEMES`` (the OVR viseme index)."""
        return VISEMES.index(self.viseme)


class VisemeTrack:
    """Turns a line's phoneme timings, piece by piece, into contiguous visemes.

    ``feed(phonemes)`` takes the timings of one alignment message (objects or dicts with
    ``phoneme``, ``start_ms``, ``end_ms``) and returns the visemes that cover the audio from where the
    previous call ended to the end of these phonemes, except a trailing silence, which is held back
    to merge with the next call's (or ``finish``'s) silence, until ``cover(until_ms)`` says audio reached
    it; ``finish(audio_ms)`` returns the closing silence. Equal neighbours within a call are merged;
    every viseme starts where the one before it ended.
    """

    def __init__(self, *, min_silence_ms: float = 80.0) -> None:
        self.min_silence_ms = min_silence_ms
        #: Where the visemes seen so far end (a trailing silence may still be held back).
        self.end_ms = 0.0
        self._held: Viseme | None = None

    def feed(self, phonemes: Iterable[Any]) -> list[Viseme]:
        segments: list[list[Any]] = []  # [viseme, start, end], in order
        # Start of sounds (h, ʔ, a leading mark) waiting for the next viseme to cover them.
        pending_start: float | None = None
        last_end = self.end_ms
        for ph in phonemes:
            symbol, start, end = _fields(ph)
            start = max(start, self.end_ms)
            if end <= start:
                continue
            last_end = max(last_end, end)
            if symbol.isspace():
                mapped: tuple[str, ...] | None = ("sil",) if end - start >= self.min_silence_ms else _MODIFIER
            else:
                mapped = PHONEME_VISEMES.get(symbol, _COARTICULATED)
            if mapped is _COARTICULATED or (not mapped and (pending_start is not None or not segments)):
                pending_start = start if pending_start is None else pending_start
                continue
            if not mapped:
                segments[-1][2] = end
                continue
            step = (end - start) / len(mapped)
            for i, viseme in enumerate(mapped):
                segments.append([viseme, start + i * step, end if i == len(mapped) - 1 else start + (i + 1) * step])
            if pending_start is not None:
                # The waiting sounds show the first shape of this one (a diphthong keeps its halves).
                segments[-len(mapped)][1], pending_start = pending_start, None
        if pending_start is not None:
            segments.append(["sil", pending_start, last_end])
        out: list[Viseme] = [self._held] if self._held is not None else []
        self._held = None
        cursor = self.end_ms
        for viseme, start, end in segments:
            if start > cursor:
                out = _append(out, "sil", cursor, start)
            out = _append(out, viseme, max(start, cursor), end)
            cursor = max(cursor, end)
        if out:
            self.end_ms = out[-1].end_ms
            if out[-1].viseme == "sil":
                # A piece usually ends in silence and the next begins with some: hold it back so the
                # two become one event (the mouth is closed meanwhile either way).
                self._held = out.pop()
        return out

    def cover(self, until_ms: float) -> list[Viseme]:
        """Visemes to send before the audio up to ``until_ms``: the held silence when that audio
        reaches into it, stretched to ``until_ms`` if needed, or a new silence for audio that no
        phoneme described (the model's trailing silence, a pause between pieces). Sent now, the
        silence precedes its audio; it may then come as several ``sil`` visemes in a row."""
        until_ms = round(float(until_ms), 1)
        held, self._held = self._held, None
        if held is not None:
            if until_ms <= held.start_ms:
                self._held = held  # its audio has not come yet: it may still merge
                return []
            if until_ms > held.end_ms:
                held = Viseme("sil", held.start_ms, until_ms)
                self.end_ms = until_ms
            return [held]
        if until_ms <= self.end_ms + 1e-6:
            return []
        silence = Viseme("sil", round(float(self.end_ms), 1), until_ms)
        self.end_ms = until_ms
        return [silence]

    def finish(self, audio_ms: float) -> list[Viseme]:
        """The closing silence up to ``audio_ms`` (the line's length), if any is left."""
        held, self._held = self._held, None
        if audio_ms <= self.end_ms + 1e-6:
            return [] if held is None else [held]
        if held is not None:
            closing = Viseme("sil", held.start_ms, round(float(audio_ms), 1))
        else:
            closing = Viseme("sil", round(float(self.end_ms), 1), round(float(audio_ms), 1))
        self.end_ms = float(audio_ms)
        return [closing]


def _fields(ph: Any) -> tuple[str, float, float]:
    if isinstance(ph, Mapping):
        return str(ph["phoneme"]), float(ph["start_ms"]), float(ph["end_ms"])
    return str(ph.phoneme), float(ph.start_ms), float(ph.end_ms)


def _append(out: list[Viseme], viseme: str, start: float, end: float) -> list[Viseme]:
    start, end = round(start, 1), round(end, 1)
    if end <= start:
        return out
    if out and out[-1].viseme == viseme and abs(out[-1].end_ms - start) < 1e-6:
        out[-1] = Viseme(viseme, out[-1].start_ms, end)
    else:
        if out and abs(out[-1].end_ms - start) > 1e-6:
            start = out[-1].end_ms  # keep the track contiguous whatever the rounding did
        out.append(Viseme(viseme, start, end))
    return out


def phonemes_to_visemes(phonemes: Iterable[Any], *, audio_ms: float | None = None, min_silence_ms: float = 80.0) -> list[Viseme]:
    """Visemes of a whole line at once (see ``VisemeTrack``); with ``audio_ms`` they run to its end."""
    track = VisemeTrack(min_silence_ms=min_silence_ms)
    visemes = track.feed(phonemes)
    return visemes + track.finish(track.end_ms if audio_ms is None else audio_ms)

