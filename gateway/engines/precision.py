"""The decoder's convolutions in bfloat16 on CPUs that compute bfloat16 natively.

Where the time goes on a CPU (profiled on the 2-core AMD EPYC dev VM, offline weights): ~75 % of a
piece is the decoder's convolutions, and they already run at the CPU's float32 peak. A CPU with
AVX512-BF16 or AMX does twice the multiply-adds per cycle in bfloat16: one generator conv
(128 x 128 x 11 over 8,161 steps) took 17.2 ms in float32 and 7.6 ms in bfloat16 there. So with
``engine.dtype = "bfloat16"`` on such a CPU the decoder's convolutions (weights and inputs) run in
bfloat16 and give float32 back: everything else stays float32 - the text side (ALBERT, durations,
F0 and energy, so durations and timings are the float32 ones exactly), the instance norms, Snake,
the harmonic source, the small convolutions at the signal's ends (``F0_conv``, ``N_conv``,
``noise_convs``, ``conv_post``, which feeds the iSTFT's phase) and the iSTFT.

``"auto"`` (the default) picks bfloat16 on a CPU with native bfloat16 and float32 everywhere else:
on a CPU without it bfloat16 is emulated and slower (measured 47x slower under autocast on an AVX2
CPU), and on CUDA the GPU path has not been measured in bfloat16 yet (``KokoroEngine._autocast``).
What it costs in audio and what it buys in time: ``voxgate bench engine --dtype ...`` and
``voxgate bench quality --set engine.dtype=...`` (benchmarks/README.md, "Fourth round").
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["Bf16Conv1d", "Bf16ConvTranspose1d", "cpu_has_native_bf16", "decoder_convs_to_bf16", "resolve_dtype"]

#: Convolutions with fewer channels than this on either side stay float32: they sit at the signal's
#: ends (the F0 / energy inputs, the harmonic source in, the iSTFT's magnitude and phase out),
#: where the precision matters most and the compute least.
MIN_CHANNELS = 64


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), as torch sees it."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_dtype(dtype: str, device: torch.device, *, native_bf16: bool | None = None) -> str:
    """The dtype ``engine.dtype`` means on ``device``: "auto" is bfloat16 on a CPU with native
    bfloat16 and float32 elsewhere; anything else is returned as given."""
    if dtype != "auto":
        return dtype
    if device.type != "cpu":
        return "float32"
    return "bfloat16" if (cpu_has_native_bf16() if native_bf16 is None else native_bf16) else "float32"


class Bf16Conv1d(nn.Conv1d):
    """A ``Conv1d`` whose weights are bfloat16: float32 in, bfloat16 multiply-adds, float32 out."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return super()._conv_forward(input.to(weight.dtype), weight, bias).float()


class Bf16ConvTranspose1d(nn.ConvTranspose1d):
    """A ``ConvTranspose1d`` whose weights are bfloat16: float32 in, float32 out."""

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        return super().forward(input.to(self.weight.dtype), output_size).float()


def _large_convs(module: nn.Module, min_channels: int) -> Iterator[nn.Conv1d | nn.ConvTranspose1d]:
    for child in module.modules():
        if type(child) in (nn.Conv1d, nn.ConvTranspose1d) and min(child.in_channels, child.out_channels) >= min_channels:
            yield child


def decoder_convs_to_bf16(decoder: nn.Module, *, min_channels: int = MIN_CHANNELS) -> int:
    """Turn the decoder's large convolutions into their bfloat16 kind, in place; returns how many.

    The module keeps its place, name, hyper-parameters and weights (rounded to bfloat16); only its
    class changes, as ``torch.nn.utils.parametrize`` does for the modules it parametrizes, so the
    batched decoder (``gateway.engines.batched``) calls and measures it as before. Call it after the
    weight norms are baked: the weight it rounds must be the final one.
    """
    converted = 0
    for conv in list(_large_convs(decoder, min_channels)):
        conv.weight = nn.Parameter(conv.weight.detach().to(torch.bfloat16), requires_grad=False)
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.bias.detach().to(torch.bfloat16), requires_grad=False)
        conv.__class__ = Bf16Conv1d if isinstance(conv, nn.Conv1d) else Bf16ConvTranspose1d
        converted += 1
    return converted
