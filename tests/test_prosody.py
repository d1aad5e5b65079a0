"""The batch-invariant kernels of ``gateway.engines.prosody``: kokoro's layers, same floats in any company.

Each kernel is checked twice: against the module it replaces (float rounding apart: it computes
the same function) and against itself alone (bit for bit: an item's rows do not depend on the
batch's size, order or padding). ``test_batched_forward.py`` checks the whole pass.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from gateway.engines import prosody as P
from gateway.engines.tiny import make_tiny_kmodel
from tests.utils import torch_threads

LENGTHS = (5, 14, 33)
CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def two_threads():
    # The engine's default on this 2-core machine; MKL's row rounding depends on the thread count.
    with torch_threads(2):
        yield


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return make_tiny_kmodel(0, voiced=True)


def padded(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    """Stack (C, n) rows zero-padded to ``width`` along the last axis."""
    return torch.stack([nn.functional.pad(r, (0, width - r.shape[-1])) for r in rows])


def test_invariant_widths_are_multiples_of_four_from_twelve():
    assert [P.invariant_width(n) for n in (1, 11, 12, 13, 16, 17, 510)] == [12, 12, 12, 16, 16, 20, 512]


def test_the_lstm_runs_each_item_on_its_own_steps_in_any_company():
    g = torch.Generator().manual_seed(0)
    lstm = nn.LSTM(24, 8, batch_first=True, bidirectional=True)
    rows = [torch.randn(24, n, generator=g) for n in LENGTHS]
    axis = P._Axis(LENGTHS, CPU)
    with torch.inference_mode():
        out = P._lstm(lstm, padded(rows, axis.width).transpose(1, 2), axis)
        packed = pack_padded_sequence(padded(rows, axis.width).transpose(1, 2), torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False)
        reference, _ = pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=axis.width)
        assert torch.allclose(out, reference, atol=1e-6)
        assert not out[0, LENGTHS[0] :].any()  # padding comes out zero
        for b, row in enumerate(rows):
            alone_axis = P._Axis([LENGTHS[b]], CPU)
            alone = P._lstm(lstm, padded([row], alone_axis.width).transpose(1, 2), alone_axis)
            assert torch.equal(out[b, : LENGTHS[b]], alone[0, : LENGTHS[b]])


def test_convolutions_as_one_matmul_equal_kokoros_weight_normed_convs_in_any_company(model):
    block = model.predictor.F0[1]
    conv = nn.utils.weight_norm(nn.Conv1d(block.conv1.in_channels, 12, 3, padding=1))
    # weight_norm's ``weight`` is refreshed by forward only: after a load it is stale until then.
    conv.load_state_dict({k: v * 1.5 for k, v in conv.state_dict().items()})
    g = torch.Generator().manual_seed(1)
    rows = [torch.randn(conv.in_channels, n, generator=g) for n in LENGTHS]
    width = P.invariant_width(max(LENGTHS))
    with torch.inference_mode():
        ours = P._conv1d(conv, padded(rows, width))
        theirs = conv(padded(rows, width))
        assert torch.allclose(ours, theirs, atol=1e-5)
        for b, row in enumerate(rows):
            alone = P._conv1d(conv, padded([row], P.invariant_width(LENGTHS[b])))
            n = LENGTHS[b] - 1  # the last position reads the next one: padding in both
            assert torch.equal(ours[b, :, :n], alone[0, :, :n])
        # One output channel (F0_proj, N_proj): the float64 path.
        proj = model.predictor.F0_proj
        assert torch.allclose(P._conv1d(proj, padded(rows[:1], width)[:, : proj.in_channels]), proj(padded(rows[:1], width)[:, : proj.in_channels]), atol=1e-5)


def test_albert_with_its_float64_attention_core_equals_transformers_and_ignores_its_company(model):
    g = torch.Generator().manual_seed(2)
    ids = [torch.randint(1, 178, (n,), generator=g) for n in LENGTHS]
    axis = P._Axis(LENGTHS, CPU)
    batch = torch.stack([nn.functional.pad(t, (0, axis.width - len(t))) for t in ids])
    with torch.inference_mode():
        ours = P._albert(model.bert, batch, axis)
        theirs = model.bert(batch, attention_mask=(~axis.pad.squeeze(1)).int())
        for b, n in enumerate(LENGTHS):
            assert torch.allclose(ours[b, :n], theirs[b, :n], atol=1e-5)
            alone_axis = P._Axis([n], CPU)
            alone = P._albert(model.bert, nn.functional.pad(ids[b], (0, alone_axis.width - n))[None], alone_axis)
            assert torch.equal(ours[b, :n], alone[0, :n])
