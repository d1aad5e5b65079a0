"""An exact batched forward pass over kokoro's own ``KModel`` modules and weights.

``KModel.forward_with_tokens`` serves one unpadded sequence: with padding, its instance norms
average over the neighbours' padding, its convolutions read it, its prosody LSTMs run through it,
its harmonic source draws from the global RNG and interpolates across items, and its STFTs reflect
at the batch's edge rather than the item's. ``batched_forward`` runs the same layers with the same
parameters, fixing each of those places:

* tokens are padded; ALBERT gets an attention mask; the prosody LSTMs (``predictor.lstm``,
  ``predictor.shared``) run packed on true lengths (``DurationEncoder`` and ``TextEncoder`` already
  pack when given true lengths, so kokoro's own forwards are called for them);
* the alignment is a padded gather from each item's own durations (per-item speed);
* every ``AdaIN1d`` normalises over the item's own frames only, and zeroes its output's padding;
* padding is zero before every convolution, transposed ones included (a transposed conv reads one
  position past an item's end, as does ``AdainResBlk1d``'s stride-2 pool);
* the harmonic source, STFT and iSTFT run per item on the item's own length, drawing noise from
  the item's own ``torch.Generator``;
* each item's audio is cut to ``sum(durations) * 600`` samples.

When every item fills the padded width (one item, or an equal-length bucket) the masks vanish and
the ops are kokoro's own, so batch 1 is kokoro's forward, bit for bit given the same noise.

How exact. Everything continuous in the batched pass differs from a solo run by float rounding
only (~1e-6 relative: padded attention, packed LSTMs and masked sums add in another order). Two
things are not continuous: the rounding of durations, and the harmonic source, which integrates
F0 over the whole item, so a 1e-7 difference in F0 becomes a phase drift of ~1e-3 rad after a few
seconds of voiced speech (measured with the converted Kokoro-82M weights and batched prosody:
3e-3 to 9e-3 relative waveform difference on 2-8 s items; 4e-6 with the sine source silenced).
Hence the default: the token-level part and the prosody predictor (ALBERT to F0/N, ~15 % of the
work) run one item at a time, exactly as at batch 1, so durations and F0 are bit-identical to a
solo run and only the decoder and generator are batched. ``batched_prosody=True`` batches those
too, with masks, for more parallel work on a GPU, accepting the drift (which is inaudible: the
same drift can separate two solo runs on different thread counts).

This module is not a model: it holds no weights and copies no layer. It depends on the attribute
layout of kokoro 0.9.4 (``istftnet.py``, ``modules.py``); ``tests/test_batched_forward.py``
checks it against ``KModel.forward_with_tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from gateway.engines.edges import EdgeSpan, clamp_edges

__all__ = ["BatchedOutput", "batched_forward"]


class BatchedOutput(NamedTuple):
    """One item's result: mono float32 audio (on the model's device) and per-token frame counts."""

    audio: torch.Tensor  # (sum(durations) * 600,)
    durations: torch.Tensor  # int64 on CPU, one per token including the boundary tokens


class _Span:
    """Valid lengths of each item along one padded time axis.

    ``mask`` is ``(B, 1, width)`` bool, True on valid positions, or None when every item fills the
    width: the fast path where kokoro's own ops are exact.
    """

    __slots__ = ("lengths", "width", "mask", "count")

    def __init__(self, lengths: Sequence[int], device: torch.device) -> None:
        self.lengths = [int(n) for n in lengths]
        self.width = max(self.lengths)
        self.mask: torch.Tensor | None = None
        self.count: torch.Tensor | None = None
        if min(self.lengths) != self.width:
            lengths_t = torch.tensor(self.lengths, device=device)
            self.mask = (torch.arange(self.width, device=device)[None, :] < lengths_t[:, None]).unsqueeze(1)
            self.count = lengths_t.to(torch.float32).view(-1, 1, 1)


def _zero_pad(x: torch.Tensor, span: _Span) -> torch.Tensor:
    # masked_fill rather than a multiply: garbage in padding may be inf, and inf * 0 is nan.
    return x if span.mask is None else x.masked_fill(~span.mask, 0.0)


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


def _lstm(lstm: nn.LSTM, x: torch.Tensor, span: _Span) -> torch.Tensor:
    """Run a batch-first bidirectional LSTM on each item's true length; padding comes out zero."""
    if span.mask is None:
        out, _ = lstm(x)
        return out
    packed = pack_padded_sequence(x, torch.tensor(span.lengths), batch_first=True, enforce_sorted=False)
    out, _ = lstm(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=span.width)
    return out


