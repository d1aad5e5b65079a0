"""A batched forward pass over kokoro's own ``KModel`` modules and weights.

``KModel.forward_with_tokens`` serves one unpadded sequence: with padding, its instance norms
average over the neighbours' padding, its convolutions read it, its prosody LSTMs run through it,
its harmonic source draws from the global RNG and interpolates across items, and its STFTs reflect
at the batch's edge rather than the item's. ``batched_forward`` runs the same layers with the same
parameters on the whole padded batch, fixing each of those places, in a number of tensor ops that
does not depend on the number of items (on a GPU each op is a kernel launch):

* ALBERT -> durations -> F0/N run in batch-invariant kernels (``gateway.engines.prosody``): each
  item's durations, F0 and N are the same floats as in a solo run;
* durations are predicted for the batch, and ``_alignment`` (the one place where durations become
  frames) turns them into a padded frame -> token index (a ``searchsorted`` over cumulative ends);
* every ``AdaIN1d`` normalises over the item's own frames only (or by the statistics a ``norms``
  source gives each item: ``gateway.engines.voice_norms``), and zeroes its output's padding;
* padding is zero before every convolution, transposed ones included (a transposed conv reads one
  position past an item's end, as does ``AdainResBlk1d``'s stride-2 pool);
* the harmonic source runs on the padded batch: its interpolation clamps at each item's last frame,
  its noise is keyed by each item's seed (``source_noise``), its STFT reflects at each item's own
  ends (one gather, then ``torch.stft(center=False)``); the iSTFT is an overlap-add with each
  item's own window envelope; items come back padded with their lengths (the caller cuts).

When every item fills the padded width (one item, or an equal-length bucket) the masks vanish.

How exact. Each item's durations, F0 and N equal a solo run's bit for bit (``prosody.py`` says how
and why that matters); everything after them differs from a solo run by float rounding only (~1e-6:
masked sums add in another order). Two more places were not continuous and are handled here:

* frame 0 of the source STFT is even-symmetric (reflection padding, Hann window), so its spectrum
  is real and ``torch.angle`` of its rounding-noise imaginary parts jumped between +pi and -pi with
  any 1-ulp change upstream: taken from the real part now (``source_phase``);
* the oscillator integrates F0 over the item. kokoro sums per-sample frequencies in float32, whose
  roundings (worth ~1e-2 rad at the 9th harmonic after seconds) diverge chaotically when F0 moves
  by an ulp; the phase is integrated in float64 here.

``per_item_prosody=True`` runs the prosody pass one item at a time (the same result, a few
hundred more tensor ops per item): a reference for tests.

This module is not a model: it holds no weights and copies no layer. It depends on the attribute
layout of kokoro 0.9.4 (``istftnet.py``, ``modules.py``); ``tests/test_batched_forward.py``
checks it against ``KModel.forward_with_tokens``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from gateway.engines.edges import EdgeSpan, clamp_edges_batch, context_window
from gateway.engines.prosody import f0_and_n, predict_durations
from gateway.engines.source_noise import GeneratorNoise, SourceNoise
from gateway.engines.voice_norms import FixedNorms, NormSource

__all__ = [
    "BatchedAudio", "BatchedOutput", "Prepared", "Window", "WINDOW_REACH_FRAMES",
    "batched_forward", "decode_batch", "decode_windows", "prepare_batch", "source_phase",
]

# The harmonic source integrates its phase in this dtype (see ``_harmonic_source``).
_PHASE_DTYPE = torch.float64
#: How far, in frames, a cut window edge changes the decoder's audio (``decode_windows``), with fixed
#: norms: measured on the offline weights, 13 frames from a cut edge the difference from the whole
#: decode is under 2e-4 (peak 0.32), below the bfloat16 convolutions' own rounding (~2e-3); at 8
#: frames it is ~1e-2. (benchmarks/README.md, "Sixth round".)
WINDOW_REACH_FRAMES = 13


class BatchedOutput(NamedTuple):
    """One item's result: mono float32 audio (on the model's device) and per-token frame counts."""

    audio: torch.Tensor  # (sum(durations) * 600,)
    durations: torch.Tensor  # int64 on CPU, one per token including the boundary tokens


class _Span:
    """Valid lengths of each item along one padded time axis.

    ``mask`` is ``(B, 1, width)`` bool, True on valid positions, or None when every item fills the
    width: the fast path where kokoro's own ops are exact. ``lengths_t`` is the lengths as a
    ``(B,)`` int64 tensor on the device, made on first use. A span built on a given ``lengths_t``
    (a CUDA graph's static input, ``cuda_graphs.py``) has a fixed ``width`` and always masks, so
    that no mask decision or host-to-device copy depends on the lengths of one batch.
    """

    __slots__ = ("lengths", "width", "mask", "pad", "count", "device", "_lengths_t")

    def __init__(
        self,
        lengths: Sequence[int],
        device: torch.device,
        *,
        width: int | None = None,
        lengths_t: torch.Tensor | None = None,
    ) -> None:
        self.lengths = [int(n) for n in lengths]
        self.width = max(self.lengths) if width is None else width
        self.device = device
        self.mask: torch.Tensor | None = None
        self.pad: torch.Tensor | None = None  # ~mask, made once: it is used before every conv
        self.count: torch.Tensor | None = None
        self._lengths_t = lengths_t
        if lengths_t is not None or min(self.lengths) != self.width:
            self.mask = (torch.arange(self.width, device=device)[None, :] < self.lengths_t[:, None]).unsqueeze(1)
            self.pad = ~self.mask
            self.count = self.lengths_t.to(torch.float32).view(-1, 1, 1)

    @property
    def lengths_t(self) -> torch.Tensor:
        if self._lengths_t is None:
            self._lengths_t = torch.tensor(self.lengths, device=self.device)
        return self._lengths_t

    def mapped(self, fn: Callable[[Any], Any]) -> _Span:
        """The span of a layer whose output length is ``fn(input length)`` (increasing in every use).

        A span with a given ``lengths_t`` maps it with ``fn`` on the tensor (capturable in a CUDA
        graph), so ``fn`` uses only arithmetic that ints and tensors share.
        """
        lengths = [fn(n) for n in self.lengths]
        if self._lengths_t is None or self.mask is None:
            return _Span(lengths, self.device)
        return _Span(lengths, self.device, width=fn(self.width), lengths_t=fn(self._lengths_t))


def _zero_pad(x: torch.Tensor, span: _Span) -> torch.Tensor:
    # masked_fill rather than a multiply: garbage in padding may be inf, and inf * 0 is nan.
    return x if span.mask is None else x.masked_fill(span.pad, 0.0)


def _conv_len(conv: nn.Conv1d, n: int) -> int:
    (k,), (s,), (p,), (d,) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _conv_t_len(conv: nn.ConvTranspose1d, n: int) -> int:
    (k,), (s,), (p,), (d,), (op,) = conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.output_padding
    return (n - 1) * s - 2 * p + d * (k - 1) + op + 1


def _check_width(x: torch.Tensor, span: _Span, where: str) -> None:
    # Length formulas and the layers must agree, or masks would sit on the wrong samples.
    if x.shape[-1] != span.width:
        raise AssertionError(f"{where}: width {x.shape[-1]} != expected {span.width}")


class _Style(NamedTuple):
    """What the decoder's ``AdaIN1d`` layers read besides the signal: the style vectors ``(B, 128)``
    and where the norms' statistics come from (None: each item's own, as Kokoro)."""

    vector: torch.Tensor
    norms: NormSource | None = None


def _adain(layer: nn.Module, x: torch.Tensor, s: _Style, span: _Span) -> torch.Tensor:
    """``AdaIN1d`` with instance statistics over each item's own frames (or ``s.norms``' statistics);
    padding comes out zero."""
    h = layer.fc(s.vector).unsqueeze(-1)
    gamma, beta = torch.chunk(h, chunks=2, dim=1)
    norm: nn.InstanceNorm1d = layer.norm
    fixed = None if s.norms is None else s.norms.statistics(layer, x, span.lengths)
    if fixed is None and span.mask is None:
        return (1 + gamma) * norm(x) + beta
    # Running statistics would make the norm length-independent, but kokoro never tracks them.
    assert not norm.track_running_stats, "AdaIN1d with running statistics is not supported"
    if fixed is None:
        pad, count = span.pad, span.count
        mean = x.masked_fill(pad, 0.0).sum(dim=-1, keepdim=True) / count
        centred = (x - mean).masked_fill(pad, 0.0)
        var = centred.square().sum(dim=-1, keepdim=True) / count  # biased, as InstanceNorm's
    else:
        mean, var = fixed
        centred = x - mean
    # Fold normalisation, the norm's affine and the style's gamma/beta into one scale and shift
    # per (item, channel): one pass over the signal instead of four.
    scale = (1 + gamma) * torch.rsqrt(var + norm.eps)
    shift = beta
    if norm.affine:
        scale = scale * norm.weight[:, None]
        shift = shift + (1 + gamma) * norm.bias[:, None]
    out = torch.addcmul(shift, centred, scale)
    return out if span.mask is None else out.masked_fill(span.pad, 0.0)


def _snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    # Snake1D as in AdaINResBlock1.forward; maps 0 to 0, so zero padding stays zero.
    return x + (1 / alpha) * (torch.sin(alpha * x) ** 2)


def _adain_resblk1d(
    block: nn.Module, x: torch.Tensor, s: _Style, span_in: _Span, span_out: _Span
) -> torch.Tensor:
    """``AdainResBlk1d.forward`` with masked norms and zero padding before each conv.

    ``span_out`` differs from ``span_in`` only for the upsampling blocks (twice the length).
    """
    r = block.actv(_adain(block.norm1, x, s, span_in))  # padding zero: LeakyReLU(0) == 0
    if block.upsample_type != "none":
        # The transposed pool writes its bias (and one position read past the end) into padding.
        r = _zero_pad(block.pool(r), span_out)
    r = block.conv1(block.dropout(r))
    r = block.actv(_adain(block.norm2, r, s, span_out))
    r = block.conv2(block.dropout(r))
    out = (r + block._shortcut(x)) * torch.rsqrt(torch.tensor(2))  # shortcut is pointwise
    _check_width(out, span_out, "AdainResBlk1d")
    return out


def _adain_resblock1(block: nn.Module, x: torch.Tensor, s: _Style, span: _Span) -> torch.Tensor:
    """``AdaINResBlock1.forward`` (the generator's resblock) with masked norms.

    Every conv here follows a masked AdaIN and a Snake, so its input padding is already zero.
    """
    layers = zip(block.convs1, block.convs2, block.adain1, block.adain2, block.alpha1, block.alpha2)
    for c1, c2, n1, n2, a1, a2 in layers:
        xt = c1(_snake(_adain(n1, x, s, span), a1))
        xt = c2(_snake(_adain(n2, xt, s, span), a2))
        x = xt + x
    return x


def _sines(sine: nn.Module, f0: torch.Tensor, halves: _Span) -> torch.Tensor:
    """``SineGen._f02sine(f0 * harmonics) * sine_amp`` at sample rate, ``(B, dim, H * up)``.

    ``f0`` is ``(B, 1, H)`` at frame rate (zero in padding); the phase is integrated in
    ``_PHASE_DTYPE`` and wrapped per frame (see ``_harmonic_source``).
    """
    device = f0.device
    up = int(sine.upsample_scale)
    width = f0.shape[-1]
    harmonics = torch.arange(1, sine.dim + 1, dtype=torch.float32, device=device).view(1, -1, 1)
    rad = (f0 * harmonics / sine.sampling_rate) % 1  # cycles per sample, per frame (B, dim, H)
    cycles = torch.cumsum(rad.to(_PHASE_DTYPE), dim=2) * up  # phase at each frame's centre, in cycles
    if halves.mask is not None:
        # Each item's last frame repeated into the padding: the interpolation clamps at its end.
        last = torch.minimum(torch.arange(width, device=device), halves.lengths_t[:, None] - 1)
        cycles = torch.gather(cycles, 2, last.unsqueeze(1).expand(-1, sine.dim, -1))
    step = torch.diff(cycles, dim=2, append=cycles[:, :, -1:])  # 0 at the edge: the clamp
    start = (cycles - torch.floor(cycles)).float()  # wrapped per frame
    # Linear upsampling by `up` (align_corners=False, as F.interpolate): sample j sits at frame
    # position max(0, (j + 0.5) / up - 0.5). Samples [up * i + up / 2, up * (i + 1) + up / 2) lie
    # between frames i and i + 1 at weights (k + 0.5) / up: a broadcast over (frame, k), shifted by
    # half a frame; the first half frame clamps to frame 0.
    assert up % 2 == 0, "SineGen's upsample scale is even for Kokoro (300)"
    weight = (torch.arange(up, dtype=torch.float64, device=device) + 0.5).div(up).float()
    blocks = torch.addcmul(start.unsqueeze(-1), step.float().unsqueeze(-1), weight)  # (B, dim, H, up)
    half = up // 2
    phase = torch.cat([start[:, :, :1].expand(-1, -1, half), blocks.flatten(2)[:, :, : width * up - half]], dim=2)
    return torch.sin((2 * torch.pi) * torch.frac(phase)) * sine.sine_amp


def _merge_harmonics(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``SourceModuleHnNSF.l_linear`` over the harmonic axis of ``x`` ``(B, dim, samples)``: ``(B, samples)``.

    A fixed-order sum of element-wise products instead of a matmul: a matmul's rounding depends on
    the shape of the whole batch (it moved the source by ~3e-8 between a batch and a solo run), and
    the source's STFT phase (``atan2``) jumps by 2 pi where a bin is near the negative real axis, so
    such a rounding became an audible 1e-2 difference. Element-wise ops round the same in any batch.
    A constant ``dim`` ops, whatever the batch size.
    """
    weight, bias = linear.weight[0], linear.bias[0]
    merged = x[:, 0] * weight[0]
    for k in range(1, x.shape[1]):
        merged = merged + x[:, k] * weight[k]
    return merged + bias


def _harmonic_source(gen: nn.Module, f0: torch.Tensor, halves: _Span, noise: SourceNoise) -> tuple[torch.Tensor, _Span]:
    """The harmonic source of a whole batch, as its STFT: ``(B, n_fft + 2, frames)``, padding zero.

    ``f0`` is ``(B, halves.width)``, each item's F0 curve at twice the frame rate. Same arithmetic as
    ``SourceModuleHnNSF`` / ``SineGen`` (kokoro 0.9.4) on each item's own samples, with two
    differences, both for exactness:

    * The phase is integrated in float64. ``SineGen`` sums per-sample frequencies (cycles/sample)
      over an item's frames in float32 and multiplies by 300 * 2 pi: every rounding of that sum is
      worth ~1e-2 rad at the 9th harmonic after a few seconds, and F0 that differs by one float32
      ulp rounds differently, so the roundings diverge into a 3e-3..9e-3 waveform drift. In
      float64 the sum carries F0 through (a 1e-7 relative change of F0 stays ~1e-7 of a phase
      step). The phase is then wrapped to [0, 1) cycles per frame before it goes back to float32.
    * ``SineGen``'s frame-rate interpolation of the per-sample frequencies reads samples 149 and
      150 of each 300-sample frame, where the nearest-upsampled F0 is the frame's own: so it is
      computed at frame rate (and the initial random phase, added to sample 0 only, never reaches
      the output; ``GeneratorNoise`` still draws it, to keep kokoro's stream).

    The interpolation back to sample rate clamps at each item's own last frame (the edge frame is
    repeated into the padding), and the STFT's reflection padding reflects at each item's own end.
    """
    source = gen.m_source
    sine = source.l_sin_gen
    assert not sine.flag_for_pulse, "SineGen pulse mode is not used by Kokoro"
    device = f0.device
    up = int(sine.upsample_scale)
    batch, width = f0.shape
    f0 = _zero_pad(f0.unsqueeze(1), halves)  # (B, 1, H)
    sines = _sines(sine, f0, halves)  # (B, dim, samples)
    uv = sine._f02uv(f0)  # (B, 1, H)
    noise_amp = uv * sine.noise_std + (1 - uv) * sine.sine_amp / 3
    # Nearest upsampling (nn.Upsample): sample j takes frame j // up.
    uv, noise_amp = torch.cat([uv, noise_amp], dim=1).unsqueeze(-1).expand(-1, -1, -1, up).flatten(2).chunk(2, dim=1)
    samples = halves.mapped(lambda n: n * up)
    linear = source.l_linear
    if noise.per_harmonic:
        # SineGen's own arithmetic: a draw per harmonic, merged with the sines by l_linear.
        draws = noise.standard_normal(samples.lengths, samples.width, sine.dim, device)
        merged = _merge_harmonics(linear, sines * uv + noise_amp * draws)
    else:
        # l_linear is linear: the noise part of its output is noise_amp * (w . draws), and w . draws
        # of iid standard normals is one normal of standard deviation |w|. Same distribution, a
        # ninth of the draws.
        draws = noise.standard_normal(samples.lengths, samples.width, 1, device)
        merged = _merge_harmonics(linear, sines * uv)
        # The norm stays a tensor: a Python float would sync with the device (and break a CUDA graph).
        merged = torch.addcmul(merged, noise_amp.squeeze(1) * linear.weight.norm(), draws.squeeze(1))
    har_source = source.l_tanh(merged)  # (B, samples)
    # center=True reflection padding, at each item's own ends: one gather, then a plain STFT.
    pad = gen.stft.filter_length // 2
    t = (torch.arange(-pad, samples.width + pad, device=device)).abs().expand(batch, -1)
    end = samples.lengths_t[:, None] - 1
    t = torch.where(t > end, 2 * end - t, t).clamp(0, samples.width - 1)
    spec = torch.stft(
        torch.gather(har_source, 1, t),
        gen.stft.filter_length,
        gen.stft.hop_length,
        gen.stft.win_length,
        window=gen.stft.window.to(device),
        center=False,
        return_complex=True,
    )
    hop = gen.stft.hop_length
    frames = samples.mapped(lambda n: n // hop + 1)
    _check_width(spec, frames, "harmonic source STFT")
    return _zero_pad(torch.cat([torch.abs(spec), source_phase(spec)], dim=1), frames), frames


def source_phase(spec: torch.Tensor) -> torch.Tensor:
    """``torch.angle`` of the source's STFT ``(B, bins, frames)``, with frame 0 made deterministic.

    With center=True reflection padding, frame 0 is centred on sample 0 and even-symmetric (the
    Hann window is too), so its spectrum is real: its imaginary parts are rounding noise, and
    ``torch.angle`` turns their sign into +pi or -pi where the real part is negative. A 1-ulp
    change anywhere upstream (another batch shape for ``l_linear``, F0 from a padded prosody pass)
    flips them: a 2 pi jump in the generator's input, the largest batched-vs-solo difference left.
    Frame 0's angle is therefore taken from its real part alone: pi where negative, else 0.
    """
    phase = torch.angle(spec)
    phase[:, :, 0] = torch.where(spec.real[:, :, 0] < 0, torch.pi, 0.0)
    return phase


def _istft(gen: nn.Module, x: torch.Tensor, span: _Span) -> tuple[torch.Tensor, list[int]]:
    """``TorchSTFT.inverse`` of the generator's output, per item on its own frames, in one batch.

    ``torch.istft`` divides by the window envelope of all frames, so a padding frame would change
    the envelope at an item's last hop; this is the same overlap-add (irfft, window,
    ``unfold_backward``) with each item's envelope summed over its own frames. Returns audio
    ``(B, samples)`` with zero padding, and each item's length ``(frames - 1) * hop`` (center=True
    trims ``n_fft // 2`` at both ends).
    """
    stft = gen.stft
    n_fft, hop = stft.filter_length, stft.hop_length
    n_bins = gen.post_n_fft // 2 + 1
    window = stft.window.to(x.device)
    spec = _zero_pad(torch.exp(x[:, :n_bins, :]), span)  # padding frames add nothing
    phase = torch.sin(x[:, n_bins:, :])
    frames = torch.fft.irfft(torch.polar(spec, phase).transpose(1, 2), n=n_fft, dim=-1)
    batch, width = x.shape[0], span.width
    full = (width - 1) * hop + n_fft
    y = torch.ops.aten.unfold_backward(frames * window, [batch, full], 1, n_fft, hop)
    weights = window.square().expand(batch, width, -1)
    if span.mask is not None:
        weights = weights * span.mask.transpose(1, 2)
    envelope = torch.ops.aten.unfold_backward(weights, [batch, full], 1, n_fft, hop)
    start = n_fft // 2
    samples = span.mapped(lambda n: (n - 1) * hop)
    y = y[:, start : start + samples.width]
    envelope = envelope[:, start : start + samples.width]
    if samples.mask is None:
        return y / envelope, samples.lengths
    pad = samples.pad.squeeze(1)
    return (y / envelope.masked_fill(pad, 1.0)).masked_fill(pad, 0.0), samples.lengths


def _generator(
    gen: nn.Module,
    x: torch.Tensor,
    s: _Style,
    f0: torch.Tensor,
    span: _Span,
    noise: SourceNoise,
    source: tuple[torch.Tensor, _Span] | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """``Generator.forward`` on the whole batch; returns padded audio ``(B, samples)`` and lengths.

    ``source``: the harmonic source's STFT and span when already made (a window's slice of its
    item's, ``decode_windows``); None: made here from ``f0`` and ``noise``."""
    device = x.device
    upsample_scale = gen.m_source.l_sin_gen.upsample_scale
    if source is not None:
        har, har_span = source
    else:
        with torch.autocast(device_type=device.type, enabled=False):
            har, har_span = _harmonic_source(gen, f0.float(), span, noise)
    assert har_span.lengths == [n * upsample_scale // gen.stft.hop_length + 1 for n in span.lengths]

    for i in range(gen.num_upsamples):
        last = i == gen.num_upsamples - 1
        x = F.leaky_relu(x, negative_slope=0.1)
        x_source = gen.noise_convs[i](har)  # har padding is zero
        # Left-only reflection padding after the last upsampling: (1, 0) reflects index 1 into -1,
        # which is each item's own start, never its end.
        pad_left = gen.reflection_pad.padding[0] if last else 0
        assert gen.reflection_pad.padding[1] == 0
        out_span = span.mapped(lambda n, conv=gen.ups[i]: _conv_t_len(conv, n) + pad_left)
        _check_width(x_source, out_span, "noise_convs")
        assert out_span.lengths == [_conv_len(gen.noise_convs[i], n) for n in har_span.lengths]
        x_source = _adain_resblock1(gen.noise_res[i], x_source, s, out_span)
        x = gen.ups[i](_zero_pad(x, span))
        if last:
            x = gen.reflection_pad(x)
        x = x + x_source
        span = out_span
        xs = None
        for j in range(gen.num_kernels):
            y = _adain_resblock1(gen.resblocks[i * gen.num_kernels + j], x, s, span)
            xs = y if xs is None else xs + y
        x = xs / gen.num_kernels
    x = F.leaky_relu(x)
    x = gen.conv_post(_zero_pad(x, span))
    with torch.autocast(device_type=device.type, enabled=False):
        return _istft(gen, x.float(), span)


def _decoder(
    dec: nn.Module,
    asr: torch.Tensor,
    f0_curve: torch.Tensor,
    n_curve: torch.Tensor,
    s: torch.Tensor,
    frames: _Span,
    halves: _Span,
    noise: SourceNoise,
    norms: NormSource | None = None,
    source: tuple[torch.Tensor, _Span] | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """``Decoder.forward`` with masking; ``frames`` is the alignment's axis, ``halves`` F0's.

    ``norms``: the ``AdaIN1d`` layers' statistics (``gateway.engines.voice_norms``); None: each
    item's own, as Kokoro. ``source``: the harmonic source, when already made (``_generator``)."""
    style = _Style(s, norms)
    f0 = dec.F0_conv(_zero_pad(f0_curve.unsqueeze(1), halves))
    n = dec.N_conv(_zero_pad(n_curve.unsqueeze(1), halves))
    _check_width(f0, frames, "F0_conv")
    x = torch.cat([asr, f0, n], dim=1)
    x = _adain_resblk1d(dec.encode, x, style, frames, frames)
    asr_res = dec.asr_res(asr)  # 1x1 conv on zero-padded asr
    span, res = frames, True
    for block in dec.decode:
        if res:
            x = torch.cat([x, asr_res, f0, n], dim=1)
        out_span = halves if block.upsample_type != "none" else span
        x = _adain_resblk1d(block, x, style, span, out_span)
        span = out_span
        if block.upsample_type != "none":
            res = False
    return _generator(dec.generator, x, style, f0_curve, span, noise, source)


def _prosody(
    predictor: nn.Module, en: torch.Tensor, s: torch.Tensor, frames: _Span, halves: _Span
) -> tuple[torch.Tensor, torch.Tensor]:
    """``ProsodyPredictor.F0Ntrain``: F0 and N ``(B, halves.width)``, each item's bit for bit as alone."""
    return f0_and_n(predictor, en, s, frames.lengths, halves.lengths)


def _expand(x: torch.Tensor, index: torch.Tensor, frames: _Span) -> torch.Tensor:
    """``x (B, C, T) @ alignment`` as a gather: frame f of item b copies token ``index[b, f]``.

    Exactly the one-hot matmul's values (each output is one input times 1), at a fraction of
    its cost; padding frames come out zero.
    """
    out = torch.gather(x, 2, index.unsqueeze(1).expand(-1, x.shape[1], -1))
    return _zero_pad(out, frames)


class _Tokens(NamedTuple):
    span: _Span
    input_ids: torch.Tensor  # (B, width), padded with 0
    text_mask: torch.Tensor  # (B, width), True on padding, as kokoro's modules want it
    lengths_cpu: torch.Tensor


def _pad_tokens(token_ids: Sequence[torch.Tensor | Sequence[int]], device: torch.device) -> _Tokens:
    rows = [ids.tolist() if isinstance(ids, torch.Tensor) else [int(i) for i in ids] for ids in token_ids]
    span = _Span([len(row) for row in rows], device)
    # One host-to-device copy for the whole batch.
    input_ids = torch.tensor([row + [0] * (span.width - len(row)) for row in rows], dtype=torch.long, device=device)
    text_mask = torch.zeros_like(input_ids, dtype=torch.bool) if span.mask is None else span.pad.squeeze(1)
    return _Tokens(span, input_ids, text_mask, torch.tensor(span.lengths, dtype=torch.long))


def _predict_durations(
    model: nn.Module, tokens: _Tokens, s_pred: torch.Tensor, speeds: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames per token ``(B, T)`` (int64, 0 on padding) and the duration encoder's output ``d``.

    Each item's values are the same floats as in a solo run (``gateway.engines.prosody``).
    """
    return predict_durations(model, tokens.input_ids, tokens.span.lengths, s_pred, speeds)


def _alignment_index(durations: torch.Tensor, frames: _Span) -> torch.Tensor:
    """Frame -> token index per item, ``(B, frames.width)``, from ``(B, T)`` durations (0 on padding).

    Token ``i`` of item b owns frames ``[ends[i-1], ends[i])``, where ``ends`` is the cumulative sum
    of its durations, so frame f's token is the number of ends <= f. Padding frames point at the
    last token (``_expand`` zeroes them).
    """
    ends = torch.cumsum(durations, dim=1)
    positions = torch.arange(frames.width, device=durations.device).expand(durations.shape[0], -1).contiguous()
    index = torch.searchsorted(ends, positions, right=True)
    return index.clamp(max=durations.shape[1] - 1)


def _alignment(durations: torch.Tensor) -> tuple[_Span, torch.Tensor]:
    """The one place where predicted durations ``(B, T)`` become the alignment: frames and index.

    One host sync (the lengths decide every later shape).
    """
    frames = _Span(durations.sum(dim=1).tolist(), durations.device)
    return frames, _alignment_index(durations, frames)


def _durations_and_prosody(
    model: nn.Module,
    tokens: _Tokens,
    s_pred: torch.Tensor,
    speeds: torch.Tensor,
    edges: Sequence[EdgeSpan | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, _Span, torch.Tensor, _Span]:
    """Durations, F0 and N of the whole batch at once: ``(B, T)``, ``(B, H)``, ``(B, H)``, padded.

    ``edges[b]`` holds item b's edge tokens short (``gateway.engines.edges``) before the alignment,
    so neither the prosody predictor nor the decoder generates that silence.
    """
    durations, d = _predict_durations(model, tokens, s_pred, speeds)
    context = edges is not None and any(span and (span.left or span.right) for span in edges)
    if edges is not None and any(edges):
        # Context keeps its predicted frames for the prosody predictor, a few for the decoder.
        durations = clamp_edges_batch(durations, tokens.span.lengths, edges, context_frames=None)
    frames, index = _alignment(durations)
    en = _expand(d.transpose(-1, -2), index, frames)
    # F0/N come out at twice the frame rate (the upsampling AdainResBlk1d).
    halves = frames.mapped(lambda n: _conv_t_len(model.predictor.F0[1].pool, n))
    f0, n_curve = _prosody(model.predictor, en, s_pred, frames, halves)
    _check_width(f0, halves, "F0 curve")
    if context:
        durations, f0, n_curve, frames, index, halves = _context_window(model, durations, f0, n_curve, tokens, edges)
    return durations, f0, n_curve, frames, index, halves


def _context_window(
    model: nn.Module,
    durations: torch.Tensor,
    f0: torch.Tensor,
    n_curve: torch.Tensor,
    tokens: _Tokens,
    edges: Sequence[EdgeSpan | None],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, _Span, torch.Tensor, _Span]:
    """The decoder's window of a batch whose prosody ran over the whole context: the context down to
    the frames next to each item's phonemes (``edges.context_window``), F0/N cut to match."""
    durations, dropped = context_window(durations, tokens.span.lengths, edges)
    frames, index = _alignment(durations)
    halves = frames.mapped(lambda n: _conv_t_len(model.predictor.F0[1].pool, n))
    # Half-frame h of item b's window is half-frame 2 * dropped[b] + h of its whole curve.
    at = (2 * dropped[:, None] + torch.arange(halves.width, device=durations.device)[None, :]).clamp(max=f0.shape[1] - 1)
    f0, n_curve = _zero_pad(f0.gather(1, at)[:, None], halves)[:, 0], _zero_pad(n_curve.gather(1, at)[:, None], halves)[:, 0]
    return durations, f0, n_curve, frames, index, halves


def _prosody_per_item(
    model: nn.Module,
    tokens: _Tokens,
    s_pred: torch.Tensor,
    speeds: torch.Tensor,
    edges: Sequence[EdgeSpan | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_durations_and_prosody`` one item at a time, padded into a batch (a reference for tests).

    A few hundred ops per item (``per_item_prosody=True``); the whole-batch pass gives the same floats.
    """
    batch = len(tokens.span.lengths)
    durations = torch.zeros(batch, tokens.span.width, dtype=torch.long, device=s_pred.device)
    curves: list[tuple[torch.Tensor, torch.Tensor]] = []
    for b, n in enumerate(tokens.span.lengths):
        one = _pad_tokens([tokens.input_ids[b, :n]], s_pred.device)
        dur, f0, n_curve, *_ = _durations_and_prosody(
            model, one, s_pred[b : b + 1], speeds[b : b + 1], edges[b : b + 1] if edges is not None else None
        )
        durations[b, :n] = dur[0]
        curves.append((f0[0], n_curve[0]))
    width = max(f0.shape[0] for f0, _ in curves)
    f0_pred = s_pred.new_zeros(batch, width)
    n_pred = s_pred.new_zeros(batch, width)
    for b, (f0, n_curve) in enumerate(curves):
        f0_pred[b, : f0.shape[0]] = f0
        n_pred[b, : n_curve.shape[0]] = n_curve
    return durations, f0_pred, n_pred


class BatchedAudio(NamedTuple):
    """A batch's result, padded: ``audio[b, :num_samples[b]]`` is item b's audio.

    ``audio`` is float32 on the model's device, zero past each item's end; ``durations`` is int64
    on CPU, ``(B, max tokens)``, zero past each item's ``num_tokens[b]`` tokens. Kept padded so
    that a caller copies the batch to the host in one transfer.
    """

    audio: torch.Tensor
    num_samples: list[int]
    durations: torch.Tensor
    num_tokens: list[int]

    def item(self, b: int) -> BatchedOutput:
        return BatchedOutput(self.audio[b, : self.num_samples[b]], self.durations[b, : self.num_tokens[b]])

    def items(self) -> list[BatchedOutput]:
        return [self.item(b) for b in range(len(self.num_samples))]


@dataclass(eq=False)
class Prepared:
    """A batch's text side and prosody, ready for its decoder (``prepare_batch``): everything that
    reads the whole item. What is left (``decode_batch``, ``decode_windows``) reads, with fixed
    norms, only its convolutions' reach of frames."""

    durations: torch.Tensor  # (B, max tokens) int64 on the device, 0 on padding
    num_tokens: list[int]
    asr: torch.Tensor  # (B, C, frames.width): the text encoder's output per frame
    f0: torch.Tensor  # (B, halves.width)
    n_curve: torch.Tensor  # (B, halves.width)
    s_dec: torch.Tensor  # (B, style_dim): the decoder's half of each style row
    frames: _Span
    halves: _Span
    noise: SourceNoise
    #: The harmonic source's STFT of the whole batch and its span, made on first use by
    #: ``decode_windows`` (each window reads its slice, so its phase and noise are the item's own).
    source: tuple[torch.Tensor, _Span] | None = None

    @property
    def num_frames(self) -> list[int]:
        return self.frames.lengths


@torch.inference_mode()
def batched_forward(
    model: nn.Module,
    token_ids: Sequence[torch.Tensor | Sequence[int]],
    ref_s: torch.Tensor,
    speeds: Sequence[float],
    noise: SourceNoise | Sequence[torch.Generator],
    *,
    per_item_prosody: bool = False,
    edges: Sequence[EdgeSpan | None] | None = None,
    decoder_graphs: Callable[..., tuple[torch.Tensor, list[int]] | None] | None = None,
    norms: NormSource | None = None,
) -> BatchedAudio:
    """Synthesize a batch; item ``b``'s output depends only on item ``b``'s inputs.

    ``model`` is a ``kokoro.KModel`` in eval mode. ``token_ids[b]`` (a 1-D LongTensor or a list of
    ints) already carries the boundary tokens (``[0, *ids, 0]``, at most ``model.context_length``
    long), ``ref_s`` is ``(B, 2 * style_dim)`` (decoder half first, prosody half second, as
    voice-pack rows are), ``speeds[b] > 0`` divides item b's durations, and ``noise`` supplies each
    item's source noise: a ``SourceNoise`` (``HashNoise(seeds)``: the engine's) or one seeded
    ``torch.Generator`` per item on the model's device (``GeneratorNoise``: kokoro's own draws).
    Returns the padded batch (``BatchedAudio``; ``.items()`` splits it): audio of
    ``durations.sum() * 600`` samples per item. Raises ``ValueError`` on malformed input.

    ``per_item_prosody=False`` (default) runs ALBERT through the prosody predictor on the whole
    batch: the number of tensor ops does not depend on the number of items. ``True`` runs that
    part one item at a time (the same floats; a few hundred ops per item).
    ``edges[b]`` holds item b's edge tokens short (``gateway.engines.edges``). ``decoder_graphs``
    (``cuda_graphs.DecoderGraphs``) may run the decoder instead; when it returns None, it runs eagerly.
    ``norms`` gives the decoder's norms their statistics (``gateway.engines.voice_norms``; None: each
    item's own, as Kokoro); the graphs capture Kokoro's own, so with ``norms`` the decoder runs eagerly.

    The same as ``decode_batch(model, prepare_batch(...), ...)``.
    """
    prepared = prepare_batch(model, token_ids, ref_s, speeds, noise, per_item_prosody=per_item_prosody, edges=edges)
    return decode_batch(model, prepared, decoder_graphs=decoder_graphs, norms=norms)


@torch.inference_mode()
def prepare_batch(
    model: nn.Module,
    token_ids: Sequence[torch.Tensor | Sequence[int]],
    ref_s: torch.Tensor,
    speeds: Sequence[float],
    noise: SourceNoise | Sequence[torch.Generator],
    *,
    per_item_prosody: bool = False,
    edges: Sequence[EdgeSpan | None] | None = None,
) -> Prepared:
    """``batched_forward``'s first half: validation, ALBERT through F0/N, the text encoder and the
    alignment (its arguments are ``batched_forward``'s)."""
    if not isinstance(noise, SourceNoise):
        noise = GeneratorNoise(noise)
    num_items = len(token_ids)
    if not (num_items == len(speeds) == len(noise) == ref_s.shape[0]) or num_items == 0:
        raise ValueError("token_ids, ref_s, speeds and noise must have the same non-zero length")
    if edges is not None and len(edges) != num_items:
        raise ValueError("edges must have one entry per item")
    if model.training:
        raise ValueError("model must be in eval mode (dropout would randomise the output)")
    if any(not speed > 0 for speed in speeds):
        raise ValueError(f"speeds must be positive, got {list(speeds)}")
    device = model.bert.device
    tokens = _pad_tokens(token_ids, device)
    if min(tokens.span.lengths) < 2 or tokens.span.width > model.context_length:
        raise ValueError(f"token sequences must hold 2..{model.context_length} tokens, got {tokens.span.lengths}")

    style_dim = model.predictor.text_encoder.sty_dim
    ref_s = ref_s.to(device)
    s_dec, s_pred = ref_s[:, :style_dim], ref_s[:, style_dim:]
    speeds_t = torch.tensor([float(speed) for speed in speeds], dtype=torch.float32, device=device)
    if per_item_prosody:
        durations, f0_pred, n_pred = _prosody_per_item(model, tokens, s_pred, speeds_t, edges)
        frames, index = _alignment(durations)
        halves = frames.mapped(lambda n: _conv_t_len(model.predictor.F0[1].pool, n))
    else:
        durations, f0_pred, n_pred, frames, index, halves = _durations_and_prosody(
            model, tokens, s_pred, speeds_t, edges
        )
    t_en = model.text_encoder(tokens.input_ids, tokens.lengths_cpu, tokens.text_mask)
    asr = _expand(t_en, index, frames)
    return Prepared(durations, tokens.span.lengths, asr, f0_pred, n_pred, s_dec, frames, halves, noise)


@torch.inference_mode()
def decode_batch(
    model: nn.Module,
    p: Prepared,
    *,
    decoder_graphs: Callable[..., tuple[torch.Tensor, list[int]] | None] | None = None,
    norms: NormSource | None = None,
) -> BatchedAudio:
    """``batched_forward``'s second half: every item's frames through the decoder, whole."""
    graphed = None if decoder_graphs is None or norms is not None else decoder_graphs(p.asr, p.f0, p.n_curve, p.s_dec, p.frames, p.noise)
    audio, num_samples = graphed or _decoder(model.decoder, p.asr, p.f0, p.n_curve, p.s_dec, p.frames, p.halves, p.noise, norms)
    samples_per_half = model.decoder.generator.m_source.l_sin_gen.upsample_scale
    # torch.istft's length, (frames - 1) * hop, is sum(durations) * 600 for Kokoro's generator.
    expected = [n * samples_per_half for n in p.halves.lengths]
    if num_samples != expected:
        raise AssertionError(f"samples {num_samples} != expected {expected}")
    return BatchedAudio(audio, num_samples, p.durations.cpu(), p.num_tokens)


class Window(NamedTuple):
    """Frames ``[start, stop)`` of item ``item``'s decoder input."""

    item: int
    start: int
    stop: int


@torch.inference_mode()
def decode_windows(model: nn.Module, p: Prepared, windows: Sequence[Window], norms: FixedNorms) -> list[torch.Tensor]:
    """The audio of each window of frames, decoded as a batch of its own: ``(stop - start) * 600``
    samples each (float32, on the model's device).

    Needs fixed statistics (``norms``, one entry per item of ``p``): with them the decoder reads only
    its convolutions' reach, so a window's audio equals its item's whole decode except within
    ``WINDOW_REACH_FRAMES`` of a cut window edge (an item's own ends are not cut). The harmonic
    source is made for the whole items once and sliced, so a window's phase and noise are its item's.
    A window ``(b, 0, num_frames[b])`` is item b decoded whole.
    """
    if not windows:
        return []
    frames_of = p.num_frames
    for w in windows:
        if not 0 <= w.start < w.stop <= frames_of[w.item]:
            raise ValueError(f"window {tuple(w)} outside item {w.item}'s {frames_of[w.item]} frames")
    gen = model.decoder.generator
    if p.source is None:
        with torch.autocast(device_type=p.f0.device.type, enabled=False):
            p.source = _harmonic_source(gen, p.f0.float(), p.halves, p.noise)
    har_full = p.source[0]
    halves_per_frame = p.halves.width // max(p.frames.width, 1)
    assert p.halves.lengths == [n * halves_per_frame for n in frames_of], "F0 runs at a whole multiple of the frame rate"
    up, hop = int(gen.m_source.l_sin_gen.upsample_scale), gen.stft.hop_length
    # Source STFT frames per decoder frame: samples per frame / hop (plus one at the window's end).
    stft_per_frame = halves_per_frame * up // hop
    widths = [w.stop - w.start for w in windows]
    width = max(widths)

    def cut(x: torch.Tensor, start: int, stop: int, pad: int) -> torch.Tensor:
        return F.pad(x[..., start:stop], (0, pad))

    asr = torch.stack([cut(p.asr[w.item], w.start, w.stop, width - n) for w, n in zip(windows, widths)])
    f0, n_curve = (
        torch.stack([cut(curve[w.item], halves_per_frame * w.start, halves_per_frame * w.stop, halves_per_frame * (width - n)) for w, n in zip(windows, widths)])
        for curve in (p.f0, p.n_curve)
    )
    har = torch.stack(
        [cut(har_full[w.item], stft_per_frame * w.start, stft_per_frame * w.stop + 1, stft_per_frame * (width - n)) for w, n in zip(windows, widths)]
    )
    frames = _Span(widths, asr.device)
    halves = frames.mapped(lambda n: halves_per_frame * n)
    source = (har, halves.mapped(lambda n: n * up // hop + 1))
    items = [w.item for w in windows]
    audio, lengths = _decoder(model.decoder, asr, f0, n_curve, p.s_dec[items], frames, halves, p.noise, norms.select(items), source)
    return [audio[i, :n] for i, n in enumerate(lengths)]
