"""Count the aten operations a piece of torch code dispatches: a proxy for GPU kernel launches.

On a GPU each aten op is (at least) one kernel launch of ~5-10 us of CPU time, so a forward pass
whose op count grows with the number of items in a batch is launch-bound however wide the device.
``count_aten_ops`` counts at the dispatcher, below autograd and above the backends, so the count is
the same on CPU and CUDA for the same code path (views and in-place ops included; ops that run
inside a fused kernel, e.g. an LSTM's cell, count once).

    with count_aten_ops() as counter:
        engine.synthesize(items)
    print(counter.total, counter.by_op.most_common(5))
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["OpCounter", "count_aten_ops"]


class OpCounter(TorchDispatchMode):
    """A dispatch mode that counts every aten op it sees by name (``aten.add.Tensor``, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_op: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.by_op[str(func)] += 1
        return func(*args, **(kwargs or {}))


def count_aten_ops() -> OpCounter:
    """A fresh counter, to be used as a context manager around the code to count."""
    return OpCounter()
