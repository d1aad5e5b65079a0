"""Kokoro's ALBERT -> durations -> F0/N on a padded batch, bit for bit as each item alone.

F0 drives the harmonic source, whose phase integrates it over seconds and whose STFT phase
(``atan2``) jumps by 2 pi where a bin crosses the negative real axis: an F0 that differs from a solo
run's by one float32 ulp makes audibly different audio (measured ~2e-3 relative with the real
weights, rare 1e-2 items). So this pass is not "close to" a solo run: it computes the same floats.
Measured on this CPU (kokoro 0.9.4, torch 2.13, MKL/oneDNN, 1-8 threads), these kernels give an
item's rows results that depend on the shape of the whole batch, and are replaced here:

* ALBERT's attention: softmax and ``attn @ V`` reduce over the padded key axis (``sdpa``'s blocks
  depend on its length). Here: softmax and ``attn @ V`` in float64 with masked keys, then rounded
  to float32: two float64 results that differ by ~1e-16 round to the same float32 unless they
  straddle a rounding boundary (probability ~1e-8 per value). ``q @ k`` reduces over the head's
  channels, a fixed length: float32.
* Matmuls with few rows: MKL's sgemm rounds a row differently when the matrix has 1-3 rows, and
  with several threads when its row count is 5-7 or 9-11. Every matmul here has ``B * width`` rows
  with the width padded to ``invariant_width`` (a multiple of 4, at least 12), which measured
  row-invariant; the style projections (``B`` rows) run in float64.
* Convolutions: oneDNN picks its algorithm by shape (widths up to ~40, and some larger ones, round
  differently in a batch). Here: ``im2col`` and one matmul with the rule above; the one-channel
  projections to F0 and N (a matrix-vector product, row-variant for many more row counts) in float64.
* LSTMs: packed sequences run a step's gates with as many rows as items are still running (the
  rule above breaks), and an unpacked backward direction starts in the padding. Here: oneDNN's
  unpacked forward kernel (measured row-invariant for any batch size and width) for the forward
  direction, and for the backward one on each item's own reversal (one gather), so trailing
  padding never reaches a valid step.
* Instance norms: statistics are float64 sums over each item's own frames, rounded to float32.

Everything else (embeddings, layer norms over channels, element-wise ops, gathers, the depthwise
transposed conv) computes each element from that element's inputs alone. The result is exactly
the same for an item alone or in any company; against kokoro's own float32 modules it differs by
float rounding (~1e-6 relative), and durations are equal except where a raw duration sits within
that rounding of .5. One pass for the whole batch, in a number of tensor ops independent of its size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.weight_norm import WeightNorm

__all__ = ["invariant_width", "predict_durations", "f0_and_n"]

#: Matmul row counts (``B * width``) this far apart and at least this large measured row-invariant.
_ROW_MULTIPLE = 4
_MIN_WIDTH = 12
#: Matmuls with fewer output columns than this run as matrix-vector products (float64 here).
_MIN_GEMM_OUTPUTS = 8


def invariant_width(width: int) -> int:
    """The padded width at which every matmul of this pass is row-invariant (see the module docstring)."""
    width = max(width, _MIN_WIDTH)
    return -(-width // _ROW_MULTIPLE) * _ROW_MULTIPLE


class _Axis:
    """Item lengths along a padded time axis of ``invariant_width(max(lengths))`` positions."""

    __slots__ = ("lengths", "width", "lengths_t", "pad", "count")

    def __init__(self, lengths: Sequence[int], device: torch.device, width: int | None = None) -> None:
        self.lengths = [int(n) for n in lengths]
        self.width = invariant_width(max(self.lengths)) if width is None else width
        self.lengths_t = torch.tensor(self.lengths, device=device)
        positions = torch.arange(self.width, device=device)
        self.pad = (positions[None, :] >= self.lengths_t[:, None]).unsqueeze(1)  # (B, 1, W), True on padding
        self.count = self.lengths_t.to(torch.float64).view(-1, 1, 1)

    def zero(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, W) with its padding set to 0 (masked_fill: padding may hold inf)."""
        return x.masked_fill(self.pad, 0.0)

    def reversal(self) -> torch.Tensor:
        """(B, W) index: each item's own positions reversed, padding in place (an involution)."""
        t = torch.arange(self.width, device=self.lengths_t.device)[None, :]
        last = self.lengths_t[:, None] - 1
        return torch.where(t <= last, last - t, t)


