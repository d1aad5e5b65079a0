"""Synthesis engines behind one small interface (``base.Engine``).

``create_engine(config)`` builds the configured one: ``kokoro`` (real weights, resolved by
``weights.load_kokoro``), ``tiny`` (random weights, same architecture, for tests), ``fake``
(deterministic tones, for unit tests), ``realtimetts`` (any RealtimeTTS engine, batch size 1) or
``ray`` (replicas of one of those on a Ray Serve cluster, ``engines.ray_client``).
"""

from __future__ import annotations

import logging

from gateway.config import EngineConfig
from gateway.engines.base import Engine, EngineError, SynthesisItem, SynthesisResult

__all__ = ["Engine", "EngineError", "SynthesisItem", "SynthesisResult", "create_engine"]

logger = logging.getLogger("voxgate.engine")


def create_engine(config: EngineConfig) -> Engine:
    """Build the engine named by ``config.kind``. Call on the engine thread (it loads weights)."""
    if config.kind == "fake":
        from gateway.engines.fake import FakeEngine

        return FakeEngine(max_batch_size=config.max_batch_size)
    if config.kind == "ray":
        from gateway.engines.ray_client import RayServeEngine

        return RayServeEngine.from_config(config)
    if config.kind == "realtimetts":
        from gateway.engines.realtimetts import RealtimeTTSEngine

        return RealtimeTTSEngine.from_config(config)
    from gateway.engines.kokoro import KokoroEngine

    common = dict(
        device=config.device,
        num_threads=config.num_threads or None,
        max_batch_size=config.max_batch_size,
        preferred_batch_size=config.preferred_batch_size or None,
        dtype=config.dtype,
        prosody=config.prosody,
        cuda_graphs=config.cuda_graphs,
        decoder_norm=config.decoder_norm,
        stream_heads=config.stream_heads,
    )
    if config.kind == "tiny":
        return KokoroEngine.tiny(seed=config.tiny_seed, **common)
    from gateway.engines.weights import build_kmodel, load_kokoro

    loaded = load_kokoro(config.weights, cache_dir=config.cache_dir or None)
    logger.info("weights: %s", loaded.source)
    return KokoroEngine(build_kmodel(loaded), loaded.voices, weights_source=loaded.source, **common)
