"""CUDA graphs for the batched decoder, one per (batch size, padded frames) bucket, eager fallback.

``engine.cuda_graphs`` (off by default). NEVER RUN ON A GPU: no GPU has been lent to this project
yet, so the capture and replay below have never executed; everything around them (bucket choice,
padding into a bucket and cutting back, the fallback when capture fails) is tested on the CPU, where
the padded decoder is run eagerly. Turn it on only after ``voxgate bench gpu-check`` (its
"CUDA graphs" section) has shown it correct and faster on the GPU at hand.

What is graphed. Durations decide every later shape (one host sync in ``batched._alignment``), so
ALBERT -> F0/N and the text encoder stay eager; the decoder and generator (most of the FLOPs and
most of the ~3,000 aten ops of a batch) are captured. A batch of ``B`` items whose longest has
``F`` frames is padded to the smallest bucket ``(batch, frames)`` that holds it: dummy items of one
frame fill the batch, zeros the frames. The decoder's masks and lengths come from a static lengths
tensor (``batched._Span(lengths_t=...)``), so one graph serves every batch of its bucket; each item's
audio is then the same function of its own inputs as in an eager run (padding is masked exactly as
a longer neighbour's would be), which is what the CPU test checks.

A graph is captured on a bucket's first use, after ``warmup`` eager runs on a side stream, and
replayed with static input and output buffers; at most ``max_graphs`` are kept (each holds its own
activation memory). A batch outside the buckets, a noise source other than ``HashNoise`` (kokoro's
per-item ``torch.Generator`` draws cannot be replayed), or a capture that raises run eagerly; each
such reason is logged once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from gateway.engines import batched as B
from gateway.engines.source_noise import HashNoise, SourceNoise

__all__ = ["BATCH_BUCKETS", "FRAME_BUCKETS", "Bucket", "DecoderGraphs", "choose_bucket"]

logger = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
#: Frames of 25 ms: 1.6 s .. 51 s of audio. Kokoro's 510-token limit stays under 2,048 at speed >= 0.5.
FRAME_BUCKETS = (64, 128, 256, 512, 1024, 2048)


class Bucket(NamedTuple):
    batch: int
    frames: int


def choose_bucket(
    batch: int, frames: int, batch_buckets: Sequence[int] = BATCH_BUCKETS, frame_buckets: Sequence[int] = FRAME_BUCKETS
) -> Bucket | None:
    """The smallest bucket holding ``batch`` items of at most ``frames`` frames, or None."""
    b = next((size for size in sorted(batch_buckets) if size >= batch), None)
    f = next((size for size in sorted(frame_buckets) if size >= frames), None)
    return None if b is None or f is None else Bucket(b, f)


class _Static(NamedTuple):
    """One bucket's input buffers (items past the batch are one-frame dummies)."""

    asr: torch.Tensor  # (batch, C, frames)
    f0: torch.Tensor  # (batch, 2 * frames)
    n: torch.Tensor  # (batch, 2 * frames)
    s: torch.Tensor  # (batch, style)
    lengths: torch.Tensor  # (batch,) int64, frames per item
    seeds: torch.Tensor  # (batch,) int64


