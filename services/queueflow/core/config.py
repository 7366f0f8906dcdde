"""Settings from the environment (README "Configuration"); flags override them by keyword.

Each setting is declared once, on its `Settings` field: name, type, default, bounds, a
one-line description (also its flag's help), where it is read from (`env_name`) and, with a
`Flag`, the commands that take it as `--<name-with-dashes>`. `service_environment` renders
settings back into those variables for a process started from them.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import (
    AliasChoices,
    Field,
    PostgresDsn,
    RedisDsn,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

from queueflow.core.errors import ConfigError
from queueflow.core.stats_tokens import parse_tokens

# The `queueflow` commands (cli.py makes each): those that serve, then the one-shot ones.
SERVING_COMMANDS = ("dev", "ingest", "reporting", "worker")
EVERY_COMMAND = (
    *SERVING_COMMANDS,
    "migrate",
    "verify",
    "retention",
    "forget",
    "dead-letters",
    "smoke",
)
ENV_PREFIX = "QUEUEFLOW_"
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s,]+", re.IGNORECASE)


class Flag:
    """On a setting (in `Annotated`): these commands (every one when none is named) take it as
    the flag `--<name-with-dashes>`, which overrides the environment."""

    __slots__ = ("commands",)

    def __init__(self, *commands: str) -> None:
        unknown = set(commands) - set(EVERY_COMMAND)
        if unknown:
            raise ValueError(f"no such command: {sorted(unknown)}")
        self.commands: tuple[str, ...] = commands or EVERY_COMMAND

    def __repr__(self) -> str:
        return f"Flag{self.commands!r}"


DEV_AND_WORKER = Flag("dev", "worker")


# The least QUEUEFLOW_REDIS_TIMEOUT_S that leaves WAIT (half of it) room for a server tick.
MIN_WAIT_TIMEOUT_S = 0.4


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, populate_by_name=True
    )

    # Unprefixed by contract. repr=False marks a setting that carries credentials: it stays out
    # of logs and tracebacks, and out of service_environment unless secrets are asked for.
    redis_url: Annotated[RedisDsn | None, Flag()] = Field(
        None,
        validation_alias=AliasChoices("REDIS_URL", "redis_url"),
        repr=False,
        description="Redis/Valkey URL (redis://, rediss:// for TLS); embedded in dev, else needed",
    )
    database_url: Annotated[PostgresDsn | None, Flag()] = Field(
        None,
        validation_alias=AliasChoices("DATABASE_URL", "database_url"),
        repr=False,
        description="PostgreSQL URL (postgresql://); embedded in dev, else needed",
    )
    database_read_url: Annotated[PostgresDsn | None, Flag("reporting")] = Field(
        None,
        validation_alias=AliasChoices("DATABASE_READ_URL", "database_read_url"),
        repr=False,
        description="a PostgreSQL read replica reporting reads from; unset: DATABASE_URL",
    )

    stream: Annotated[str, Flag()] = Field(
        "events_stream", min_length=1, description="the Redis Stream events are appended to"
    )
    # Bounded: each partition is a label value of the stream gauges.
    stream_partitions: int = Field(
        1,
        ge=1,
        le=256,
        description="streams the events are spread over, STREAM:{0} to STREAM:{N-1}; "
        "1: STREAM itself",
    )
    redis_cluster: bool = Field(
        False, description="REDIS_URL names one node of a Redis Cluster (or Valkey Cluster)"
    )
    # Redis answers an append before its replicas have it: a primary that crashes then takes
    # its last appends with it. WAIT closes that window for appends answered 202; it waits up
    # to half redis_timeout_s (core/stream.py).
    redis_wait_replicas: int = Field(
        0,
        ge=0,
        le=16,
        description="replicas each append must reach (Redis WAIT) before its 202; short: 503",
    )
    group: Annotated[str, Flag()] = Field(
        "analytics_workers", min_length=1, description="the workers' consumer group"
    )
    consumer: Annotated[str, DEV_AND_WORKER] = Field(
        default_factory=socket.gethostname,
        min_length=1,
        description="this worker's consumer name; the hostname (the pod name) by default",
    )
    dead_letter_stream: Annotated[str, Flag("dead-letters")] = Field(
        "events_dead",
        min_length=1,
        description="where entries that cannot be stored go, with the reason",
    )
    batch_size: Annotated[int, DEV_AND_WORKER] = Field(
        500, ge=1, le=10_000, description="entries a worker reads and commits at once"
    )
    block_ms: Annotated[int, DEV_AND_WORKER] = Field(
        1000, ge=1, le=60_000, description="how long a worker's read waits for new entries, ms"
    )
    claim_idle_ms: int = Field(
        30_000, ge=100, description="idle time before another worker reclaims an entry, ms"
    )
    reclaim_interval_ms: int = Field(
        5_000, ge=50, description="how often a worker starts a reclaim pass, ms"
    )
    # Redis holds about this long of events beyond the unprocessed ones (bench/README.md,
    # "Findings": the soak).
    trim_interval_ms: int = Field(
        1_000,
        ge=50,
        description="how often a worker trims processed entries and idle consumers, ms",
    )
    consumer_idle_delete_ms: int = Field(
        3_600_000,
        ge=1_000,
        description="idle time after which a consumer with nothing pending is deleted, ms",
    )
    max_deliveries: int = Field(5, ge=1, description="deliveries before an entry is dead-lettered")
    backlog_limit: int = Field(
        1_000_000, ge=1, description="unprocessed entries above which ingest answers 503"
    )
    backlog_refresh_ms: int = Field(
        1_000, ge=50, description="how often ingest re-reads the backlog (never per request), ms"
    )
    max_body_bytes: int = Field(
        65_536, ge=1024, description="largest request body, single or batch, bytes"
    )
    max_batch_events: int = Field(500, ge=1, description="most events in one POST /events")
    max_event_age_days: int = Field(
        30, ge=0, description="oldest accepted timestamp, days; 0 lifts the limit (back-fills)"
    )
    # Kept longer than max_event_age_days, every resend of a kept event is caught: event ids
    # go with their day (DESIGN.md "Growth").
    raw_retention_days: Annotated[int, Flag("retention")] = Field(
        0, ge=0, description="raw events older than this many days are removed; 0 keeps them"
    )
    cors_origins: str = Field(
        "*",
        min_length=1,
        description="origins that may send events, comma-separated (https://host[:port]), or *",
    )
    drop_bots: bool = Field(
        True, description="answer known crawlers' events 202 ignored and enqueue nothing"
    )
    user_id_key: str | None = Field(
        None,
        min_length=16,
        repr=False,
        description="a secret: ingest replaces user ids by their HMAC-SHA256 under it",
    )
    stats_tokens: str | None = Field(
        None,
        min_length=1,
        repr=False,
        description="a secret: reporting's tokens, TOKEN or TOKEN=SITE|SITE, comma-separated",
    )
    reporting_cors_origins: str = Field(
        "",
        description="origins whose pages may read reporting's answers, comma-separated, or *; "
        "empty: no CORS headers",
    )
    max_range_days: int = Field(
        366, ge=1, le=36_600, description="longest from-to range a reporting route answers, days"
    )
    workers: Annotated[int, Flag("dev")] = Field(
        1, ge=0, le=64, description="worker processes `queueflow dev` starts"
    )
    log_level: Annotated[Literal["debug", "info", "warning", "error"], Flag()] = Field(
        "info", description="debug, info, warning or error"
    )
    log_format: Annotated[Literal["json", "console"], Flag()] = Field(
        "json", description="json lines, or console for a terminal"
    )
    access_log: bool = Field(True, description="one log line per HTTP request")
    stream_metrics_interval_ms: int = Field(
        5_000, ge=100, description="how often each worker reads the stream gauges (XINFO), ms"
    )
    # A request waits at most about twice this (the append in flight, then its own) before its
    # 503, so 0.9 keeps it under 2 s.
    redis_timeout_s: float = Field(
        0.9, gt=0, le=10, description="longest a Redis call on the ingest path may take, s"
    )
    # Below the pod's grace period.
    shutdown_timeout: Annotated[float, DEV_AND_WORKER] = Field(
        20, gt=0, le=600, description="seconds a stopping worker may take to finish its batch"
    )
    # HTTP limits on every service's port, against idle, slow and oversized clients:
    http_max_header_bytes: int = Field(
        16_384,
        ge=1024,
        le=1_048_576,
        description="request line plus headers, bytes; over it 431 and the connection closes",
    )
    http_header_timeout_s: float = Field(
        10,
        gt=0,
        le=300,
        description="seconds from a connection's opening (or next request) to its headers' end",
    )
    http_body_timeout_s: float = Field(
        30,
        gt=0,
        le=3600,
        description="seconds from the headers' end to the body's end; also an answer's wait "
        "for a non-reader",
    )
    http_keepalive_timeout_s: float = Field(
        5, gt=0, le=3600, description="seconds a kept-alive connection may idle between requests"
    )
    db_pool_size: int = Field(
        4,
        ge=1,
        le=100,
        description="PostgreSQL connections per reporting or worker process (a worker: at least 2)",
    )
    migrations_dir: str | None = Field(
        None, description="where the migrations are read from; the package's own by default"
    )
    auto_migrate: bool = Field(
        True,
        description="worker and reporting apply pending migrations at start (advisory lock)",
    )

    @field_validator("cors_origins", "reporting_cors_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        """`*`, or origins as browsers send them (no path, no trailing slash), blanks trimmed."""
        if not value:  # reporting's: none (ingest's has a minimum length)
            return value
        origins = [o.strip() for o in value.split(",") if o.strip()]
        for origin in origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin like https://www.example.com")
        if not origins or ("*" in origins and len(origins) > 1):
            raise ValueError("either * or a list of origins")
        return ",".join(origins)

    @field_validator("stats_tokens")
    @classmethod
    def _tokens(cls, value: str | None) -> str | None:
        if value is not None:
            parse_tokens(value)
        return value

    @model_validator(mode="after")
    def _wait_within_timeout(self) -> Settings:
        # WAIT gets half the call's time; Redis ends a blocked WAIT up to a server tick (100 ms
        # at hz 10) late, which must still fall inside the socket timeout.
        if self.redis_wait_replicas and self.redis_timeout_s < MIN_WAIT_TIMEOUT_S:
            raise ValueError(
                f"QUEUEFLOW_REDIS_WAIT_REPLICAS needs QUEUEFLOW_REDIS_TIMEOUT_S of at least "
                f"{MIN_WAIT_TIMEOUT_S} (WAIT gets half of it)"
            )
        return self

    def redis_dsn(self) -> str:
        if self.redis_url is None:
            raise ConfigError("REDIS_URL is required")
        return str(self.redis_url)

    def database_dsn(self) -> str:
        if self.database_url is None:
            raise ConfigError("DATABASE_URL is required")
        return str(self.database_url)

    def database_read_dsn(self) -> str:
        """Where reporting reads: a replica when DATABASE_READ_URL is set (migrations and
        writes always go to DATABASE_URL)."""
        if self.database_read_url is not None:
            return str(self.database_read_url)
        return self.database_dsn()


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment plus explicit overrides, or one clear ConfigError."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(_describe(err) for err in exc.errors())
        raise ConfigError(problems) from None


def _describe(err: ErrorDetails) -> str:
    if not err["loc"]:  # a rule across settings: its message names them
        return err["msg"].removeprefix("Value error, ")
    return f"{env_name(str(err['loc'][0]).lower())}: {err['msg']}"


def env_name(setting: str) -> str:
    """The environment variable a setting is read from: its alias (the unprefixed URLs), else
    QUEUEFLOW_ and its name."""
    field = Settings.model_fields.get(setting)
    alias = field.validation_alias if field is not None else None
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    return f"{ENV_PREFIX}{setting.upper()}"


def flag_of(setting: str) -> Flag | None:
    """The setting's flag declaration, if it has one."""
    return next((m for m in Settings.model_fields[setting].metadata if isinstance(m, Flag)), None)


