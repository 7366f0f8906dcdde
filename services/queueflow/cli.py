"""The `queueflow` command: dev, ingest, reporting, worker, migrate and operator commands."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import structlog

from queueflow import __version__
from queueflow.core.config import (
    SERVING_COMMANDS,
    Settings,
    env_name,
    flag_name,
    flag_settings,
    load_settings,
)
from queueflow.core.errors import ConfigError, MigrationError
from queueflow.core.observability import BUILD_INFO, configure_logging
from queueflow.core.stats_tokens import all_sites_token
from queueflow.core.tracing import Tracing, configure_tracing
from queueflow.runtime import migrate_command, run_async, serve_app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="queueflow",
        description="Website analytics events: HTTP -> Redis Stream -> PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=f"queueflow {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, help_: str, *, listens: bool = True, host: str = "0.0.0.0"
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_, description=help_)
        for setting in flag_settings(name):
            _add_setting_flag(sub, setting)
        if listens:
            sub.add_argument("--host", default=host, help=f"address to listen on [{host}]")
            sub.add_argument("--port", type=int, default=8000, help="port to listen on [8000]")
        return sub

    dev = command(
        "dev",
        "Run everything locally: servers, migrations, ingest + reporting, workers",
        host="127.0.0.1",
    )
    dev.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".queueflow"),
        help="where the embedded servers keep their data [.queueflow]",
    )
    dev.add_argument("--fresh", action="store_true", help="wipe --data-dir first")
    command("ingest", "Serve POST /event and POST /events")
    command("reporting", "Serve GET /stats")
    command("worker", "Move events from the stream into PostgreSQL")
    command("migrate", "Apply pending database migrations", listens=False)
    verify = command(
        "verify", "Recount aggregates from raw events and report differences", listens=False
    )
    verify.add_argument("--site-id", "--site", dest="site_id", help="one site [all sites]")
    verify.add_argument(
        "--from", dest="first", type=date.fromisoformat, help="first UTC day [today]"
    )
    verify.add_argument("--to", dest="last", type=date.fromisoformat, help="last UTC day [--from]")
    verify.add_argument("--repair", action="store_true", help="rebuild what differs, atomically")
    command(
        "retention",
        "Remove raw events older than QUEUEFLOW_RAW_RETENTION_DAYS now, a whole day at a time",
        listens=False,
    )
    forget = command(
        "forget",
        "Erase a user of a site (or a whole site): raw events, user sets, and their counts",
        listens=False,
    )
    forget.add_argument("--site-id", "--site", dest="site_id", required=True, help="the site")
    forget.add_argument(
        "--user-id",
        "--user",
        dest="user_id",
        help="the user, as the site sends it (hashed first under QUEUEFLOW_USER_ID_KEY) "
        "[the whole site]",
    )
    dead = command(
        "dead-letters", "List, show, replay or purge dead-lettered entries", listens=False
    )
    dead.add_argument("action", choices=["list", "show", "replay", "purge"])
    dead.add_argument("ids", nargs="*", metavar="ID", help="dead-letter entry ids")
    dead.add_argument("--all", dest="every", action="store_true", help="replay or purge all")
    dead.add_argument("--count", type=int, default=50, help="list: how many [50]")
    dead.add_argument("--after", help="list: start after this id")
    smoke = command("smoke", "Send one event through a deployment and read it back", listens=False)
    smoke.add_argument("--ingest-url", required=True, help="e.g. http://queueflow-ingest")
    smoke.add_argument("--reporting-url", required=True, help="e.g. http://queueflow-reporting")
    smoke.add_argument("--timeout", type=float, default=60, help="seconds to wait [60]")
    return parser


def _add_setting_flag(parser: argparse.ArgumentParser, setting: str) -> None:
    """`--<setting-with-dashes>`, as the setting declares it (config.py): help from its
    description, None unless given (then the environment or the default applies)."""
    field = Settings.model_fields[setting]
    # The flag parses numbers only; pydantic checks every value (bounds, literals, URLs).
    kind: Callable[[str], Any] = {int: int, float: float}.get(field.annotation, str)  # type: ignore[arg-type]
    shown = "" if field.default is None or field.default_factory else f", default {field.default}"
    parser.add_argument(
        flag_name(setting),
        dest=setting,
        type=kind,
        default=None,
        help=f"{field.description} [env {env_name(setting)}{shown}]".replace("%", "%%"),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {setting: getattr(args, setting) for setting in flag_settings(args.command)}
    try:
        settings = load_settings(**overrides)
        if args.command == "dev" and env_name("log_format") not in os.environ:
            # A person at a terminal reads console lines; its workers inherit the format.
            fmt = "console" if sys.stdout.isatty() else "json"
            settings = settings.model_copy(update={"log_format": fmt})
        configure_logging(settings.log_level, settings.log_format)
        tracing = Tracing.off()
        if args.command in SERVING_COMMANDS:
            tracing = configure_tracing(args.command)
            BUILD_INFO.labels(args.command, __version__).set(1)
        return _run(args, settings, tracing)
    except ConfigError as exc:
        print(f"queueflow: configuration error: {exc}", file=sys.stderr)
        return 2
    except MigrationError as exc:
        print(f"queueflow: migration error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        structlog.get_logger("queueflow").error("fatal error", exc_info=exc)
        return 1


def _run(args: argparse.Namespace, settings: Settings, tracing: Tracing) -> int:
    if args.command == "dev":
        from queueflow.dev import run_dev

        return run_dev(
            settings,
            host=args.host,
            port=args.port,
            data_dir=args.data_dir,
            fresh=args.fresh,
            tracing=tracing,
        )
    if args.command == "migrate":
        return run_async(migrate_command(settings))
    if args.command == "smoke":
        from queueflow.smoke import smoke

        return smoke(
            args.ingest_url,
            args.reporting_url,
            args.timeout,
            all_sites_token(settings.stats_tokens),
        )
    if args.command == "verify":
        from queueflow.operator import verify

        first = args.first or datetime.now(UTC).date()
        last = args.last or first
        if last < first:
            print(f"queueflow: --to {last} is before --from {first}", file=sys.stderr)
            return 2
        return run_async(verify(settings, first, last, args.site_id, args.repair))
    if args.command == "retention":
        from queueflow.operator import retention

        return run_async(retention(settings))
    if args.command == "forget":
        from queueflow.operator import forget

        return run_async(forget(settings, args.site_id, args.user_id))
    if args.command == "dead-letters":
        from queueflow.operator import dead_letters

        return run_async(
            dead_letters(settings, args.action, args.ids, args.every, args.count, args.after)
        )
    if args.command == "worker":
        from queueflow.worker.main import run_worker

        return run_async(run_worker(settings, args.host, args.port, tracing))
    if args.command == "ingest":
        from queueflow.ingest.app import create_app as create_ingest

        ingest = create_ingest(settings, tracing)
        return run_async(serve_app(ingest, args.host, args.port, settings, tracing))
    from queueflow.core.migrations import migrate_at_start
    from queueflow.reporting.app import create_app as create_reporting

    run_async(migrate_at_start(settings))  # reporting's one named start-up step
    reporting = create_reporting(settings, tracing)
    return run_async(serve_app(reporting, args.host, args.port, settings, tracing))