def _widen(x: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad the last axis of ``x`` to ``width`` (always one op, so op counts do not depend on it)."""
    return F.pad(x, (0, width - x.shape[-1]))


def _style_linear(fc: nn.Linear, s: torch.Tensor) -> torch.Tensor:
    # B rows: too few for a row-invariant sgemm, and cheap in float64.
    return F.linear(s.double(), fc.weight.double(), fc.bias.double()).float()


def _conv_weight(conv: nn.Module) -> torch.Tensor:
    # Kokoro wraps its convs in torch.nn.utils.weight_norm, whose ``weight`` attribute is only
    # refreshed by a forward call (it is stale right after a state-dict load): compute it as
    # that forward would.
    for hook in conv._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm):
            return hook.compute_weight(conv)
    return conv.weight


def _conv1d(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a stride-1, ungrouped ``Conv1d`` as ``im2col`` and one matmul of ``B * W`` rows."""
    (k,), (p,), (s,), (d,) = conv.kernel_size, conv.padding, conv.stride, conv.dilation
    assert s == 1 and d == 1 and conv.groups == 1 and 2 * p == k - 1, "a 'same' Conv1d"
    batch, channels, width = x.shape
    weight = _conv_weight(conv)
    if k == 1:
        cols = x.transpose(1, 2).reshape(batch * width, channels)
    else:
        cols = F.pad(x, (p, p)).unfold(2, k, 1).permute(0, 2, 1, 3).reshape(batch * width, channels * k)
    weight = weight.reshape(weight.shape[0], -1)
    if weight.shape[0] < _MIN_GEMM_OUTPUTS:
        # A matrix-vector product (F0_proj, N_proj: one output channel) rounds by row count in
        # another way again: float64, rounded back.
        out = F.linear(cols.double(), weight.double(), None if conv.bias is None else conv.bias.double()).float()
    else:
        out = F.linear(cols, weight, conv.bias)
    return out.view(batch, width, -1).transpose(1, 2)


def _lstm(lstm: nn.LSTM, x: torch.Tensor, axis: _Axis) -> torch.Tensor:
    """A batch-first bidirectional one-layer LSTM on each item's own steps: ``(B, W, 2H)``, padding 0."""
    assert lstm.bidirectional and lstm.batch_first and lstm.num_layers == 1 and lstm.bias and lstm.proj_size == 0
    batch = x.shape[0]
    h0 = x.new_zeros(1, batch, lstm.hidden_size)
    outputs = []
    for suffix in ("", "_reverse"):
        weights = [getattr(lstm, f"{name}_l0{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        if suffix:
            # The backward direction runs forward over each item's own reversal, so it starts at
            # the item's last step, not in the padding.
            index = axis.reversal().unsqueeze(-1)
            seq = torch.gather(x, 1, index.expand(-1, -1, x.shape[-1]))
        else:
            seq = x
        out = torch.lstm(seq, (h0, h0), weights, True, 1, 0.0, False, False, True)[0]
        if suffix:
            out = torch.gather(out, 1, index.expand(-1, -1, out.shape[-1]))
        outputs.append(out)
    return torch.cat(outputs, dim=-1).masked_fill(axis.pad.transpose(1, 2), 0.0)


def _adain(layer: nn.Module, x: torch.Tensor, s: torch.Tensor, axis: _Axis) -> torch.Tensor:
    """``AdaIN1d`` over each item's own frames, statistics in float64; padding comes out zero."""
    gamma, beta = torch.chunk(_style_linear(layer.fc, s).unsqueeze(-1), chunks=2, dim=1)
    norm: nn.InstanceNorm1d = layer.norm
    assert not norm.track_running_stats, "AdaIN1d with running statistics is not supported"
    wide = x.double()
    mean = axis.zero(wide).sum(dim=-1, keepdim=True) / axis.count
    var = axis.zero(wide - mean).square().sum(dim=-1, keepdim=True) / axis.count  # biased, as InstanceNorm's
    scale = (1 + gamma) * torch.rsqrt(var + norm.eps).float()
    shift = beta
    if norm.affine:
        scale = scale * norm.weight[:, None]
        shift = shift + (1 + gamma) * norm.bias[:, None]
    return axis.zero(torch.addcmul(shift, x - mean.float(), scale))


def _resblk(block: nn.Module, x: torch.Tensor, s: torch.Tensor, axis_in: _Axis, axis_out: _Axis) -> torch.Tensor:
    """``AdainResBlk1d.forward`` (kokoro 0.9.4) with the invariant kernels; padding in and out zero."""
    r = block.actv(_adain(block.norm1, x, s, axis_in))  # LeakyReLU(0) == 0
    if block.upsample_type != "none":
        # Depthwise transposed conv: each output from its own channel's three inputs (measured
        # invariant); it writes its bias and one position past the end into padding.
        r = axis_out.zero(block.pool(r)[..., : axis_out.width])
    r = _conv1d(block.conv1, r)
    r = block.actv(_adain(block.norm2, r, s, axis_out))
    r = _conv1d(block.conv2, r)
    shortcut = block.upsample(x)[..., : axis_out.width]
    if block.learned_sc:
        shortcut = _conv1d(block.conv1x1, shortcut)
    return axis_out.zero((r + shortcut) * torch.rsqrt(torch.tensor(2.0)))


def _albert(bert: nn.Module, input_ids: torch.Tensor, axis: _Axis) -> torch.Tensor:
    """``CustomAlbert(input_ids, attention_mask)`` (transformers' ALBERT) with a float64 attention core."""
    config = bert.config
    assert config.chunk_size_feed_forward == 0
    hidden = bert.encoder.embedding_hidden_mapping_in(bert.embeddings(input_ids))
    masked_keys = axis.pad.unsqueeze(1)  # (B, 1, 1, W)
    groups = bert.encoder.albert_layer_groups
    for i in range(config.num_hidden_layers):
        group = groups[int(i / (config.num_hidden_layers / config.num_hidden_groups))]
        for layer in group.albert_layers:
            att = layer.attention
            shape = (*hidden.shape[:-1], -1, att.attention_head_size)
            q, k, v = (proj(hidden).view(shape).transpose(1, 2) for proj in (att.query, att.key, att.value))
            # q @ k reduces over the head's channels (a fixed length): float32. Softmax and
            # weights @ v reduce over the padded key axis: float64.
            scores = (torch.matmul(q, k.transpose(2, 3)) * att.scaling).double()
            weights = torch.softmax(scores.masked_fill(masked_keys, float("-inf")), dim=-1)
            context = torch.matmul(weights, v.double()).float().transpose(1, 2).reshape(hidden.shape)
            attended = att.LayerNorm(hidden + att.dense(context))
            hidden = layer.full_layer_layer_norm(layer.ffn_output(layer.activation(layer.ffn(attended))) + attended)
    return hidden


def _ada_layer_norm(layer: nn.Module, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """kokoro's ``AdaLayerNorm`` on ``x`` (B, W, C): a layer norm over channels, styled."""
    gamma, beta = torch.chunk(_style_linear(layer.fc, s).unsqueeze(1), chunks=2, dim=-1)
    return (1 + gamma) * F.layer_norm(x, (layer.channels,), eps=layer.eps) + beta


def _duration_encoder(encoder: nn.Module, x: torch.Tensor, s: torch.Tensor, axis: _Axis) -> torch.Tensor:
    """kokoro's ``DurationEncoder.forward`` on ``x`` (B, C, W): ``(B, W, C + style)``, padding zero."""
    style = s[:, :, None].expand(-1, -1, axis.width)
    x = axis.zero(torch.cat([x, style], dim=1))
    for block in encoder.lstms:
        if isinstance(block, nn.LSTM):
            x = _lstm(block, x.transpose(1, 2), axis).transpose(1, 2)
        else:  # AdaLayerNorm
            x = _ada_layer_norm(block, x.transpose(1, 2), s).transpose(1, 2)
            x = axis.zero(torch.cat([x, style], dim=1))
    return x.transpose(1, 2)


def predict_durations(
    model: nn.Module, input_ids: torch.Tensor, lengths: Sequence[int], s_pred: torch.Tensor, speeds: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames per token ``(B, T)`` (int64, 0 on padding) and the duration encoder's output ``(B, T, C)``.

    ``input_ids`` is ``(B, T)``, zero-padded past ``lengths[b]``; ``s_pred`` the prosody style rows.
    """
    width = input_ids.shape[1]
    axis = _Axis(lengths, input_ids.device)
    ids = _widen(input_ids, axis.width)
    bert_dur = _albert(model.bert, ids, axis)
    d_en = model.bert_encoder(bert_dur).transpose(-1, -2)
    d = _duration_encoder(model.predictor.text_encoder, d_en, s_pred, axis)
    x = _lstm(model.predictor.lstm, d, axis)
    logits = model.predictor.duration_proj(x)
    # kokoro divides by the Python float speed; a float32 tensor divides to the same values.
    raw = torch.sigmoid(logits).sum(dim=-1) / speeds[:, None]
    durations = torch.round(raw).clamp(min=1).long().masked_fill(axis.pad.squeeze(1), 0)
    return durations[:, :width], d[:, :width]


def f0_and_n(
    predictor: nn.Module, en: torch.Tensor, s_pred: torch.Tensor, frames: Sequence[int], halves: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``ProsodyPredictor.F0Ntrain`` on ``en`` ``(B, C, max(frames))``: F0 and N ``(B, max(halves))``, padding 0."""
    frame_axis = _Axis(frames, en.device)
    # The upsampling block doubles the axis: its padded width too, so both stay invariant widths.
    half_axis = _Axis(halves, en.device, width=2 * frame_axis.width)
    x = _lstm(predictor.shared, _widen(en, frame_axis.width).transpose(1, 2), frame_axis).transpose(1, 2)
    curves = []
    for blocks, proj in ((predictor.F0, predictor.F0_proj), (predictor.N, predictor.N_proj)):
        y, axis = x, frame_axis
        for block in blocks:
            out_axis = half_axis if block.upsample_type != "none" else axis
            y = _resblk(block, y, s_pred, axis, out_axis)
            axis = out_axis
        curves.append(_conv1d(proj, y).squeeze(1)[:, : max(halves)])
    return curves[0], curves[1]
