"""``KokoroEngine``: one Kokoro-82M ``KModel`` and its voice packs behind voxgate's ``Engine``.

The engine maps each item's phonemes to token ids, picks the item's style row from its voice pack,
keys the item's source noise by its seed (``HashNoise``), and runs the whole batch through
``batched_forward`` (a batched pass over the model's own modules, in a number of tensor ops that
does not depend on the batch size). Results come back in input order, each the same as if
synthesized alone (prosody bit for bit, audio within float rounding).

What it is not: a scheduler (it sorts and buckets nothing), a G2P (phonemes arrive ready), or a
weights loader (``weights.load_kokoro`` / ``build_kmodel`` make the ``KModel``; ``tiny`` makes a
random one for tests).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from gateway.engines.base import (
    MAX_PHONEMES,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    Engine,
    EngineError,
    Head,
    HeadCallback,
    SynthesisItem,
    SynthesisResult,
)
from gateway.engines.batched import (
    WINDOW_REACH_FRAMES,
    BatchedAudio,
    Prepared,
    Window,
    batched_forward,
    decode_batch,
    decode_windows,
    prepare_batch,
)
from gateway.engines.edges import LEAD_LOOKBACK_FRAMES, EdgeSpan, cut_context, edge_span, trim_edges, trimmed_head
from gateway.engines.precision import decoder_convs_to_bf16, resolve_dtype
from gateway.engines.source_noise import HashNoise
from gateway.engines.voice_norms import MIN_STYLE_ROW, REFERENCE_PHONEMES, ROW_BUCKETS, FixedNorms, NormRecorder, VoiceNorms, bucket_row

__all__ = ["KokoroEngine", "DType", "resolve_device", "device_name"]

logger = logging.getLogger("voxgate.engine")

DType = Literal["auto", "float32", "float16", "bfloat16"]
DecoderNorm = Literal["voice", "instance"]
_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# A short piece for warmup: a few common phonemes, every one in Kokoro's vocabulary.
_WARMUP_PHONEMES = "həlˈoʊ wˈɜːld."
#: A head's audio must last this many times the rest's estimated decode (measured on this CPU: the
#: fit overestimates the rest by ~15 %, and the head's audio lasted twice its rest's decode at 1.5).
HEAD_SAFETY = 1.2
#: A head is made only where its first window saves at least this much decoding before first audio.
MIN_HEAD_SAVING_S = 0.03


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def device_name(device: torch.device) -> str:
    """A human-readable device name: the GPU's name, or the CPU model from ``/proc/cpuinfo``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return "cpu"


def _num_cores() -> int:
    # Cores this process may run on (a container's CPU set), not the host's count.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _bake_weight_norm(model: torch.nn.Module) -> torch.nn.Module:
    """Compute each weight-normalised layer's weight once, at load, instead of before every call.

    Kokoro wraps ~90 convolutions in ``torch.nn.utils.weight_norm``, whose hook recomputes
    ``g * v / ||v||`` on every forward: 3 % of a short piece's time on the 2-core CPU (profiled).
    Inference never changes ``g`` or ``v``, and the baked weight is the same computation, so the
    output is bit for bit the same.
    """
    from torch.nn.utils import remove_weight_norm
    from torch.nn.utils.weight_norm import WeightNorm

    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, WeightNorm):
                remove_weight_norm(module, hook.name)
    return model


