"""``RealtimeTTSEngine``: any RealtimeTTS engine behind voxgate's ``Engine`` interface.

RealtimeTTS (``pip install 'voxgate[realtimetts]'``) wraps many synthesizers (``SystemEngine`` over
pyttsx3/espeak-ng, Coqui, Piper, Azure, ...) behind one ``BaseEngine``: ``engine.synthesize(text)``
blocks while it fills ``engine.queue`` with audio chunks. One engine object is not safe to share
between concurrent streams (RealtimeTTS issues #230 and #310: audio of two callers interleaves). Here
it runs on voxgate's single engine thread with a batch limit of 1, so each call's queue holds exactly
one item's audio, and every session gets its own audio with voxgate's scheduling, TTLs and limits.

What the adapter does per item:

- **text**: RealtimeTTS engines read text, not phonemes, so the item's ``text`` (the graphemes of
  the G2P piece) is what is spoken. The phonemes are still made by voxgate's G2P: they size pieces for
  the scheduler and carry the word spans that alignment needs.
- **voice / speed**: the voice is set with ``engine.set_voice(<voice object from get_voices()>)`` when
  it changes; speed maps to pyttsx3's ``rate`` for ``SystemEngine`` and to a ``speed`` attribute on
  engines that have one; other engines speak at their own pace (logged once). Seeds are ignored.
- **audio**: whatever ``get_stream_info()`` says (16/24/32-bit int, 8-bit, float32, any channel count
  and rate; ``paCustomFormat`` is decoded as compressed audio through pydub/ffmpeg) becomes float32 mono
  at 24 kHz (soxr "HQ"), padded with silence to a whole number of 600-sample duration frames.
- **durations**: RealtimeTTS gives none, so they are synthesized. Leading and trailing silence (below
  2 % of the peak) go to the BOS and EOS tokens; the voiced middle is shared among the phonemes in
  proportion to a weight: vowels (and Kokoro's diphthong letters ``AIOQWY``) 2, consonants 1, spaces
  0.5, punctuation 2 (a pause), stress, length and tone marks 0, rounded by largest remainder so the
  sum is exact. Word timings derived from them are approximate (typically within a syllable).

Not its job: text normalisation (the G2P's), queues or threads (the engine worker's), playback
(``RealtimeTTS.TextToAudioStream`` is not used at all).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import queue
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from gateway.engines.base import SAMPLE_RATE, SAMPLES_PER_FRAME, Engine, EngineError, SynthesisItem, SynthesisResult

__all__ = ["RealtimeTTSEngine", "proportional_durations", "to_float32_mono", "INSTALL_HINT"]

logger = logging.getLogger("voxgate.engine.realtimetts")

INSTALL_HINT = (
    "pip install 'voxgate[realtimetts]' 'realtimetts[system]' (needs Debian packages espeak-ng, "
    "portaudio19-dev and ffmpeg for SystemEngine)"
)

# PortAudio sample formats as RealtimeTTS reports them (pyaudio.paInt16 etc.); the values are
# PortAudio's, so pyaudio itself is not imported here.
PA_FLOAT32, PA_INT32, PA_INT24, PA_INT16, PA_INT8, PA_UINT8, PA_CUSTOM = 1, 2, 4, 8, 16, 32, 65536

_VOWELS = frozenset("aeiouyæøœɐɑɒɔəɚɛɜɤɨɪɯʊʌʏᵊᵻɘɵɞAIOQWY")
_MARKS = frozenset("ˈˌːʰʲ↓↗↘→\u0303")
_PUNCT = frozenset(';:,.!?—…"()“”«»\'')


def _weight(ch: str) -> float:
    if ch in _MARKS:
        return 0.0
    if ch in _VOWELS:
        return 2.0
    if ch.isspace():
        return 0.5
    if ch in _PUNCT:
        return 2.0
    return 1.0


def proportional_durations(phonemes: str, num_frames: int, *, lead_frames: int = 0, tail_frames: int = 0) -> np.ndarray:
    """Durations for ``[BOS, *phonemes, EOS]`` that sum to ``num_frames`` exactly.

    ``lead_frames`` go to BOS and ``tail_frames`` to EOS (clipped to what there is); the rest is
    shared among the phonemes by weight (see the module docstring), by largest remainder.
    """
    num_frames = max(0, int(num_frames))
    lead = min(max(0, lead_frames), num_frames)
    tail = min(max(0, tail_frames), num_frames - lead)
    middle = num_frames - lead - tail
    if not phonemes:
        return np.array([lead + middle, tail], dtype=np.int64)
    weights = np.array([_weight(ch) for ch in phonemes], dtype=np.float64)
    if weights.sum() <= 0:
        weights[:] = 1.0
    exact = middle * weights / weights.sum()
    base = np.floor(exact).astype(np.int64)
    short = middle - int(base.sum())
    if short:
        # Stable: equal remainders go to the earlier phoneme.
        order = np.argsort(-(exact - base), kind="stable")
        base[order[:short]] += 1
    return np.concatenate([[lead], base, [tail]]).astype(np.int64)


def to_float32_mono(chunks: Sequence[Any], sample_format: int, channels: int, sample_rate: int) -> tuple[np.ndarray, int]:
    """Join a RealtimeTTS engine's queued chunks into float32 mono samples; returns them and their rate.

    Chunks are ``bytes`` in ``sample_format`` (a PortAudio constant) or numpy arrays. With
    ``PA_CUSTOM`` the bytes are a compressed stream (MP3, ...) and are decoded with pydub (ffmpeg).
    """
    arrays = [c for c in chunks if isinstance(c, np.ndarray)]
    raw = b"".join(bytes(c) for c in chunks if isinstance(c, bytes | bytearray | memoryview))
    if arrays and raw:
        raise EngineError("engine queued both arrays and bytes")
    if arrays:
        data = np.concatenate([a.reshape(-1) for a in arrays])
        samples = data.astype(np.float32) / 32_768.0 if data.dtype.kind == "i" else data.astype(np.float32)
    elif sample_format == PA_CUSTOM:
        samples, sample_rate, channels = _decode_compressed(raw)
    elif sample_format == PA_FLOAT32:
        samples = np.frombuffer(raw[: len(raw) // 4 * 4], dtype="<f4").astype(np.float32)
    elif sample_format == PA_INT16:
        samples = np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<i2").astype(np.float32) / 32_768.0
    elif sample_format == PA_INT32:
        samples = np.frombuffer(raw[: len(raw) // 4 * 4], dtype="<i4").astype(np.float32) / 2_147_483_648.0
    elif sample_format == PA_INT24:
        usable = np.frombuffer(raw[: len(raw) // 3 * 3], dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = usable[:, 0] | (usable[:, 1] << 8) | (usable[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        samples = ints.astype(np.float32) / 8_388_608.0
    elif sample_format == PA_INT8:
        samples = np.frombuffer(raw, dtype=np.int8).astype(np.float32) / 128.0
    elif sample_format == PA_UINT8:
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    else:
        raise EngineError(f"unsupported RealtimeTTS sample format {sample_format}")
    if channels > 1:
        usable_len = len(samples) // channels * channels
        samples = samples[:usable_len].reshape(-1, channels).mean(axis=1)
    if sample_rate <= 0:
        raise EngineError(f"engine reported sample rate {sample_rate}")
    return np.ascontiguousarray(samples, dtype=np.float32), int(sample_rate)


def _decode_compressed(raw: bytes) -> tuple[np.ndarray, int, int]:
    try:
        from pydub import AudioSegment
    except ImportError as exc:  # pragma: no cover - pydub comes with realtimetts
        raise EngineError("compressed engine output needs pydub") from exc
    segment = AudioSegment.from_file(io.BytesIO(raw))
    ints = np.array(segment.get_array_of_samples(), dtype=np.float32)
    return ints / float(1 << (8 * segment.sample_width - 1)), int(segment.frame_rate), int(segment.channels)


def _share_espeak_data_path() -> None:
    """Point espeak-ng at the right data before pyttsx3 initialises it.

    voxgate's G2P loads the espeak-ng bundled with ``espeakng-loader`` into this process. pyttsx3 then
    asks for ``libespeak-ng.so.1`` by name, gets that same library (already loaded, same soname) and
    initialises it without a data path, so espeak-ng looks in the folder it was built for, finds
    nothing and calls ``exit(1)``: the whole server dies. Without a path espeak-ng reads
    ``ESPEAK_DATA_PATH``, so set it to the bundled data when the bundled library is loaded.
    """
    if os.environ.get("ESPEAK_DATA_PATH"):
        return
    try:
        import espeakng_loader
    except ImportError:
        return
    library = os.path.realpath(espeakng_loader.get_library_path())
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            loaded = any(line.rstrip().endswith(library) for line in maps)
    except OSError:  # not Linux: pyttsx3 uses the platform's own speech there
        return
    if loaded:
        os.environ["ESPEAK_DATA_PATH"] = str(espeakng_loader.get_data_path())
        logger.info("espeak-ng of espeakng-loader already loaded: ESPEAK_DATA_PATH set to its data")


def _edge_frames(audio: np.ndarray) -> tuple[int, int]:
    """Whole duration frames of silence at the start and at the end of ``audio``."""
    if len(audio) == 0:
        return 0, 0
    peak = float(np.max(np.abs(audio)))
    loud = np.flatnonzero(np.abs(audio) > max(1e-3, 0.02 * peak))
    if len(loud) == 0:
        return 0, 0
    return int(loud[0]) // SAMPLES_PER_FRAME, (len(audio) - 1 - int(loud[-1])) // SAMPLES_PER_FRAME


class RealtimeTTSEngine(Engine):
    """One RealtimeTTS engine object, called one item at a time from voxgate's engine thread.

    Build it with ``RealtimeTTSEngine.from_config(engine_config)`` (on the engine thread: some
    engines, pyttsx3 among them, bind to the thread that made them) or wrap an engine you made:
    ``RealtimeTTSEngine(SystemEngine())`` (in a process that also runs voxgate's G2P, see
    ``_share_espeak_data_path`` first).
    """

    name = "realtimetts"
    max_batch_size = 1
    preferred_batch_size = 1

    def __init__(self, engine: Any, *, owns_engine: bool = True) -> None:
        self.engine = engine
        self._owns_engine = owns_engine
        self.engine_name = str(getattr(engine, "engine_name", type(engine).__name__))
        self._voice_objects: dict[str, Any] = self._discover_voices()
        self._current_voice: str | None = None
        self._base_rate: float | None = None
        self._speed = 1.0
        self._warned_speed = False
        self._private_file: str | None = None
        self._isolate_temp_file()

    @classmethod
    def from_config(cls, config: Any) -> RealtimeTTSEngine:
        """Build ``config.realtimetts_engine`` (a class name in ``RealtimeTTS.engines``, e.g.
        ``"SystemEngine"``) with its default arguments. Raises ``EngineError`` naming what to install."""
        class_name = str(getattr(config, "realtimetts_engine", "") or "SystemEngine")
        try:
            import RealtimeTTS.engines as rtts_engines
        except ImportError as exc:
            raise EngineError(f"RealtimeTTS is not installed: {INSTALL_HINT}") from exc
        try:
            engine_class = getattr(rtts_engines, class_name)
        except AttributeError:
            raise EngineError(f"RealtimeTTS has no engine class {class_name!r}") from None
        except Exception as exc:  # ImportError, or a warning turned error (pydub without ffmpeg)
            raise EngineError(f"RealtimeTTS {class_name} cannot be imported ({exc}): {INSTALL_HINT}") from exc
        if class_name == "SystemEngine" and not (shutil.which("ffprobe") or shutil.which("avprobe")):
            # SystemEngine asks ffprobe about every file it renders: fail at start, not per line.
            raise EngineError(f"RealtimeTTS SystemEngine needs ffprobe (Debian: apt-get install ffmpeg): {INSTALL_HINT}")
        _share_espeak_data_path()
        try:
            engine = engine_class()
        except Exception as exc:
            raise EngineError(f"RealtimeTTS {class_name}() failed: {exc}") from exc
        logger.info("RealtimeTTS engine %s (%s)", class_name, getattr(engine, "engine_name", "?"))
        return cls(engine)

    # --- Engine ---------------------------------------------------------------------------------

    def voices(self) -> list[str]:
        return list(self._voice_objects)

    def synthesize(self, items: Sequence[SynthesisItem]) -> list[SynthesisResult]:
        # The scheduler sends one item at a time (max_batch_size = 1); a longer list is still
        # served one by one, never concurrently.
        return [self._synthesize_one(item) for item in items]

    def close(self) -> None:
        if self._owns_engine:
            try:
                self.engine.shutdown()
            except Exception:
                logger.warning("RealtimeTTS engine shutdown failed", exc_info=True)
        if self._private_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._private_file)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "realtimetts_engine": type(self.engine).__name__, "voices": len(self._voice_objects)}

    # --- internals ------------------------------------------------------------------------------

    def _isolate_temp_file(self) -> None:
        # SystemEngine renders every call into one fixed file in the temp folder: two processes
        # (two gateways, parallel tests) would overwrite each other's audio. Give it its own file.
        path = getattr(self.engine, "file_path", None)
        if isinstance(path, str) and os.path.basename(path) == "system_speech_synthesis.wav":
            fd, self._private_file = tempfile.mkstemp(prefix="voxgate-rtts-", suffix=".wav")
            os.close(fd)
            self.engine.file_path = self._private_file

    def _discover_voices(self) -> dict[str, Any]:
        try:
            found = list(self.engine.get_voices() or [])
        except Exception:
            logger.info("%s lists no voices; serving one voice named 'default'", self.engine_name)
            return {"default": None}
        current = self._current_voice_id()
        named: dict[str, Any] = {}
        for voice in found:
            base = str(getattr(voice, "name", None) or voice)
            key, n = base, 2
            while key in named:
                key, n = f"{base} ({n})", n + 1
            named[key] = voice
        if not named:
            return {"default": None}
        # The engine's current voice first: voxgate's default voice is the first one listed.
        return dict(sorted(named.items(), key=lambda kv: getattr(kv[1], "id", None) != current))

    def _current_voice_id(self) -> Any:
        driver = getattr(self.engine, "engine", None)  # SystemEngine's pyttsx3 engine
        try:
            return driver.getProperty("voice") if driver is not None else None
        except Exception:
            return None

    def _select_voice(self, voice: str) -> None:
        if voice not in self._voice_objects:
            raise EngineError(f"unknown voice {voice!r}")
        if voice == self._current_voice or self._voice_objects[voice] is None:
            self._current_voice = voice
            return
        voice_object = self._voice_objects[voice]
        self.engine.set_voice(voice_object)
        self._confirm_driver_property("voice", getattr(voice_object, "id", None))
        self._current_voice = voice

    def _apply_speed(self, speed: float) -> None:
        if abs(speed - self._speed) < 1e-6:
            return
        driver = getattr(self.engine, "engine", None)
        if self.engine_name == "system" and driver is not None:
            if self._base_rate is None:
                self._base_rate = float(driver.getProperty("rate"))
            rate = int(round(self._base_rate * speed))
            self.engine.set_voice_parameters(rate=rate)
            self._confirm_driver_property("rate", rate)
        elif hasattr(self.engine, "speed"):
            self.engine.speed = speed
        elif not self._warned_speed:
            self._warned_speed = True
            logger.info("RealtimeTTS %s has no speed control; speaking at its own pace", self.engine_name)
        self._speed = speed

    def _confirm_driver_property(self, name: str, value: Any) -> None:
        # pyttsx3 queues property changes while its driver is still "busy" from the previous call
        # and may clear that queue unapplied: the next item would come out in the previous voice or
        # rate. Check, and set it on the driver directly when it did not take.
        driver = getattr(self.engine, "engine", None)
        if driver is None or value is None or not hasattr(driver, "getProperty"):
            return
        try:
            if driver.getProperty(name) == value:
                return
            inner = getattr(getattr(driver, "proxy", None), "_driver", None)
            if inner is not None:
                inner.setProperty(name, value)
        except Exception:
            logger.warning("could not confirm %s=%r on the pyttsx3 driver", name, value, exc_info=True)

    def _drain(self, q: Any) -> list[Any]:
        items: list[Any] = []
        while True:
            try:
                item = q.get_nowait()
            except queue.Empty:
                return items
            if item is not None:
                items.append(item)

    def _synthesize_one(self, item: SynthesisItem) -> SynthesisResult:
        text = getattr(item, "text", "") or ""
        if not text.strip():
            raise EngineError("RealtimeTTS engines read text, and this item has none (SynthesisItem.text)")
        self._select_voice(item.voice)
        self._apply_speed(item.speed)
        # Leftovers from a failed call must not leak into this item's audio.
        self._drain(self.engine.queue)
        timings = getattr(self.engine, "timings", None)
        if timings is not None:
            self._drain(timings)
        try:
            ok = self.engine.synthesize(text)
        except Exception as exc:
            logger.error("RealtimeTTS %s failed", self.engine_name, exc_info=True)
            raise EngineError(f"RealtimeTTS {self.engine_name} failed") from exc
        chunks = self._drain(self.engine.queue)
        if not chunks:
            said = " (it reported failure)" if ok is False else ""
            raise EngineError(f"RealtimeTTS {self.engine_name} produced no audio{said}")
        sample_format, channels, rate = self.engine.get_stream_info()
        samples, rate = to_float32_mono(chunks, int(sample_format), int(channels), int(rate))
        if rate != SAMPLE_RATE:
            import soxr

            samples = soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
        num_frames = max(1, -(-len(samples) // SAMPLES_PER_FRAME))
        audio = np.zeros(num_frames * SAMPLES_PER_FRAME, dtype=np.float32)
        audio[: len(samples)] = np.clip(samples, -1.0, 1.0)
        lead, tail = _edge_frames(audio)
        durations = proportional_durations(item.phonemes, num_frames, lead_frames=lead, tail_frames=tail)
        return SynthesisResult(audio=audio, durations=durations, phonemes=item.phonemes, extra={"source_rate": rate})
