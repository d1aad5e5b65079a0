"""Per-item noise for the harmonic source, drawn for a whole batch at once.

Kokoro's ``SineGen`` adds Gaussian noise to its sines, drawn from the global RNG; a batched
forward needs each item's noise to depend on that item alone (its seed), never on the batch's
company or order. Two sources give that:

* ``HashNoise`` (the engine's): a counter-based generator. Draw ``(h, t)`` of an item is a
  function of the item's seed and of ``(h, t)`` only (splitmix64 of the seed's key plus the
  counter, Box-Muller on two 24-bit halves), computed for the whole padded batch in a fixed number
  of tensor ops whatever the number of items, on any device, the same on CPU and CUDA.
* ``GeneratorNoise``: one ``torch.Generator`` per item, drawn exactly as ``SineGen`` draws from the
  global RNG (its initial phases, then the additive noise, in the same memory order). A batch of
  one then equals ``KModel.forward_with_tokens`` after ``torch.manual_seed(seed)``: what the tests
  compare. It loops over the items (a few ops each), so it is not the engine's default.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch

__all__ = ["SourceNoise", "HashNoise", "GeneratorNoise"]

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    # torch has no uint64 arithmetic: the same bits as a signed int64 (multiplication wraps alike).
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


class SourceNoise(abc.ABC):
    """Standard normal draws for each item of a batch, shaped like the harmonic source."""

    #: True: one draw per harmonic and sample, as SineGen draws (the source merges them with its
    #: linear layer). False: the source asks for one draw per sample and scales it (same
    #: distribution of the merged noise, a ninth of the work).
    per_harmonic: bool = True

    @abc.abstractmethod
    def __len__(self) -> int:
        """The number of items this source draws for."""

    @abc.abstractmethod
    def standard_normal(self, lengths: Sequence[int], width: int, dim: int, device: torch.device) -> torch.Tensor:
        """``(B, dim, width)`` float32: row ``b``'s first ``lengths[b]`` columns are item b's draws.

        Columns past an item's length may hold anything; the caller masks them.
        """


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    # Logical shift: torch's >> on int64 is arithmetic (sign-extending).
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser, elementwise on int64 (wrapping multiplication)."""
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


class HashNoise(SourceNoise):
    """Counter-based Gaussian noise: draw ``(h, t)`` of item b is ``f(seeds[b], h, t)``."""

    per_harmonic = False

    def __init__(self, seeds: Sequence[int], *, seeds_t: torch.Tensor | None = None) -> None:
        self.seeds = [_signed(int(seed)) for seed in seeds]
        #: The seeds as an int64 device tensor, when the caller keeps them there (a CUDA graph's
        #: static input: no host-to-device copy inside the graph); else made per call.
        self.seeds_t = seeds_t

    def __len__(self) -> int:
        return len(self.seeds)

    def standard_normal(self, lengths: Sequence[int], width: int, dim: int, device: torch.device) -> torch.Tensor:
        if len(lengths) != len(self.seeds):
            raise ValueError(f"{len(lengths)} items but {len(self.seeds)} seeds")
        # One key per item; the counter (harmonic in the high bits, sample in the low 40) does not
        # depend on the padded width, so an item's draws do not depend on its company.
        seeds = torch.tensor(self.seeds, dtype=torch.int64, device=device) if self.seeds_t is None else self.seeds_t
        keys = _splitmix64(seeds + _GOLDEN).view(-1, 1, 1)
        counter = (torch.arange(dim, dtype=torch.int64, device=device).view(1, -1, 1) << 40) + torch.arange(
            width, dtype=torch.int64, device=device
        ).view(1, 1, -1)
        bits = _splitmix64(keys + counter * _GOLDEN)
        scale = 1.0 / (1 << 24)
        # Two independent 24-bit uniforms in (0, 1) from one 64-bit hash; Box-Muller.
        u1 = (_shift_right(bits, 40).to(torch.float32) + 0.5) * scale
        u2 = ((_shift_right(bits, 16) & 0xFFFFFF).to(torch.float32) + 0.5) * scale
        return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)


class GeneratorNoise(SourceNoise):
    """SineGen's own draws, from one ``torch.Generator`` per item (one loop step per item)."""

    def __init__(self, generators: Sequence[torch.Generator]) -> None:
        self.generators = list(generators)

    def __len__(self) -> int:
        return len(self.generators)

    def standard_normal(self, lengths: Sequence[int], width: int, dim: int, device: torch.device) -> torch.Tensor:
        if len(lengths) != len(self.generators):
            raise ValueError(f"{len(lengths)} items but {len(self.generators)} generators")
        out = torch.zeros(len(lengths), dim, width, device=device)
        for b, (n, rng) in enumerate(zip(lengths, self.generators)):
            if rng.device.type != device.type:
                raise ValueError(f"generator on {rng.device} for a model on {device}")
            # SineGen's initial phases: they cannot change the output (its frame-rate
            # interpolation never reads the first sample), but drawing them keeps the stream aligned.
            torch.rand(1, dim, device=device, generator=rng)
            # randn_like of SineGen's (1, n, dim) sines, whose memory is harmonic-major: the same
            # strides here, as normal_ fills memory in order.
            draw = torch.empty(1, dim, n, device=device).transpose(1, 2).normal_(generator=rng)
            out[b, :, :n] = draw[0].transpose(0, 1)
        return out