class KokoroEngine(Engine):
    """Kokoro-82M behind ``Engine``: batches in, one exact result per item out, in input order.

    Responsibilities: own one ``KModel`` (in eval mode, on ``device``) and a voice-pack dict;
    validate items (known voice, phonemes within ``MAX_PHONEMES`` of the vocabulary, speed > 0);
    seed each item's noise from ``item.effective_seed()``; run ``batched_forward``. Not its job:
    bucketing by length (the scheduler does that: padding waste makes mixed lengths slow), text,
    worker threads. Call every method from the engine thread: ``num_threads`` is applied to that thread.

    ``dtype``: on CPU, ``"bfloat16"`` runs the decoder's large convolutions in bfloat16
    (``gateway.engines.precision``; float16 has no fast CPU path and falls back to float32); on CUDA
    float16/bfloat16 mean autocast (unmeasured). ``"auto"``: bfloat16 on a CPU with native
    bfloat16, float32 elsewhere.
    ``prosody="batched"`` (and ``"auto"``, on every device) runs ALBERT to F0 for the whole batch
    in batch-invariant kernels (``gateway.engines.prosody``): the same floats as a solo run, in ops
    independent of the batch size; ``"per_item"`` runs that part one item at a time (the same
    result, a few hundred more ops per item; kept as a reference).
    """

    name = "kokoro"

    def __init__(
        self,
        model: Any,
        voices: Mapping[str, torch.Tensor],
        *,
        device: str = "auto",
        num_threads: int | None = None,
        max_batch_size: int = 8,
        preferred_batch_size: int | None = None,
        dtype: DType = "float32",
        weights_source: str = "",
        prosody: Literal["auto", "batched", "per_item"] = "auto",
        cuda_graphs: bool = False,
        decoder_norm: DecoderNorm = "voice",
        stream_heads: bool = False,
        decoder_cost: tuple[float, float] | None = None,
    ) -> None:
        if not voices:
            raise ValueError("at least one voice pack is needed")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if dtype != "auto" and dtype not in _DTYPES:
            raise ValueError(f"dtype must be auto or one of {sorted(_DTYPES)}, got {dtype!r}")
        self.device = resolve_device(device)
        dtype = resolve_dtype(dtype, self.device)
        if self.device.type == "cpu" and dtype == "float16":
            logger.warning("dtype float16 has no fast CPU path; using float32")
            dtype = "float32"
        self.dtype: str = dtype  # resolved: float32, float16 or bfloat16
        self.num_threads = num_threads or _num_cores()
        self.max_batch_size = max_batch_size
        # None: decided at warmup (1 on CPU, where batching does not pay; the probe on GPU).
        self._preferred: int | None = preferred_batch_size
        self.preferred_batch_size = min(preferred_batch_size or 1, max_batch_size)
        self.weights_source = weights_source
        if prosody not in ("auto", "batched", "per_item"):
            raise ValueError(f"prosody must be auto, batched or per_item, got {prosody!r}")
        # Both give each item the same F0 as a solo run (prosody.py); batched does it in ops
        # independent of the batch size (what a launch-bound GPU needs), so auto is batched everywhere.
        self.per_item_prosody = prosody == "per_item"
        if decoder_norm not in ("voice", "instance"):
            raise ValueError(f"decoder_norm must be voice or instance, got {decoder_norm!r}")
        # "voice": the decoder's norms use each voice's measured statistics (measured on first use,
        # gateway.engines.voice_norms); "instance": each item's own, Kokoro's arithmetic exactly.
        self.decoder_norm: DecoderNorm = decoder_norm
        self._voice_norms: dict[tuple[int, int], VoiceNorms] = {}
        # Heads need fixed statistics (a window of an item decodes as the whole only with them) and
        # the decoder's cost, measured at warmup unless given: (seconds per call, seconds per frame).
        self.stream_heads = stream_heads and decoder_norm == "voice"
        self.decoder_cost: tuple[float, float] | None = decoder_cost
        self._apply_threads()
        self.model = _bake_weight_norm(model.to(self.device).eval())
        if self.device.type == "cpu" and self.dtype == "bfloat16":
            converted = decoder_convs_to_bf16(self.model.decoder)
            logger.info("decoder: %d convolutions in bfloat16", converted)
        self.decoder_graphs = self._decoder_graphs(cuda_graphs)
        self.style_dim = int(self.model.predictor.text_encoder.sty_dim)
        self._vocab: dict[str, int] = dict(self.model.vocab)
        self.vocab = frozenset(self._vocab)
        self._voices: dict[str, torch.Tensor] = {}
        for name, pack in voices.items():
            if pack.dim() != 3 or pack.shape[1] != 1 or pack.shape[2] != 2 * self.style_dim:
                raise ValueError(f"voice {name!r}: pack shape {tuple(pack.shape)}, want (N, 1, {2 * self.style_dim})")
            self._voices[name] = pack.to(self.device, torch.float32)
        # All packs in one tensor (padded to the longest, by repeating its last row), so a batch's
        # style rows are one gather.
        rows = max(pack.shape[0] for pack in self._voices.values())
        self._packs = torch.stack(
            [torch.cat([p, p[-1:].expand(rows - p.shape[0], -1, -1)]) for p in self._voices.values()]
        )
        self._voice_index = {name: i for i, name in enumerate(self._voices)}
        self._context = int(self.model.context_length) - 2

    @classmethod
    def tiny(
        cls,
        seed: int = 0,
        *,
        voices: Sequence[str] | None = None,
        voiced: bool = True,
        **kwargs: Any,
    ) -> KokoroEngine:
        """An engine over the tiny random-weight Kokoro (``gateway.engines.tiny``), for tests.

        Voice names default to the offline ones plus ``af_heart``; ``kwargs`` are the
        constructor's (``device``, ``max_batch_size``, ...).
        """
        from gateway.engines.tiny import TINY_VOICE_NAMES, make_tiny_kmodel, make_tiny_voices

        model = make_tiny_kmodel(seed, voiced=voiced)
        packs = make_tiny_voices(tuple(voices or TINY_VOICE_NAMES), seed)
        kwargs.setdefault("weights_source", f"tiny random weights (seed {seed})")
        return cls(model, packs, **kwargs)

    # -- Engine ---------------------------------------------------------------------------------

    def voices(self) -> list[str]:
        return list(self._voices)

    def synthesize(self, items: Sequence[SynthesisItem]) -> list[SynthesisResult]:
        """Synthesize ``items`` as one batch; raises ``EngineError`` if any item is unusable.

        ``result.phonemes`` is the phoneme string actually spoken (characters outside the
        vocabulary dropped), so ``len(result.durations) == len(result.phonemes) + 2`` holds.
        """
        return self._synthesize(items, None)

    def synthesize_with_heads(self, items: Sequence[SynthesisItem], on_head: HeadCallback) -> list[SynthesisResult]:
        """``synthesize``; an item with ``stream_head`` whose decode is long enough to be worth two
        parts (``_head_frames``) is decoded in two windows of frames, and the start of its audio goes
        to ``on_head`` before the second is made (``gateway.engines.batched.decode_windows``)."""
        return self._synthesize(items, on_head if self.stream_heads else None)

    def _synthesize(self, items: Sequence[SynthesisItem], on_head: HeadCallback | None) -> list[SynthesisResult]:
        if not items:
            return []
        if len(items) > self.max_batch_size:
            raise EngineError(f"batch of {len(items)} exceeds max_batch_size {self.max_batch_size}")
        self._apply_threads()
        # Per item: host-side Python only. The batch then goes to the device in a fixed number of
        # tensor ops (ids, style rows, speeds, seeds), whatever its size.
        token_ids, voice_rows, speeds, spoken, seeds, edges, norms = [], [], [], [], [], [], []
        limit = min(MAX_PHONEMES, self._context)
        for item in items:
            index = self._voice_index.get(item.voice)
            if index is None:
                raise EngineError(f"unknown voice {item.voice!r}")
            kept = self._in_vocab(item.phonemes)
            if len(kept) > limit:
                raise EngineError(f"{len(kept)} phonemes exceed the {MAX_PHONEMES}-phoneme context")
            if not item.speed > 0:
                raise EngineError(f"speed must be positive, got {item.speed}")
            left, right = _fit_context(self._in_vocab(item.left_context), self._in_vocab(item.right_context), limit - len(kept))
            token_ids.append([0, *(self._vocab[ch] for ch in left + kept + right), 0])
            # Kokoro's pipeline picks the row by the character count before vocabulary filtering,
            # of what the model reads: the context's too (by the piece's alone, Whisper misheard
            # twice as many words: 0.30 vs 0.11 WER on bench quality's sentences).
            row = min(max(len(item.phonemes) + len(left) + len(right), 1), self._packs.shape[1]) - 1
            if self.decoder_norm == "voice":
                # With the voice's statistics, a sentence's style for every piece (voice_norms.py).
                row = max(row, min(MIN_STYLE_ROW, self._packs.shape[1] - 1))
                norms.append(self._norms_of(index, row))
            voice_rows.append((index, row))
            speeds.append(float(item.speed))
            seeds.append(item.effective_seed())
            spoken.append(kept)
            span = edge_span(kept, trim_start=item.trim_start, trim_end=item.trim_end, left=len(left), right=len(right))
            edges.append(dataclasses.replace(span, joint=len(left) - len(left.rstrip(" "))))
        rows = torch.tensor(voice_rows, dtype=torch.long, device=self.device)
        ref_s = self._packs[rows[:, 0], rows[:, 1], 0]
        fixed = FixedNorms(norms) if norms else None
        heads: dict[int, Head] = {}
        try:
            with self._autocast():
                prepared = prepare_batch(
                    self.model, token_ids, ref_s, speeds, HashNoise(seeds), per_item_prosody=self.per_item_prosody, edges=edges
                )
                plan = self._plan_heads(items, prepared, edges) if on_head is not None and fixed is not None else {}
                if plan:
                    assert on_head is not None and fixed is not None
                    out = self._decode_in_two(prepared, fixed, plan, edges, spoken, on_head, heads)
                else:
                    out = decode_batch(self.model, prepared, decoder_graphs=self.decoder_graphs, norms=fixed)
        except ValueError as exc:
            raise EngineError(str(exc)) from exc
        # One device-to-host copy for the batch; the per-item cuts are numpy views.
        audio = out.audio.float().cpu().numpy()
        durations = out.durations.numpy().astype(np.int64, copy=False)
        results = []
        for b, (kept, seed, span) in enumerate(zip(spoken, seeds, edges)):
            # Copies, so each result owns its memory (not a view into the whole batch's array).
            audio_b, durations_b = trim_edges(
                *cut_context(audio[b, : out.num_samples[b]].copy(), durations[b, : out.num_tokens[b]].copy(), span), span
            )
            extra: dict[str, object] = {"seed": seed}
            if span.lead or span.tail:
                extra["edges_trimmed"] = (span.lead > 0, span.tail > 0)
            if span.left or span.right:
                extra["context_tokens"] = (span.left, span.right)
            head = heads.get(b)
            if head is not None:
                extra["head_samples"] = len(head.audio)
                if not (np.array_equal(audio_b[: len(head.audio)], head.audio) and np.array_equal(durations_b, head.durations)):
                    # trimmed_head and trim_edges disagree: a bug, and the listener heard the head.
                    logger.error("item %d: its result is not what the head sent before it said", b)
            results.append(SynthesisResult(audio=audio_b, durations=durations_b, phonemes=kept, extra=extra))
        return results

    def _plan_heads(self, items: Sequence[SynthesisItem], prepared: Prepared, edges: Sequence[EdgeSpan]) -> dict[int, int]:
        """Item -> frames to decode first, for the items that ask for a head and gain by one."""
        if self.decoder_cost is None or not any(item.stream_head for item in items):
            return {}
        durations = prepared.durations.cpu().numpy()
        plan = {}
        for b, item in enumerate(items):
            if item.stream_head:
                frames = self._head_frames(durations[b, : prepared.num_tokens[b]], edges[b])
                if frames:
                    plan[b] = frames
        return plan

    def _head_frames(self, durations: np.ndarray, span: EdgeSpan) -> int:
        """Frames of an item's decoder input to decode first (0: decode it whole).

        The head's audio must last while the rest is decoded, so that playback does not stall:
        with the decoder's measured cost (``decoder_cost``: fixed seconds per call and seconds per
        frame), the least ``E`` with ``(E - lead) * 25 ms >= HEAD_SAFETY * cost(frames - E + reach)``,
        where ``lead`` is the lead-in cut from the start. Worth it only where the first window
        saves at least ``MIN_HEAD_SAVING_S`` and ends inside the item's own phonemes.
        """
        assert self.decoder_cost is not None
        if not span.right or span.left or span.tail:
            return 0  # trimmed_head can tell the start of such items only
        fixed_s, per_frame_s = self.decoder_cost
        total = int(durations.sum())
        own = int(durations[: len(durations) - 1 - span.right].sum())
        # The lead-in's frames, but its last few (the first consonant's onset), are cut from the audio.
        lead = max(0, int(durations[: span.lead].sum()) - LEAD_LOOKBACK_FRAMES)
        reach = WINDOW_REACH_FRAMES
        frame_s = SAMPLES_PER_FRAME / SAMPLE_RATE
        first = math.ceil((frame_s * lead + HEAD_SAFETY * (fixed_s + per_frame_s * (total + reach))) / (frame_s + HEAD_SAFETY * per_frame_s))
        if first >= own or per_frame_s * (total - first - reach) < MIN_HEAD_SAVING_S:
            return 0
        return first

    def _decode_in_two(
        self,
        prepared: Prepared,
        norms: FixedNorms,
        plan: Mapping[int, int],
        edges: Sequence[EdgeSpan],
        spoken: Sequence[str],
        on_head: HeadCallback,
        heads: dict[int, Head],
    ) -> BatchedAudio:
        """The items in ``plan`` decoded in two windows (their first frames, with the decoder's reach
        after them, and the rest, with its reach before), the others whole in the second pass.

        Each head goes to ``on_head`` (and into ``heads``) between the passes. The audio is each
        first window's frames joined to the second's: within ~2e-4 of a whole decode
        (``WINDOW_REACH_FRAMES``), and exactly what the heads were cut from.
        """
        reach = WINDOW_REACH_FRAMES
        frames = prepared.num_frames
        durations = prepared.durations.cpu()
        firsts = decode_windows(self.model, prepared, [Window(b, 0, min(n + reach, frames[b])) for b, n in plan.items()], norms)
        for (b, n), first in zip(plan.items(), firsts):
            prefix = first[: n * SAMPLES_PER_FRAME].float().cpu().numpy()
            told = trimmed_head(prefix, durations[b, : prepared.num_tokens[b]].numpy(), edges[b])
            if told is not None:
                heads[b] = Head(audio=told[0], durations=told[1], phonemes=spoken[b])
                on_head(b, heads[b])
        starts = [max(0, plan[b] - reach) if b in plan else 0 for b in range(len(frames))]
        rests = decode_windows(self.model, prepared, [Window(b, start, frames[b]) for b, start in enumerate(starts)], norms)
        audio = torch.zeros(len(frames), max(frames) * SAMPLES_PER_FRAME, dtype=torch.float32, device=self.device)
        firsts_of = dict(zip(plan, firsts))
        for b, rest in enumerate(rests):
            if b in plan:
                cut = plan[b] * SAMPLES_PER_FRAME
                joined = torch.cat([firsts_of[b][:cut].float(), rest[cut - starts[b] * SAMPLES_PER_FRAME :].float()])
            else:
                joined = rest.float()
            audio[b, : len(joined)] = joined
        return BatchedAudio(audio, [n * SAMPLES_PER_FRAME for n in frames], durations, prepared.num_tokens)

    def warmup(self) -> None:
        """Run one short batch (allocations, kernel selection) and settle ``preferred_batch_size``.

        With ``preferred_batch_size=None``: 1 on CPU (batching measured no faster there), the batch
        size probe's answer on CUDA.
        """
        voice = next(iter(self._voices))
        self.synthesize([SynthesisItem(_WARMUP_PHONEMES, voice, seed=0)])
        if self.decoder_norm == "voice":
            # Every style row's statistics for the first voice (the default one), now rather than
            # inside the first requests (~3 s each on a 2-core CPU).
            for row in ROW_BUCKETS:
                self._norms_of(0, row)
            if self.stream_heads and self.decoder_cost is None:
                self.decoder_cost = self._measure_decoder_cost()
                logger.info("decoder cost: %.1f ms per call + %.2f ms per frame", *(1000 * t for t in self.decoder_cost))
        if self._preferred is None and self.device.type == "cuda" and self.max_batch_size > 1:
            from gateway.engines.probe import default_sizes, probe_batch_sizes

            result = probe_batch_sizes(self, sizes=default_sizes(self.max_batch_size), seconds_budget=20.0)
            self.preferred_batch_size = result.best_batch_size
            logger.info("batch size probe: preferred %d\n%s", result.best_batch_size, result.table())

    def close(self) -> None:
        self._voices.clear()
        self._voice_index.clear()
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def describe(self) -> dict[str, object]:
        info = super().describe()
        info.update(
            device=str(self.device),
            device_name=device_name(self.device),
            dtype=self.dtype,
            num_threads=self.num_threads if self.device.type == "cpu" else None,
            weights_source=self.weights_source,
            num_voices=len(self._voices),
            per_item_prosody=self.per_item_prosody,
            cuda_graphs=self.decoder_graphs is not None,
            decoder_norm=self.decoder_norm,
            stream_heads=self.stream_heads,
            decoder_ms=None if self.decoder_cost is None else {"per_call": round(1000 * self.decoder_cost[0], 2), "per_frame": round(1000 * self.decoder_cost[1], 3)},
        )
        return info

    # -- internals ------------------------------------------------------------------------------

    def _decoder_graphs(self, enabled: bool) -> Any:
        """``engine.cuda_graphs``: a ``DecoderGraphs`` on CUDA (never run on a GPU yet: see its module)."""
        if not enabled:
            return None
        if self.device.type != "cuda":
            logger.warning("engine.cuda_graphs needs a CUDA device, not %s: the decoder runs eagerly", self.device)
            return None
        from gateway.engines.cuda_graphs import DecoderGraphs

        # kokoro's TorchSTFT keeps its window in a plain attribute, which .to() does not move: it
        # would be copied to the device on every call, which a graph cannot capture.
        stft = self.model.decoder.generator.stft
        stft.window = stft.window.to(self.device)
        return DecoderGraphs(self.model.decoder, self.device)

    def _norms_of(self, index: int, row: int) -> VoiceNorms:
        """Voice ``index``'s decoder statistics at style row ``row`` (its bucket's), measured on
        first use: the reference sentences synthesized with that row's style and Kokoro's own
        norms (~9 s of speech: ~3 s on a 2-core CPU)."""
        bucket = bucket_row(row, self._packs.shape[1])
        norms = self._voice_norms.get((index, bucket))
        if norms is not None:
            return norms
        recorder = NormRecorder()
        for phonemes in REFERENCE_PHONEMES:
            with self._autocast():
                batched_forward(
                    self.model, [self._reference_ids(phonemes)], self._packs[index, bucket, 0][None], [1.0],
                    HashNoise([0]), per_item_prosody=self.per_item_prosody, norms=recorder,
                )
        norms = self._voice_norms[(index, bucket)] = recorder.result()
        logger.info("decoder statistics measured for voice %d of %d at style row %d", index + 1, len(self._voice_index), bucket)
        return norms

    def _measure_decoder_cost(self) -> tuple[float, float]:
        """The decoder's cost on this device, fitted from a short and a long window of the first
        reference sentence (best of three each): (seconds per call, seconds per frame)."""
        ids = self._reference_ids(REFERENCE_PHONEMES[0])
        row = min(max(len(ids) - 2, MIN_STYLE_ROW), self._packs.shape[1] - 1)
        with self._autocast():
            prepared = prepare_batch(
                self.model, [ids], self._packs[0, row, 0][None], [1.0], HashNoise([0]), per_item_prosody=self.per_item_prosody
            )
            norms = FixedNorms([self._norms_of(0, row)])
            total = prepared.num_frames[0]
            short, long = min(16, total), min(64, total)

            def best(frames: int) -> float:
                times = []
                for _ in range(3):
                    started = time.perf_counter()
                    decode_windows(self.model, prepared, [Window(0, 0, frames)], norms)[0].sum().item()
                    times.append(time.perf_counter() - started)
                return min(times)

            t_short, t_long = best(short), best(long)
        per_frame = max(0.0, (t_long - t_short) / max(long - short, 1))
        return max(0.0, t_short - per_frame * short), per_frame

    def _reference_ids(self, phonemes: str) -> list[int]:
        """Token ids ``[BOS, *phonemes, EOS]`` of a reference text (vocabulary and context enforced)."""
        kept = self._in_vocab(phonemes)[: min(MAX_PHONEMES, self._context)]
        return [0, *(self._vocab[ch] for ch in kept), 0]

    def _in_vocab(self, phonemes: str) -> str:
        return "".join(ch for ch in phonemes if ch in self._vocab)

    def _apply_threads(self) -> None:
        # torch's intra-op thread count is per calling thread under OpenMP: set it on the engine
        # thread, which may not be the thread that built the engine.
        if torch.get_num_threads() != self.num_threads:
            torch.set_num_threads(self.num_threads)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda" and self.dtype != "float32":
            # Unmeasured here (no GPU): keep float32 as the default until fp16/bf16 is shown to stay
            # within 1e-2 of it. The harmonic source and the STFTs run in float32 regardless.
            return torch.autocast(device_type="cuda", dtype=_DTYPES[self.dtype])
        return contextlib.nullcontext()


def _fit_context(left: str, right: str, room: int) -> tuple[str, str]:
    """The context that fits in ``room`` tokens beside the item: the phonemes nearest to it, the
    left side's end and the right side's start, shared evenly when both do not fit."""
    if len(left) + len(right) <= room:
        return left, right
    keep_left = min(len(left), max(room // 2, room - len(right)))
    keep_right = min(len(right), room - keep_left)
    return left[len(left) - keep_left :], right[:keep_right]