class DecoderGraphs:
    """Runs ``batched._decoder`` through a CUDA graph per bucket; ``None`` from ``__call__``: run it eagerly."""

    def __init__(
        self,
        decoder: nn.Module,
        device: torch.device,
        *,
        batch_buckets: Sequence[int] = BATCH_BUCKETS,
        frame_buckets: Sequence[int] = FRAME_BUCKETS,
        max_graphs: int = 16,
        warmup: int = 2,
        capture: bool = True,
    ) -> None:
        """``capture=False`` runs each bucket's padded decoder eagerly instead of through a graph: the
        padding alone, on any device (the CPU tests, and gpu-check's reference for the graphs)."""
        self.decoder = decoder
        self.device = device
        self.batch_buckets = tuple(batch_buckets)
        self.frame_buckets = tuple(frame_buckets)
        self.max_graphs = max_graphs
        self.warmup = warmup
        self.capture = capture
        self._graphs: dict[Bucket, tuple[Any, _Static, torch.Tensor]] = {}
        self._failed: set[Bucket] = set()
        self._logged: set[str] = set()
        self.replays = 0  # batches served by a graph, for reports and tests

    def _once(self, reason: str, *args: object) -> None:
        if reason not in self._logged:
            self._logged.add(reason)
            logger.warning("CUDA graphs: " + reason + "; running the decoder eagerly", *args)

    # -- padding into a bucket (runs on any device) -----------------------------------------------

    def static_inputs(self, bucket: Bucket, asr: torch.Tensor, style_dim: int) -> _Static:
        """Zeroed buffers for ``bucket``, shaped after ``asr`` (B, C, F)."""
        device, batch, frames = asr.device, bucket.batch, bucket.frames
        return _Static(
            asr=asr.new_zeros(batch, asr.shape[1], frames),
            f0=asr.new_zeros(batch, 2 * frames),
            n=asr.new_zeros(batch, 2 * frames),
            s=asr.new_zeros(batch, style_dim),
            lengths=torch.ones(batch, dtype=torch.long, device=device),
            seeds=torch.zeros(batch, dtype=torch.long, device=device),
        )

    @staticmethod
    def fill(static: _Static, asr: torch.Tensor, f0: torch.Tensor, n: torch.Tensor, s: torch.Tensor, frames: B._Span, seeds: Sequence[int]) -> None:
        """Copy a batch into a bucket's buffers; the rest becomes one-frame dummy items of zeros."""
        batch, width = asr.shape[0], asr.shape[2]
        for buffer in (static.asr, static.f0, static.n, static.s):
            buffer.zero_()
        static.asr[:batch, :, :width].copy_(asr)
        static.f0[:batch, : f0.shape[1]].copy_(f0)
        static.n[:batch, : n.shape[1]].copy_(n)
        static.s[:batch].copy_(s)
        static.lengths.fill_(1)
        static.lengths[:batch].copy_(frames.lengths_t)
        static.seeds.zero_()
        static.seeds[:batch].copy_(torch.tensor(list(seeds), dtype=torch.long))

    def run_padded(self, static: _Static, capture_lengths: Sequence[int]) -> torch.Tensor:
        """The decoder on a bucket's buffers: padded audio ``(bucket.batch, samples)``. What a graph captures.

        ``capture_lengths`` only feeds Python-side checks; masks and lengths come from the buffers.
        """
        lengths = list(capture_lengths) + [1] * (static.lengths.shape[0] - len(capture_lengths))
        frames = B._Span(lengths, static.asr.device, width=static.asr.shape[2], lengths_t=static.lengths)
        noise = HashNoise([0] * len(lengths), seeds_t=static.seeds)
        halves = frames.mapped(lambda n: 2 * n)  # F0/N's axis: twice the frame rate
        audio, _ = B._decoder(self.decoder, static.asr, static.f0, static.n, static.s, frames, halves, noise)
        return audio

    # -- graphs (CUDA only; never run yet) ------------------------------------------------------

    def _capture(self, bucket: Bucket, static: _Static, capture_lengths: Sequence[int]) -> tuple[Any, torch.Tensor]:
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):  # cuFFT plans, cuDNN algorithms, allocator pools
                self.run_padded(static, capture_lengths)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.run_padded(static, capture_lengths)
        logger.info("CUDA graphs: captured bucket batch=%d frames=%d", bucket.batch, bucket.frames)
        return graph, out

    def __call__(
        self,
        asr: torch.Tensor,
        f0: torch.Tensor,
        n: torch.Tensor,
        s: torch.Tensor,
        frames: B._Span,
        noise: SourceNoise,
    ) -> tuple[torch.Tensor, list[int]] | None:
        """Padded audio ``(B, samples)`` and each item's sample count, or None: run eagerly instead."""
        if not isinstance(noise, HashNoise):
            self._once("noise %s cannot be replayed", type(noise).__name__)
            return None
        bucket = choose_bucket(asr.shape[0], frames.width, self.batch_buckets, self.frame_buckets)
        if bucket is None:
            self._once("a batch of %d items x %d frames is outside the buckets", asr.shape[0], frames.width)
            return None
        if bucket in self._failed:
            return None
        if not self.capture:
            static = self.static_inputs(bucket, asr, s.shape[1])
            self.fill(static, asr, f0, n, s, frames, noise.seeds)
            audio = self.run_padded(static, frames.lengths)
            return self._cut(audio, asr.shape[0], frames)
        entry = self._graphs.get(bucket)
        if entry is None:
            if len(self._graphs) >= self.max_graphs:
                self._once("%d graphs kept already (max_graphs)", self.max_graphs)
                return None
            static = self.static_inputs(bucket, asr, s.shape[1])
            self.fill(static, asr, f0, n, s, frames, noise.seeds)
            try:
                graph, out = self._capture(bucket, static, frames.lengths)
            except Exception as exc:  # any capture error: this bucket runs eagerly from now on
                self._failed.add(bucket)
                self._once("capture failed (%s: %s)", type(exc).__name__, exc)
                return None
            entry = self._graphs[bucket] = (graph, static, out)
        graph, static, out = entry
        self.fill(static, asr, f0, n, s, frames, noise.seeds)
        graph.replay()
        self.replays += 1
        # A copy: the next replay overwrites the graph's output buffer.
        return self._cut(out, asr.shape[0], frames, copy=True)

    def _cut(self, audio: torch.Tensor, batch: int, frames: B._Span, *, copy: bool = False) -> tuple[torch.Tensor, list[int]]:
        upsample = self.decoder.generator.m_source.l_sin_gen.upsample_scale
        num_samples = [2 * length * upsample for length in frames.lengths]
        out = audio[:batch, : max(num_samples)]
        return (out.clone() if copy else out), num_samples
