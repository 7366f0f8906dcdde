"""Configuration: the README's names and defaults, and one clear line for a bad setting."""

from __future__ import annotations

import subprocess
import sys

import pytest

from queueflow.core.config import Settings, env_name, load_settings
from queueflow.core.errors import ConfigError

ENV_NAMES = [env_name(name) for name in Settings.model_fields]


def test_environment_names_follow_the_design() -> None:
    assert ENV_NAMES[:2] == ["REDIS_URL", "DATABASE_URL"]
    for name in ("STREAM", "GROUP", "CONSUMER", "DEAD_LETTER_STREAM", "BATCH_SIZE", "BLOCK_MS"):
        assert f"QUEUEFLOW_{name}" in ENV_NAMES
    for name in ("CLAIM_IDLE_MS", "MAX_DELIVERIES", "BACKLOG_LIMIT", "MAX_BODY_BYTES", "WORKERS"):
        assert f"QUEUEFLOW_{name}" in ENV_NAMES
    for name in ("MAX_BATCH_EVENTS", "LOG_LEVEL", "LOG_FORMAT", "MAX_EVENT_AGE_DAYS"):
        assert f"QUEUEFLOW_{name}" in ENV_NAMES


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


def test_defaults_match_the_design() -> None:
    s = load_settings()
    assert (s.stream, s.group, s.dead_letter_stream) == (
        "events_stream",
        "analytics_workers",
        "events_dead",
    )
    assert (s.batch_size, s.block_ms, s.claim_idle_ms, s.max_deliveries) == (500, 1000, 30000, 5)
    assert (s.backlog_limit, s.max_body_bytes, s.max_batch_events) == (1_000_000, 65536, 500)
    assert (s.workers, s.log_level, s.log_format, s.max_event_age_days) == (1, "info", "json", 30)
    assert s.consumer  # the hostname, i.e. the pod name
    assert s.redis_url is None and s.database_url is None


def test_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://cache:6380/2")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:secret@db:5432/qf")
    monkeypatch.setenv("QUEUEFLOW_STREAM", "s")
    monkeypatch.setenv("QUEUEFLOW_BATCH_SIZE", "50")
    monkeypatch.setenv("QUEUEFLOW_CONSUMER", "pod-7")
    s = load_settings()
    assert s.redis_dsn() == "redis://cache:6380/2"
    assert s.database_dsn() == "postgresql://u:secret@db:5432/qf"
    assert (s.stream, s.batch_size, s.consumer) == ("s", 50, "pod-7")
    assert "secret" not in repr(s)


def test_explicit_values_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUEUEFLOW_BATCH_SIZE", "50")
    assert load_settings(batch_size=7).batch_size == 7


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        ("QUEUEFLOW_BATCH_SIZE", "many", "QUEUEFLOW_BATCH_SIZE"),
        ("QUEUEFLOW_BATCH_SIZE", "0", "QUEUEFLOW_BATCH_SIZE"),
        ("QUEUEFLOW_LOG_FORMAT", "xml", "QUEUEFLOW_LOG_FORMAT"),
        ("REDIS_URL", "http://nope", "REDIS_URL"),
        ("DATABASE_URL", "mysql://x/y", "DATABASE_URL"),
        ("REDIS_URL", "not a url", "REDIS_URL"),
        ("DATABASE_URL", "not a url", "DATABASE_URL"),
    ],
)
def test_a_malformed_setting_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, named: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    # Named exactly as the variable it is read from (not QUEUEFLOW_REDIS_URL, which is no
    # variable at all).
    assert str(raised.value).startswith(f"{named}: ")


def test_waiting_for_replicas_needs_room_in_the_redis_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QUEUEFLOW_REDIS_WAIT_REPLICAS", "1")
    monkeypatch.setenv("QUEUEFLOW_REDIS_TIMEOUT_S", "0.2")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert str(raised.value).startswith(
        "QUEUEFLOW_REDIS_WAIT_REPLICAS needs QUEUEFLOW_REDIS_TIMEOUT_S of at least 0.4"
    )
    monkeypatch.setenv("QUEUEFLOW_REDIS_TIMEOUT_S", "0.4")
    assert load_settings().redis_wait_replicas == 1


def test_a_missing_url_is_reported_by_its_name() -> None:
    with pytest.raises(ConfigError, match="REDIS_URL is required"):
        load_settings().redis_dsn()


@pytest.mark.parametrize("command", ["ingest", "reporting", "worker", "migrate"])
def test_commands_exit_2_with_one_line_when_config_is_missing(command: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "QUEUEFLOW_LOG_LEVEL": "warning"}
    done = subprocess.run(
        [sys.executable, "-m", "queueflow", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "configuration error" in lines[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_a_bad_value_stops_the_process_before_it_starts() -> None:
    env = {"PATH": "/usr/bin:/bin", "QUEUEFLOW_BATCH_SIZE": "lots", "REDIS_URL": "redis://x"}
    done = subprocess.run(
        [sys.executable, "-m", "queueflow", "ingest"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "QUEUEFLOW_BATCH_SIZE" in done.stderr and "Traceback" not in done.stderr


def test_help_lists_every_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "queueflow", "--help"], capture_output=True, text=True, timeout=30
    )
    for command in ("dev", "ingest", "reporting", "worker", "migrate"):
        assert command in done.stdout