def _adain(layer: nn.Module, x: torch.Tensor, s: torch.Tensor, span: _Span) -> torch.Tensor:
    """``AdaIN1d`` with instance statistics over each item's own frames; padding comes out zero."""
    h = layer.fc(s).unsqueeze(-1)
    gamma, beta = torch.chunk(h, chunks=2, dim=1)
    norm: nn.InstanceNorm1d = layer.norm
    if span.mask is None:
        return (1 + gamma) * norm(x) + beta
    # Running statistics would make the norm length-independent, but kokoro never tracks them.
    assert not norm.track_running_stats, "AdaIN1d with running statistics is not supported"
    mask, count = span.mask, span.count
    mean = x.masked_fill(~mask, 0.0).sum(dim=-1, keepdim=True) / count
    centred = (x - mean).masked_fill(~mask, 0.0)
    var = centred.square().sum(dim=-1, keepdim=True) / count  # biased, as InstanceNorm's
    # Fold normalisation, the norm's affine and the style's gamma/beta into one scale and shift
    # per (item, channel): one pass over the signal instead of four.
    scale = (1 + gamma) * torch.rsqrt(var + norm.eps)
    shift = beta
    if norm.affine:
        scale = scale * norm.weight[:, None]
        shift = shift + (1 + gamma) * norm.bias[:, None]
    return torch.addcmul(shift, centred, scale).masked_fill(~mask, 0.0)


def _snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    # Snake1D as in AdaINResBlock1.forward; maps 0 to 0, so zero padding stays zero.
    return x + (1 / alpha) * (torch.sin(alpha * x) ** 2)


