"""Where batched prosody differs from a solo run, stage by stage (issue 16; benchmarks/README.md).

    python benchmarks/prosody_invariance.py --weights tiny --lengths 12,60,150 --threads 1
    python benchmarks/prosody_invariance.py --weights offline --lengths 3,25,90,200 --threads 2

Random token ids of the given lengths, one batch against each item alone; each stage is fed the
same (solo) inputs in both runs, so a row shows the difference that stage itself adds. "kokoro"
is the stock path the batched forward used before ``gateway/engines/prosody.py`` (transformers'
ALBERT with sdpa, kokoro's ``DurationEncoder``, packed LSTMs, oneDNN convs); "invariant" is
``prosody.py``. Cells: max abs difference of the item's valid part, or EQ (bit-identical).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from gateway.engines import batched as B
from gateway.engines import prosody as P


def packed_lstm(lstm: nn.LSTM, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=True, enforce_sorted=False)
    return pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=x.shape[1])[0]


def cell(batch: torch.Tensor, solo: torch.Tensor) -> str:
    return "EQ" if torch.equal(batch, solo) else f"{float((batch - solo).abs().max()):.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", choices=["tiny", "offline"], default="tiny")
    parser.add_argument("--lengths", default="12,60,150", help="phonemes per item")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.weights == "offline":
        from gateway.engines.weights import build_kmodel, load_kokoro

        loaded = load_kokoro("offline")
        model, pack = build_kmodel(loaded), next(iter(loaded.voices.values()))
    else:
        from gateway.engines.tiny import make_tiny_kmodel, make_tiny_voices

        model, pack = make_tiny_kmodel(0, voiced=True), make_tiny_voices(["a"])["a"]
    pack = pack.reshape(pack.shape[0], -1)
    lengths = [int(n) for n in args.lengths.split(",")]
    tokens = [len_ + 2 for len_ in lengths]
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(1, 178, (n,), generator=g) for n in tokens]
    s = torch.cat([pack[n - 1 : n] for n in lengths])[:, model.predictor.text_encoder.sty_dim :]
    frames = [3 * n for n in tokens]
    channels = model.predictor.shared.input_size
    en = [torch.randn(1, channels, f, generator=g) for f in frames]
    rows: list[tuple[str, str, list[str]]] = []

    def compare(kernel: str, stage: str, run, inputs: list[torch.Tensor], dim: int, widths: list[int], out_dim: int | None = None) -> list[torch.Tensor]:
        """``run(batch_input, item_indices)``; inputs are (1, ..., n) per item, padded along ``dim``."""
        width = max(x.shape[dim] for x in inputs)
        padded = torch.cat([nn.functional.pad(x, [0, 0] * (x.dim() - 1 - dim) + [0, width - x.shape[dim]]) for x in inputs])
        together = run(padded, list(range(len(inputs))))
        alone = [run(x, [i]) for i, x in enumerate(inputs)]
        o = dim if out_dim is None else out_dim
        rows.append((kernel, stage, [cell(together[i : i + 1].narrow(o, 0, w), a.narrow(o, 0, w)) for i, (a, w) in enumerate(zip(alone, widths))]))
        return alone

    with torch.inference_mode():
        id_rows = [t[None] for t in ids]

        def text_mask(x: torch.Tensor, idx: list[int]) -> torch.Tensor:
            return torch.arange(x.shape[1])[None, :] >= torch.tensor([tokens[i] for i in idx])[:, None]

        bert = compare("kokoro", "ALBERT", lambda x, i: model.bert(x, attention_mask=(~text_mask(x, i)).int()), id_rows, 1, tokens)
        compare("invariant", "ALBERT", lambda x, i: P._albert(model.bert, P._widen(x, P.invariant_width(x.shape[1])), P._Axis([tokens[j] for j in i], x.device)), id_rows, 1, tokens)
        d_en = [model.bert_encoder(h).transpose(-1, -2) for h in bert]
        compare("kokoro", "DurationEncoder", lambda x, i: model.predictor.text_encoder(x, s[i], torch.tensor([tokens[j] for j in i]), text_mask(x.transpose(1, 2), i)), d_en, 2, tokens, 1)
        d = compare("invariant", "DurationEncoder", lambda x, i: P._duration_encoder(model.predictor.text_encoder, P._widen(x, P.invariant_width(x.shape[2])), s[i], P._Axis([tokens[j] for j in i], x.device)), d_en, 2, tokens, 1)
        d = [x[:, : tokens[i]] for i, x in enumerate(d)]
        compare("kokoro", "duration LSTM", lambda x, i: packed_lstm(model.predictor.lstm, x, [tokens[j] for j in i]), d, 1, tokens)
        compare("invariant", "duration LSTM", lambda x, i: P._lstm(model.predictor.lstm, nn.functional.pad(x, (0, 0, 0, P.invariant_width(x.shape[1]) - x.shape[1])), P._Axis([tokens[j] for j in i], x.device)), d, 1, tokens)

        def old_f0(x: torch.Tensor, idx: list[int]) -> torch.Tensor:
            span = B._Span([frames[j] for j in idx], x.device)
            halves = span.mapped(lambda n: 2 * n)
            y = packed_lstm(model.predictor.shared, x.transpose(1, 2), span.lengths).transpose(1, 2)
            for block in model.predictor.F0:
                out = halves if block.upsample_type != "none" else span
                y, span = B._adain_resblk1d(block, y, s[idx], span, out), out
            return model.predictor.F0_proj(y)

        compare("kokoro", "shared LSTM -> F0 (masked AdaIN, oneDNN convs)", old_f0, en, 2, [2 * f for f in frames])
        compare("invariant", "shared LSTM -> F0", lambda x, i: P.f0_and_n(model.predictor, x, s[i], [frames[j] for j in i], [2 * frames[j] for j in i])[0][:, None], en, 2, [2 * f for f in frames])
    print(f"weights {args.weights}, phonemes {lengths}, {args.threads} thread(s), torch {torch.__version__}")
    print("| kernels | stage | " + " | ".join(f"item of {n}" for n in lengths) + " |")
    print("|---|---|" + "---:|" * len(lengths))
    for kernel, stage, cells in rows:
        print(f"| {kernel} | {stage} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
