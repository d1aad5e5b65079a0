"""``KokoroEngine`` end to end on the tiny random-weight Kokoro, the batch-size probe, the engine bench."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gateway.engines.base import SAMPLES_PER_FRAME, EngineError, SynthesisItem
from gateway.engines.kokoro import KokoroEngine
from gateway.engines.probe import probe_batch_sizes

HELLO = "həlˈoʊ wˈɜːld."
LONGER = "ðə kwˈɪk bɹˈaʊn fˈɑks dʒˈʌmps ˌoʊvɚ ðə lˈeɪzi dˈɑɡ."


@pytest.fixture(scope="module")
def engine():
    previous = torch.get_num_threads()
    # One thread: the tiny model gains nothing from more, and the test machine is shared.
    eng = KokoroEngine.tiny(seed=0, device="cpu", num_threads=1, max_batch_size=4)
    yield eng
    eng.close()
    torch.set_num_threads(previous)


def test_an_unknown_voice_raises_an_engine_error(engine):
    with pytest.raises(EngineError, match="unknown voice"):
        engine.synthesize([SynthesisItem(HELLO, engine.voices()[0]), SynthesisItem(HELLO, "nobody")])


def test_a_batch_over_the_limits_raises_an_engine_error(engine):
    voice = engine.voices()[0]
    with pytest.raises(EngineError, match="max_batch_size"):
        engine.synthesize([SynthesisItem(HELLO, voice)] * 5)
    with pytest.raises(EngineError, match="510"):
        engine.synthesize([SynthesisItem("a" * 511, voice)])
    with pytest.raises(EngineError, match="speed"):
        engine.synthesize([SynthesisItem(HELLO, voice, speed=0.0)])


@pytest.mark.parametrize("per_item_prosody", [False, True])
def test_results_come_back_in_input_order_each_as_if_alone(engine, monkeypatch, per_item_prosody):
    # Whole-batch prosody (the default) and prosody per item both give each item its solo F0
    # (gateway/engines/prosody.py), so voiced audio matches a solo run either way.
    monkeypatch.setattr(engine, "per_item_prosody", per_item_prosody)
    tolerance = 1e-4
    voices = engine.voices()
    items = [
        SynthesisItem(LONGER, voices[0], speed=1.0, seed=1),
        SynthesisItem("ɐ", voices[1], speed=1.2, seed=2),
        SynthesisItem(HELLO, voices[2], speed=0.9),
    ]
    batch = engine.synthesize(items)
    assert [r.phonemes for r in batch] == [item.phonemes for item in items]
    for item, result in zip(items, batch):
        (alone,) = engine.synthesize([item])
        np.testing.assert_array_equal(result.durations, alone.durations)
        err = np.linalg.norm(result.audio - alone.audio) / np.linalg.norm(alone.audio)
        assert err < tolerance


def test_audio_length_is_the_sum_of_durations_times_600(engine):
    results = engine.synthesize([SynthesisItem(p, engine.voices()[0]) for p in (HELLO, LONGER)])
    for result in results:
        assert result.audio.dtype == np.float32 and result.audio.ndim == 1
        assert result.durations.dtype == np.int64
        assert len(result.durations) == len(result.phonemes) + 2
        assert len(result.audio) == int(result.durations.sum()) * SAMPLES_PER_FRAME
        assert np.isfinite(result.audio).all()
    assert len(results[1].audio) > len(results[0].audio)


def test_characters_outside_the_vocabulary_are_dropped_and_the_result_says_so(engine):
    (result,) = engine.synthesize([SynthesisItem("hə\u2603lˈoʊ", engine.voices()[0])])
    assert result.phonemes == "həlˈoʊ"
    assert len(result.durations) == len(result.phonemes) + 2


def test_the_same_request_gives_the_same_audio_and_the_seed_changes_it(engine):
    voice = engine.voices()[0]
    first, again = engine.synthesize([SynthesisItem(HELLO, voice)]), engine.synthesize([SynthesisItem(HELLO, voice)])
    np.testing.assert_array_equal(first[0].audio, again[0].audio)
    (other,) = engine.synthesize([SynthesisItem(HELLO, voice, seed=12345)])
    assert not np.array_equal(first[0].audio, other.audio)


def test_warmup_settles_on_batch_size_one_on_cpu_and_describe_names_the_device(engine):
    engine.warmup()
    assert engine.preferred_batch_size == 1
    info = engine.describe()
    assert info["device"] == "cpu" and info["name"] == "kokoro" and info["decoder_norm"] == "voice"
    assert "tiny" in str(info["weights_source"])


def test_the_probe_returns_a_sane_table(engine):
    result = probe_batch_sizes(engine, sizes=(1, 2, 8), seconds_budget=2.0, num_phonemes=12)
    assert [row.batch_size for row in result.rows] == [1, 2]  # 8 exceeds max_batch_size
    for row in result.rows:
        assert row.runs >= 1 and row.audio_seconds > 0 and row.throughput > 0
        assert row.rtf == pytest.approx(1 / row.throughput)
    assert result.best_batch_size in (1, 2)
    table = result.table()
    assert table.startswith("| batch | audio-s/s | RTF")
    assert "**best**" in table


def test_the_engine_bench_writes_a_markdown_report_for_the_tiny_model(tmp_path, capsys):
    from gateway.bench.engine import main

    out = tmp_path / "engine.md"
    previous = torch.get_num_threads()
    try:
        code = main(
            ["--weights", "tiny", "--batch-sizes", "1,2", "--seconds", "1", "--phonemes", "8", "--threads", "1"]
            + ["--out", str(out)]
        )
    finally:
        torch.set_num_threads(previous)
    assert code == 0
    report = out.read_text(encoding="utf-8")
    assert "| batch | audio-s/s | RTF" in report
    assert "device: cpu" in report and "peak MiB" in report
    assert "best batch size" in capsys.readouterr().out


def test_the_tiny_model_and_voices_are_deterministic_in_their_seed():
    from gateway.engines.tiny import make_tiny_kmodel, make_tiny_voices

    a, b, c = make_tiny_kmodel(0), make_tiny_kmodel(0), make_tiny_kmodel(1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    first = make_tiny_voices(["x", "y"])
    assert torch.equal(first["y"], make_tiny_voices(["y"])["y"])  # other names do not shift a pack
    assert first["x"].shape == (510, 1, 256) and not torch.equal(first["x"], first["y"])


def test_create_engine_builds_the_tiny_kokoro_from_config():
    from gateway.config import EngineConfig
    from gateway.engines import create_engine

    previous = torch.get_num_threads()
    try:
        engine = create_engine(EngineConfig(kind="tiny", num_threads=1, max_batch_size=2))
    finally:
        torch.set_num_threads(previous)
    assert isinstance(engine, KokoroEngine)
    assert engine.max_batch_size == 2 and engine.preferred_batch_size == 1
    assert "jf_alpha" in engine.voices()
    assert "ə" in engine.vocab
