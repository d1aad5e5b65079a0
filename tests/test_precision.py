"""bfloat16 decoder convolutions on CPU (``gateway.engines.precision``): what changes and what not.

The tiny model's decoder is too narrow for the default channel floor, so these tests convert its
convolutions with a lower one; the real weights are checked in ``test_real_model.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gateway.config import EngineConfig
from gateway.engines import create_engine
from gateway.engines.base import SynthesisItem
from gateway.engines.kokoro import KokoroEngine
from gateway.engines.precision import (
    Bf16Conv1d,
    Bf16ConvTranspose1d,
    decoder_convs_to_bf16,
    resolve_dtype,
)

CPU = torch.device("cpu")
ITEMS = [
    SynthesisItem("ðə kwˈɪk bɹˈWn fˈɑks.", "jf_alpha"),
    SynthesisItem("hˈɛlO wˈɜɹld, hˌW ˈɑɹ ju?", "jf_alpha"),
]


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    return float(20 * np.log10(np.linalg.norm(reference) / np.linalg.norm(reference - other)))


def test_auto_means_bfloat16_only_on_a_cpu_that_computes_it_natively() -> None:
    assert resolve_dtype("auto", CPU, native_bf16=True) == "bfloat16"
    assert resolve_dtype("auto", CPU, native_bf16=False) == "float32"
    assert resolve_dtype("auto", torch.device("cuda"), native_bf16=True) == "float32"
    for explicit in ("float32", "float16", "bfloat16"):
        assert resolve_dtype(explicit, CPU, native_bf16=False) == explicit


def test_only_the_decoders_wide_convolutions_change_kind_and_keep_their_geometry() -> None:
    engine = KokoroEngine.tiny(device="cpu")
    decoder = engine.model.decoder
    before = {name: (type(m), m.kernel_size, m.stride, m.padding, m.dilation) for name, m in decoder.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}
    converted = decoder_convs_to_bf16(decoder, min_channels=8)
    after = dict(decoder.named_modules())
    assert converted == sum(isinstance(m, (Bf16Conv1d, Bf16ConvTranspose1d)) for m in after.values()) > 0
    for name, (kind, *geometry) in before.items():
        module = after[name]
        assert [module.kernel_size, module.stride, module.padding, module.dilation] == geometry
        wide = min(module.in_channels, module.out_channels) >= 8
        assert isinstance(module, kind)  # still a Conv1d / ConvTranspose1d to everything that reads it
        assert (module.weight.dtype == torch.bfloat16) == wide
    assert decoder.F0_conv.weight.dtype == torch.float32  # one channel: stays float32
    assert not any(p.dtype == torch.bfloat16 for p in engine.model.predictor.parameters())
    assert not any(p.dtype == torch.bfloat16 for p in engine.model.bert.parameters())


def test_bfloat16_convolutions_keep_durations_exact_and_the_audio_close() -> None:
    fp32 = KokoroEngine.tiny(device="cpu")
    bf16 = KokoroEngine.tiny(device="cpu")
    assert decoder_convs_to_bf16(bf16.model.decoder, min_channels=8) > 0
    for a, b in zip(fp32.synthesize(ITEMS), bf16.synthesize(ITEMS), strict=True):
        assert np.array_equal(a.durations, b.durations)  # the text side is untouched
        assert len(a.audio) == len(b.audio)
        assert a.audio.dtype == b.audio.dtype == np.float32
        assert not np.array_equal(a.audio, b.audio)  # the decoder really ran in bfloat16
        assert snr_db(a.audio, b.audio) > 20.0


def test_the_engine_applies_its_dtype_on_cpu() -> None:
    bf16 = KokoroEngine.tiny(device="cpu", dtype="bfloat16")
    assert bf16.dtype == "bfloat16" and bf16.describe()["dtype"] == "bfloat16"
    fp16 = KokoroEngine.tiny(device="cpu", dtype="float16")  # no fast CPU path
    assert fp16.dtype == "float32"
    assert all(p.dtype == torch.float32 for p in fp16.model.parameters())
    with pytest.raises(ValueError, match="dtype"):
        KokoroEngine.tiny(device="cpu", dtype="int8")  # type: ignore[arg-type]


def test_auto_in_the_config_resolves_to_what_this_cpu_supports() -> None:
    engine = create_engine(EngineConfig(kind="tiny", device="cpu", dtype="auto", warmup=False))
    assert engine.dtype == resolve_dtype("auto", CPU)
