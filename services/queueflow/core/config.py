"""Settings from the environment (DESIGN.md's table); flags override them by keyword."""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import AliasChoices, Field, PostgresDsn, RedisDsn, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from queueflow.core.errors import ConfigError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="QUEUEFLOW_", extra="forbid", validate_default=True, populate_by_name=True
    )

    # Unprefixed by contract; repr=False keeps credentials out of logs and tracebacks.
    redis_url: RedisDsn | None = Field(
        None, validation_alias=AliasChoices("REDIS_URL", "redis_url"), repr=False
    )
    database_url: PostgresDsn | None = Field(
        None, validation_alias=AliasChoices("DATABASE_URL", "database_url"), repr=False
    )

    stream: str = Field("events_stream", min_length=1)
    group: str = Field("analytics_workers", min_length=1)
    consumer: str = Field(default_factory=socket.gethostname, min_length=1)
    dead_letter_stream: str = Field("events_dead", min_length=1)
    batch_size: int = Field(500, ge=1, le=10_000)
    block_ms: int = Field(1000, ge=1, le=60_000)
    claim_idle_ms: int = Field(30_000, ge=100)
    reclaim_interval_ms: int = Field(5_000, ge=50)  # how often a reclaim pass starts
    # How often processed entries are trimmed: Redis holds about this long of events beyond
    # the unprocessed ones (5 s at 100,000 events/s would be 100 MB).
    trim_interval_ms: int = Field(1_000, ge=50)
    consumer_idle_delete_ms: int = Field(3_600_000, ge=1_000)  # then an empty consumer goes
    max_deliveries: int = Field(5, ge=1)
    backlog_limit: int = Field(1_000_000, ge=1)
    backlog_refresh_ms: int = Field(1_000, ge=50)  # how stale ingest's backlog figure may be
    max_body_bytes: int = Field(65_536, ge=1024)
    max_batch_events: int = Field(500, ge=1)
    max_event_age_days: int = Field(30, ge=0)  # 0 lifts the lower bound (back-fills)
    workers: int = Field(1, ge=0, le=64)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    access_log: bool = True  # one log line per HTTP request
    stream_metrics_interval_ms: int = Field(5_000, ge=100)  # how often workers read XINFO
    # How long a Redis call on the ingest path may take; a request waits at most about twice
    # this (the append in flight, then its own) before its 503, so 0.9 keeps it under 2 s.
    redis_timeout_s: float = Field(0.9, gt=0, le=10)
    # Seconds a stopping worker may spend finishing its batch (below the pod's grace period).
    shutdown_timeout: float = Field(20, gt=0, le=600)
    # HTTP limits on every service's port, against idle, slow and oversized clients:
    http_max_header_bytes: int = Field(16_384, ge=1024, le=1_048_576)  # line + headers; then 431
    http_header_timeout_s: float = Field(10, gt=0, le=300)  # open/first byte to headers' end
    http_body_timeout_s: float = Field(30, gt=0, le=3600)  # headers' end to body's end; then close
    http_keepalive_timeout_s: float = Field(5, gt=0, le=3600)  # idle keep-alive connection closed
    db_pool_size: int = Field(4, ge=1, le=100)
    migrations_dir: str | None = None
    # Worker and reporting apply pending migrations at start (under the advisory lock).
    auto_migrate: bool = True

    def redis_dsn(self) -> str:
        if self.redis_url is None:
            raise ConfigError("REDIS_URL is required")
        return str(self.redis_url)

    def database_dsn(self) -> str:
        if self.database_url is None:
            raise ConfigError("DATABASE_URL is required")
        return str(self.database_url)


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment plus explicit overrides, or one clear ConfigError."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(_describe(err) for err in exc.errors())
        raise ConfigError(problems) from None


def _describe(err: dict) -> str:
    field = str(err["loc"][0]).lower() if err["loc"] else "settings"
    return f"{env_name(field)}: {err['msg']}"


def env_name(setting: str) -> str:
    """The environment variable a setting is read from (the URLs are unprefixed)."""
    unprefixed = ("redis_url", "database_url")
    return setting.upper() if setting in unprefixed else f"QUEUEFLOW_{setting.upper()}"
