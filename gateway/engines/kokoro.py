"""``KokoroEngine``: one Kokoro-82M ``KModel`` and its voice packs behind voxgate's ``Engine``.

The engine maps each item's phonemes to token ids, picks the item's style row from its voice pack,
seeds the item's own noise generator, and runs the whole batch through ``batched_forward`` (an
exact batched pass over the model's own modules). Results come back in input order, each
depending only on its own item.

What it is not: a scheduler (it sorts and buckets nothing), a G2P (phonemes arrive ready), or a
weights loader (``weights.load_kokoro`` / ``build_kmodel`` make the ``KModel``; ``tiny`` makes a
random one for tests).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from gateway.engines.base import MAX_PHONEMES, Engine, EngineError, SynthesisItem, SynthesisResult
from gateway.engines.batched import batched_forward
from gateway.engines.edges import edge_span, trim_edges

__all__ = ["KokoroEngine", "DType", "resolve_device", "device_name"]

logger = logging.getLogger("voxgate.engine")

DType = Literal["float32", "float16", "bfloat16"]
_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# A short piece for warmup: a few common phonemes, every one in Kokoro's vocabulary.
_WARMUP_PHONEMES = "həlˈoʊ wˈɜːld."


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


class KokoroEngine(Engine):
    """Kokoro-82M behind ``Engine``: batches in, one exact result per item out, in input order.

    Responsibilities: own one ``KModel`` (in eval mode, on ``device``) and a voice-pack dict;
    validate items (known voice, phonemes within ``MAX_PHONEMES`` of the vocabulary, speed > 0);
    seed each item's noise from ``item.effective_seed()``; run ``batched_forward``. Not its job:
    bucketing by length (the scheduler does that: padding waste makes mixed lengths slow), text,
    worker threads. Call every method from the engine thread: ``num_threads`` is applied to that thread.

    ``dtype`` other than float32 applies only on CUDA (autocast; unmeasured, so off by default).
    ``batched_prosody=True`` also batches ALBERT and the prosody predictor (more GPU parallelism;
    voiced audio then drifts from a solo run by ~5e-3 relative, inaudibly; see ``batched.py``).
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
        batched_prosody: bool = False,
    ) -> None:
        if not voices:
            raise ValueError("at least one voice pack is needed")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.device = resolve_device(device)
        if self.device.type == "cpu" and dtype != "float32":
            # bf16 autocast measured 47x slower than fp32 on an AVX2 CPU; fp16 has no fast CPU path.
            logger.warning("dtype %s ignored on CPU; using float32", dtype)
            dtype = "float32"
        self.dtype: DType = dtype
        self.num_threads = num_threads or _num_cores()
        self.max_batch_size = max_batch_size
        # None: decided at warmup (1 on CPU, where batching does not pay; the probe on GPU).
        self._preferred: int | None = preferred_batch_size
        self.preferred_batch_size = min(preferred_batch_size or 1, max_batch_size)
        self.weights_source = weights_source
        # False: ALBERT to F0 per item, so every result is exactly its solo result (batched.py).
        self.batched_prosody = batched_prosody
        self._apply_threads()
        self.model = model.to(self.device).eval()
        self.style_dim = int(self.model.predictor.text_encoder.sty_dim)
        self._vocab: dict[str, int] = dict(self.model.vocab)
        self.vocab = frozenset(self._vocab)
        self._voices: dict[str, torch.Tensor] = {}
        for name, pack in voices.items():
            if pack.dim() != 3 or pack.shape[1] != 1 or pack.shape[2] != 2 * self.style_dim:
                raise ValueError(f"voice {name!r}: pack shape {tuple(pack.shape)}, want (N, 1, {2 * self.style_dim})")
            self._voices[name] = pack.to(self.device, torch.float32)
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
        if not items:
            return []
        if len(items) > self.max_batch_size:
            raise EngineError(f"batch of {len(items)} exceeds max_batch_size {self.max_batch_size}")
        self._apply_threads()
        token_ids, styles, speeds, generators, spoken, seeds = [], [], [], [], [], []
        for item in items:
            pack = self._voices.get(item.voice)
            if pack is None:
                raise EngineError(f"unknown voice {item.voice!r}")
            kept = "".join(ch for ch in item.phonemes if ch in self._vocab)
            if len(kept) > min(MAX_PHONEMES, self._context):
                raise EngineError(f"{len(kept)} phonemes exceed the {MAX_PHONEMES}-phoneme context")
            if not item.speed > 0:
                raise EngineError(f"speed must be positive, got {item.speed}")
            token_ids.append(torch.tensor([0, *(self._vocab[ch] for ch in kept), 0], dtype=torch.long))
            # Kokoro's pipeline picks the row by the character count before vocabulary filtering.
            row = min(max(len(item.phonemes), 1), pack.shape[0]) - 1
            styles.append(pack[row])
            speeds.append(float(item.speed))
            seed = item.effective_seed()
            seeds.append(seed)
            generators.append(torch.Generator(device=self.device).manual_seed(seed))
            spoken.append(kept)
        ref_s = torch.cat(styles, dim=0)
        edges = [edge_span(kept, trim_start=item.trim_start, trim_end=item.trim_end) for item, kept in zip(items, spoken)]
        try:
            with self._autocast():
                outputs = batched_forward(
                    self.model, token_ids, ref_s, speeds, generators, batched_prosody=self.batched_prosody, edges=edges
                )
        except ValueError as exc:
            raise EngineError(str(exc)) from exc
        results = []
        for out, kept, seed, span in zip(outputs, spoken, seeds, edges):
            audio, durations = trim_edges(
                out.audio.float().cpu().numpy(), out.durations.numpy().astype(np.int64, copy=False), span
            )
            extra: dict[str, object] = {"seed": seed}
            if span:
                extra["edges_trimmed"] = (span.lead > 0, span.tail > 0)
            results.append(SynthesisResult(audio=audio, durations=durations, phonemes=kept, extra=extra))
        return results

    def warmup(self) -> None:
        """Run one short batch (allocations, kernel selection) and settle ``preferred_batch_size``.

        With ``preferred_batch_size=None``: 1 on CPU (batching measured no faster there), the batch
        size probe's answer on CUDA.
        """
        voice = next(iter(self._voices))
        self.synthesize([SynthesisItem(_WARMUP_PHONEMES, voice, seed=0)])
        if self._preferred is None and self.device.type == "cuda" and self.max_batch_size > 1:
            from gateway.engines.probe import default_sizes, probe_batch_sizes

            result = probe_batch_sizes(self, sizes=default_sizes(self.max_batch_size), seconds_budget=20.0)
            self.preferred_batch_size = result.best_batch_size
            logger.info("batch size probe: preferred %d\n%s", result.best_batch_size, result.table())

    def close(self) -> None:
        self._voices.clear()
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
            batched_prosody=self.batched_prosody,
        )
        return info

    # -- internals ------------------------------------------------------------------------------

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
