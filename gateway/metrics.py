"""Prometheus metrics, one registry per server (no process-global state, so tests can run many).

Exposed at ``GET /metrics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ttfa = Histogram(
            "voxgate_ttfa_seconds",
            "Time from a context's first speakable piece to its first audio frame leaving the server",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "voxgate_batch_size", "Pieces per engine batch", buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "voxgate_engine_batch_seconds", "Engine time per batch", buckets=_LATENCY_BUCKETS, registry=r
        )
        # What the scheduler has learned of the engine (``gateway.engine_cost``): sizes pieces.
        self.engine_cost_fixed = Gauge(
            "voxgate_engine_cost_fixed_seconds", "Learned engine seconds per batch item", registry=r
        )
        self.engine_cost_per_token = Gauge(
            "voxgate_engine_cost_per_token_seconds", "Learned engine seconds per padded phoneme token", registry=r
        )
        self.queue_depth = Gauge("voxgate_queue_depth", "Pieces waiting for the engine", registry=r)
        self.active_sessions = Gauge("voxgate_active_sessions", "Open WebSocket sessions", registry=r)
        self.audio_seconds = Counter(
            "voxgate_audio_seconds", "Seconds of audio synthesized", registry=r
        )
        self.pieces = Counter("voxgate_pieces", "Pieces by outcome", ["outcome"], registry=r)
        self.piece_heads = Counter(
            "voxgate_piece_heads", "First pieces whose start was sent before the rest was decoded", registry=r
        )
        self.errors = Counter("voxgate_errors", "Errors sent to clients by code", ["code"], registry=r)
        self.sessions_refused = Counter("voxgate_sessions_refused", "Connections refused", ["reason"], registry=r)
        self.engine_ready = Gauge("voxgate_engine_ready", "1 when the engine is loaded and healthy", registry=r)
        self.loop_lag = Histogram(
            "voxgate_event_loop_lag_seconds",
            "How late the event loop ran a 0.25 s timer (a blocked loop delays every session)",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.loop_lag_max = Gauge("voxgate_event_loop_lag_max_seconds", "Largest event loop lag seen", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