def _adain_resblk1d(
    block: nn.Module, x: torch.Tensor, s: torch.Tensor, span_in: _Span, span_out: _Span
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


def _adain_resblock1(block: nn.Module, x: torch.Tensor, s: torch.Tensor, span: _Span) -> torch.Tensor:
    """``AdaINResBlock1.forward`` (the generator's resblock) with masked norms.

    Every conv here follows a masked AdaIN and a Snake, so its input padding is already zero.
    """
    layers = zip(block.convs1, block.convs2, block.adain1, block.adain2, block.alpha1, block.alpha2)
    for c1, c2, n1, n2, a1, a2 in layers:
        xt = c1(_snake(_adain(n1, x, s, span), a1))
        xt = c2(_snake(_adain(n2, xt, s, span), a2))
        x = xt + x
    return x


def _harmonic_source(generator_module: nn.Module, f0: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """One item's harmonic source as an STFT (``(1, n_fft + 2, frames)``), noise from ``rng``.

    ``f0`` is the item's own F0 curve, ``(1, n)``. Same arithmetic as ``SourceModuleHnNSF`` /
    ``SineGen`` (kokoro 0.9.4), with the same draws in the same order (initial phases, then the
    additive noise), so with ``rng`` seeded like the global RNG the result is identical. The
    noise-branch draw, which ``Generator`` discards, is skipped.
    """
    source = generator_module.m_source
    sine = source.l_sin_gen
    assert not sine.flag_for_pulse, "SineGen pulse mode is not used by Kokoro"
    device = f0.device
    f0 = generator_module.f0_upsamp(f0[:, None]).transpose(1, 2)  # (1, samples, 1)
    harmonics = torch.arange(1, sine.harmonic_num + 2, dtype=torch.float32, device=device).view(1, 1, -1)
    rad_values = (f0 * harmonics / sine.sampling_rate) % 1
    rand_ini = torch.rand(f0.shape[0], sine.dim, device=device, generator=rng)
    rand_ini[:, 0] = 0
    rad_values[:, 0, :] = rad_values[:, 0, :] + rand_ini
    # Phase is integrated at frame rate and interpolated back: per item, so the linear
    # interpolation at the item's last frame does not lean on the next item's first.
    rad_values = F.interpolate(
        rad_values.transpose(1, 2), scale_factor=1 / sine.upsample_scale, mode="linear"
    ).transpose(1, 2)
    phase = torch.cumsum(rad_values, dim=1) * 2 * torch.pi
    phase = F.interpolate(
        phase.transpose(1, 2) * sine.upsample_scale, scale_factor=sine.upsample_scale, mode="linear"
    ).transpose(1, 2)
    sine_waves = torch.sin(phase) * sine.sine_amp
    uv = sine._f02uv(f0)
    noise_amp = uv * sine.noise_std + (1 - uv) * sine.sine_amp / 3
    # empty_like keeps sine_waves' (transposed) strides, as randn_like does: normal_ fills memory
    # in order, so the layout decides which sample gets which draw.
    noise = noise_amp * torch.empty_like(sine_waves).normal_(generator=rng)
    sine_waves = sine_waves * uv + noise
    har_source = source.l_tanh(source.l_linear(sine_waves)).transpose(1, 2).squeeze(1)
    # center=True reflect padding here sees only this item's samples.
    har_spec, har_phase = generator_module.stft.transform(har_source)
    return torch.cat([har_spec, har_phase], dim=1)


def _generator(
    gen: nn.Module,
    x: torch.Tensor,
    s: torch.Tensor,
    f0: torch.Tensor,
    span: _Span,
    rngs: Sequence[torch.Generator],
) -> list[torch.Tensor]:
    """``Generator.forward`` per item where it must be, batched where it can be; returns audio."""
    device = x.device
    hop = gen.stft.hop_length
    upsample_scale = gen.m_source.l_sin_gen.upsample_scale
    # Harmonic source per item, its STFT frames padded into one zero-filled batch.
    with torch.autocast(device_type=device.type, enabled=False):
        hars = [_harmonic_source(gen, f0[b : b + 1, :n].float(), rngs[b]) for b, n in enumerate(span.lengths)]
    har_span = _Span([h.shape[-1] for h in hars], device)
    assert har_span.lengths == [n * upsample_scale // hop + 1 for n in span.lengths]
    har = hars[0].new_zeros(len(hars), hars[0].shape[1], har_span.width)
    for b, h in enumerate(hars):
        har[b, :, : h.shape[-1]] = h

    for i in range(gen.num_upsamples):
        last = i == gen.num_upsamples - 1
        x = F.leaky_relu(x, negative_slope=0.1)
        x_source = gen.noise_convs[i](har)  # har padding is zero
        # Left-only reflection padding after the last upsampling: (1, 0) reflects index 1 into -1,
        # which is each item's own start, never its end.
        pad_left = gen.reflection_pad.padding[0] if last else 0
        assert gen.reflection_pad.padding[1] == 0
        out_span = _Span([_conv_t_len(gen.ups[i], n) + pad_left for n in span.lengths], device)
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
    n_bins = gen.post_n_fft // 2 + 1
    audio = []
    with torch.autocast(device_type=device.type, enabled=False):
        for b, n in enumerate(span.lengths):
            item = x[b : b + 1, :, :n].float()
            spec = torch.exp(item[:, :n_bins, :])
            phase = torch.sin(item[:, n_bins:, :])
            audio.append(gen.stft.inverse(spec, phase).reshape(-1))
    return audio


def _decoder(
    dec: nn.Module,
    asr: torch.Tensor,
    f0_curve: torch.Tensor,
    n_curve: torch.Tensor,
    s: torch.Tensor,
    frames: _Span,
    halves: _Span,
    rngs: Sequence[torch.Generator],
) -> list[torch.Tensor]:
    """``Decoder.forward`` with masking; ``frames`` is the alignment's axis, ``halves`` F0's."""
    f0 = dec.F0_conv(_zero_pad(f0_curve.unsqueeze(1), halves))
    n = dec.N_conv(_zero_pad(n_curve.unsqueeze(1), halves))
    _check_width(f0, frames, "F0_conv")
    x = torch.cat([asr, f0, n], dim=1)
    x = _adain_resblk1d(dec.encode, x, s, frames, frames)
    asr_res = dec.asr_res(asr)  # 1x1 conv on zero-padded asr
    span, res = frames, True
    for block in dec.decode:
        if res:
            x = torch.cat([x, asr_res, f0, n], dim=1)
        out_span = halves if block.upsample_type != "none" else span
        x = _adain_resblk1d(block, x, s, span, out_span)
        span = out_span
        if block.upsample_type != "none":
            res = False
    return _generator(dec.generator, x, s, f0_curve, span, rngs)


def _prosody(
    predictor: nn.Module, en: torch.Tensor, s: torch.Tensor, frames: _Span, halves: _Span
) -> tuple[torch.Tensor, torch.Tensor]:
    """``ProsodyPredictor.F0Ntrain`` with a packed shared LSTM and masked blocks."""
    x = _lstm(predictor.shared, en.transpose(-1, -2), frames).transpose(-1, -2)
    curves = []
    for blocks, proj in ((predictor.F0, predictor.F0_proj), (predictor.N, predictor.N_proj)):
        y, span = x, frames
        for block in blocks:
            out_span = halves if block.upsample_type != "none" else span
            y = _adain_resblk1d(block, y, s, span, out_span)
            span = out_span
        curves.append(proj(y).squeeze(1))  # 1x1 conv: padding stays local
    return curves[0], curves[1]


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


def _pad_tokens(token_ids: Sequence[torch.Tensor], device: torch.device) -> _Tokens:
    span = _Span([int(ids.shape[-1]) for ids in token_ids], device)
    input_ids = torch.zeros(len(token_ids), span.width, dtype=torch.long, device=device)
    text_mask = torch.ones(len(token_ids), span.width, dtype=torch.bool, device=device)
    for b, (ids, n) in enumerate(zip(token_ids, span.lengths)):
        input_ids[b, :n] = ids.to(device)
        text_mask[b, :n] = False
    return _Tokens(span, input_ids, text_mask, torch.tensor(span.lengths, dtype=torch.long))


def _alignment_index(durations: Sequence[torch.Tensor], frames: _Span, device: torch.device) -> torch.Tensor:
    """Frame -> token index per item, ``(B, frames.width)``; padding frames point at token 0."""
    index = torch.zeros(len(durations), frames.width, dtype=torch.long, device=device)
    for b, dur in enumerate(durations):
        index[b, : frames.lengths[b]] = torch.repeat_interleave(torch.arange(len(dur), device=device), dur)
    return index


def _durations_and_prosody(
    model: nn.Module,
    token_ids: Sequence[torch.Tensor],
    s_pred: torch.Tensor,
    speeds: Sequence[float],
    edges: Sequence[EdgeSpan | None] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Durations, F0 and N curves of a (sub-)batch, unpadded: ``(T_b,)``, ``(2 F_b,)``, ``(2 F_b,)``."""
    device = s_pred.device
    tokens = _pad_tokens(token_ids, device)
    # ALBERT, DurationEncoder and TextEncoder are length-correct given the mask and true lengths;
    # the duration LSTM is not, so it runs packed.
    bert_dur = model.bert(tokens.input_ids, attention_mask=(~tokens.text_mask).int())
    d_en = model.bert_encoder(bert_dur).transpose(-1, -2)
    d = model.predictor.text_encoder(d_en, s_pred, tokens.lengths_cpu, tokens.text_mask)
    x = _lstm(model.predictor.lstm, d, tokens.span)
    logits = model.predictor.duration_proj(x)
    durations = []
    for b, n in enumerate(tokens.span.lengths):
        # Per item with a Python float, as kokoro divides: keeps batch 1 bit-identical.
        raw = torch.sigmoid(logits[b, :n]).sum(dim=-1) / float(speeds[b])
        # Edge silence is clamped here, before the alignment: nothing downstream generates it.
        durations.append(clamp_edges(torch.round(raw).clamp(min=1).long(), edges[b] if edges else None))
    frames = _Span([int(dur.sum()) for dur in durations], device)
    en = _expand(d.transpose(-1, -2), _alignment_index(durations, frames, device), frames)
    # F0/N come out at twice the frame rate (the upsampling AdainResBlk1d).
    halves = _Span([_conv_t_len(model.predictor.F0[1].pool, n) for n in frames.lengths], device)
    f0, n_curve = _prosody(model.predictor, en, s_pred, frames, halves)
    _check_width(f0, halves, "F0 curve")
    return (
        durations,
        [f0[b, :h] for b, h in enumerate(halves.lengths)],
        [n_curve[b, :h] for b, h in enumerate(halves.lengths)],
    )


def _pad_curves(curves: Sequence[torch.Tensor], span: _Span) -> torch.Tensor:
    out = curves[0].new_zeros(len(curves), span.width)
    for b, curve in enumerate(curves):
        out[b, : curve.shape[0]] = curve
    return out


@torch.inference_mode()
def batched_forward(
    model: nn.Module,
    token_ids: Sequence[torch.Tensor],
    ref_s: torch.Tensor,
    speeds: Sequence[float],
    generators: Sequence[torch.Generator],
    *,
    batched_prosody: bool = False,
    edges: Sequence[EdgeSpan | None] | None = None,
) -> list[BatchedOutput]:
    """Synthesize a batch; item ``b``'s output depends only on item ``b``'s inputs.

    ``model`` is a ``kokoro.KModel`` in eval mode. ``token_ids[b]`` is a 1-D LongTensor that
    already carries the boundary tokens (``[0, *ids, 0]``, at most ``model.context_length`` long),
    ``ref_s`` is ``(B, 2 * style_dim)`` (decoder half first, prosody half second, as voice-pack
    rows are), ``speeds[b] > 0`` divides item b's durations, and ``generators[b]`` (on the model's
    device) supplies item b's source noise; the caller seeds it. Returns one ``BatchedOutput`` per
    item, in input order: audio of ``durations.sum() * 600`` samples on the model's device and
    durations on CPU. Raises ``ValueError`` on malformed input.

    ``batched_prosody=False`` (the default) runs ALBERT through the prosody predictor one item at
    a time, as at batch 1, so durations and F0 are bit-identical to a solo run and voiced audio
    does not drift; ``True`` batches them too, with masks (see the module docstring).
    ``edges[b]`` clamps item b's edge tokens to one frame (``gateway.engines.edges``).
    """
    num_items = len(token_ids)
    if not (num_items == len(speeds) == len(generators) == ref_s.shape[0]) or num_items == 0:
        raise ValueError("token_ids, ref_s, speeds and generators must have the same non-zero length")
    if model.training:
        raise ValueError("model must be in eval mode (dropout would randomise the output)")
    if any(not speed > 0 for speed in speeds):
        raise ValueError(f"speeds must be positive, got {list(speeds)}")
    device = model.bert.device
    for rng in generators:
        if rng.device.type != device.type:
            raise ValueError(f"generator on {rng.device} for a model on {device}")
    lengths = [int(ids.shape[-1]) for ids in token_ids]
    if min(lengths) < 2 or max(lengths) > model.context_length:
        raise ValueError(f"token sequences must hold 2..{model.context_length} tokens, got {lengths}")

    style_dim = model.predictor.text_encoder.sty_dim
    ref_s = ref_s.to(device)
    s_dec, s_pred = ref_s[:, :style_dim], ref_s[:, style_dim:]
    if batched_prosody:
        durations, f0_curves, n_curves = _durations_and_prosody(model, token_ids, s_pred, speeds, edges)
    else:
        durations, f0_curves, n_curves = [], [], []
        for b in range(num_items):
            one = slice(b, b + 1)
            dur, f0, n_curve = _durations_and_prosody(
                model, token_ids[one], s_pred[one], speeds[one], edges[one] if edges else None
            )
            durations += dur
            f0_curves += f0
            n_curves += n_curve

    frames = _Span([int(dur.sum()) for dur in durations], device)
    halves = _Span([curve.shape[0] for curve in f0_curves], device)
    tokens = _pad_tokens(token_ids, device)
    t_en = model.text_encoder(tokens.input_ids, tokens.lengths_cpu, tokens.text_mask)
    asr = _expand(t_en, _alignment_index(durations, frames, device), frames)
    f0_pred, n_pred = _pad_curves(f0_curves, halves), _pad_curves(n_curves, halves)
    audio = _decoder(model.decoder, asr, f0_pred, n_pred, s_dec, frames, halves, generators)

    outputs = []
    samples_per_half = model.decoder.generator.m_source.l_sin_gen.upsample_scale
    for b in range(num_items):
        expected = halves.lengths[b] * samples_per_half  # = sum(durations) * 600 for Kokoro
        # torch.istft returns exactly (frames - 1) * hop samples; the cut guards other STFTs.
        if audio[b].shape[0] < expected:
            raise AssertionError(f"item {b}: {audio[b].shape[0]} samples < {expected}")
        outputs.append(BatchedOutput(audio=audio[b][:expected], durations=durations[b].cpu()))
    return outputs
