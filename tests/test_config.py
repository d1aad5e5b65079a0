from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from gateway.config import (
    Config,
    ConfigError,
    EngineConfig,
    SchedulerConfig,
    SegmenterConfig,
    SessionConfig,
    load_config,
)
from gateway.engines import create_engine
from gateway.scheduler import Scheduler
from gateway.session import Session


def test_defaults_load_from_the_repository_config() -> None:
    config = load_config(environ={})
    assert config.server.port == 8765
    assert config.engine.kind == "kokoro"


def test_toml_then_environment_then_overrides_win_in_order(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nport = 9000\nhost = "0.0.0.0"\n[engine]\npreload_langs = ["en", "ja"]\n')
    config = load_config(path, environ={"VOXGATE_SERVER_PORT": "9100", "VOXGATE_SCHEDULER_MAX_WAIT_MS": "1.5"})
    assert (config.server.host, config.server.port, config.scheduler.max_wait_ms) == ("0.0.0.0", 9100, 1.5)
    assert config.engine.preload_langs == ("en", "ja")
    config = load_config(path, overrides={"server.port": "9200"}, environ={"VOXGATE_SERVER_PORT": "9100"})
    assert config.server.port == 9200


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"server.nope": 1}, "unknown setting"),
        ({"server.port": "eighty"}, "server.port"),
        ({"scheduler.mode": "yolo"}, "must be one of"),
        ({"server.port": 70000}, "server.port"),
        ({"engine.warmup": "maybe"}, "engine.warmup"),
    ],
)
def test_bad_settings_are_rejected_with_their_name(overrides: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(overrides=overrides, environ={})


def test_each_component_gets_only_its_own_section() -> None:
    # A setting lands in its own section and nowhere else...
    defaults = load_config(environ={})
    config = load_config(overrides={"scheduler.max_wait_ms": defaults.scheduler.max_wait_ms + 1}, environ={})
    changed = [f.name for f in dataclasses.fields(Config) if getattr(config, f.name) != getattr(defaults, f.name)]
    assert changed == ["scheduler"]
    # ...and each component is built from its section, not from the whole tree.
    assert typing.get_type_hints(Scheduler.__init__)["config"] is SchedulerConfig
    session_hints = typing.get_type_hints(Session.__init__)
    assert (session_hints["config"], session_hints["segmenter_config"]) == (SessionConfig, SegmenterConfig)
    assert typing.get_type_hints(create_engine)["config"] is EngineConfig