def flag_name(setting: str) -> str:
    """The flag of a setting that has one (see Flag)."""
    return "--" + setting.replace("_", "-")


def flag_settings(command: str) -> list[str]:
    """The settings `command` takes as flags, in declaration order."""
    return [name for name in Settings.model_fields if command in _commands(name)]


def _commands(setting: str) -> tuple[str, ...]:
    flag = flag_of(setting)
    return flag.commands if flag is not None else ()


def is_secret(setting: str) -> bool:
    """Whether the setting carries credentials (declared repr=False)."""
    return Settings.model_fields[setting].repr is False


def service_environment(
    settings: Settings, *, only: Iterable[str] | None = None, secrets: bool = False
) -> dict[str, str]:
    """`settings` as the environment variables they are read from: a process started with
    these reads the same values. Every setting, or those named in `only`; the ones carrying
    credentials (the URLs) only with secrets=True. Unset (None) settings are left out."""
    names = list(Settings.model_fields) if only is None else list(only)
    env: dict[str, str] = {}
    for name in names:
        if name not in Settings.model_fields:
            raise ValueError(f"no such setting: {name}")
        if is_secret(name) and not secrets:
            if only is not None:
                raise ValueError(f"{name} carries credentials: pass secrets=True")
            continue
        value = getattr(settings, name)
        if value is not None:
            env[env_name(name)] = _render(value)
    return env


def _render(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
