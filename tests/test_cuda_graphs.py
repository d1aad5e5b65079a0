"""``engine.cuda_graphs`` on the CPU: buckets, padding into a bucket and back, fallbacks.

The capture itself needs CUDA and has never run (no GPU lent yet); what a graph would replay is the
padded decoder, run here eagerly (``capture=False``): it must give each item the audio of an
unpadded eager run.
"""

from __future__ import annotations

import logging

import pytest
import torch

from gateway.engines.batched import batched_forward
from gateway.engines.cuda_graphs import Bucket, DecoderGraphs, choose_bucket
from gateway.engines.kokoro import KokoroEngine
from gateway.engines.source_noise import HashNoise
from gateway.engines.tiny import make_tiny_kmodel, make_tiny_voices

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield make_tiny_kmodel(0, voiced=True)
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def batch() -> dict:
    pack = make_tiny_voices(["a"])["a"]
    g = torch.Generator().manual_seed(5)
    ids = []
    for n in (6, 30, 55):
        row = torch.randint(1, 178, (n + 2,), generator=g)
        row[0] = row[-1] = 0
        ids.append(row)
    ref_s = torch.cat([pack[len(row) - 3] for row in ids])
    return {"token_ids": ids, "ref_s": ref_s, "speeds": [1.0, 1.2, 0.9], "seeds": [11, 12, 13]}


def synthesize(model: torch.nn.Module, batch: dict, graphs: DecoderGraphs | None = None):
    return batched_forward(
        model, batch["token_ids"], batch["ref_s"], batch["speeds"], HashNoise(batch["seeds"]), decoder_graphs=graphs
    )


@pytest.fixture(scope="module")
def eager(model, batch):
    return synthesize(model, batch)


def test_a_batch_goes_to_the_smallest_bucket_that_holds_it():
    assert choose_bucket(1, 10) == Bucket(1, 64)
    assert choose_bucket(3, 64) == Bucket(4, 64)
    assert choose_bucket(5, 65) == Bucket(8, 128)
    assert choose_bucket(64, 2048) == Bucket(64, 2048)
    assert choose_bucket(65, 10) is None
    assert choose_bucket(1, 2049) is None


def test_padding_a_batch_into_its_bucket_and_cutting_it_back_changes_no_item(model, batch, eager):
    graphs = DecoderGraphs(model.decoder, CPU, capture=False)
    padded = synthesize(model, batch, graphs)
    frames = max(eager.num_samples) // 600
    bucket = choose_bucket(3, frames)
    assert bucket.batch == 4 and bucket.frames > frames  # a dummy item and padded frames added
    assert padded.num_samples == eager.num_samples
    assert torch.equal(padded.durations, eager.durations)
    for ours, theirs in zip(padded.items(), eager.items()):
        assert float((ours.audio - theirs.audio).abs().max()) < 1e-4


def test_a_capture_that_raises_falls_back_to_eager_and_is_logged_once(model, batch, eager, caplog):
    graphs = DecoderGraphs(model.decoder, CPU)  # capture on a CPU: torch.cuda raises
    with caplog.at_level(logging.WARNING, logger="gateway.engines.cuda_graphs"):
        first = synthesize(model, batch, graphs)
        second = synthesize(model, batch, graphs)
    assert torch.equal(first.audio, eager.audio) and torch.equal(second.audio, eager.audio)
    assert graphs.replays == 0 and len(graphs._failed) == 1
    assert sum("capture failed" in record.getMessage() for record in caplog.records) == 1


def test_batches_outside_the_buckets_and_unreplayable_noise_run_eagerly(model, batch, eager):
    graphs = DecoderGraphs(model.decoder, CPU, batch_buckets=(1, 2), capture=False)
    assert torch.equal(synthesize(model, batch, graphs).audio, eager.audio)
    generators = [torch.Generator().manual_seed(seed) for seed in batch["seeds"]]
    out = batched_forward(model, batch["token_ids"][:1], batch["ref_s"][:1], [1.0], generators[:1], decoder_graphs=graphs)
    assert graphs(out.audio, out.audio, out.audio, out.audio, None, generators) is None  # checked before any shape
    assert graphs.replays == 0


def test_the_engine_turns_graphs_on_only_on_cuda(caplog):
    with caplog.at_level(logging.WARNING, logger="gateway.engines.kokoro"):
        engine = KokoroEngine.tiny(0, voices=["a"], device="cpu", num_threads=1, cuda_graphs=True)
    assert engine.decoder_graphs is None and engine.describe()["cuda_graphs"] is False
    assert any("cuda_graphs needs a CUDA device" in record.getMessage() for record in caplog.records)
