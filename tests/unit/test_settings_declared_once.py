"""Each setting is declared once, on its Settings field; the flags, the environment names, the
environment a service is started with and the README table all follow from it."""

from __future__ import annotations

import argparse
import ast
import re
import typing
from pathlib import Path

import pytest

import queueflow
from queueflow import cli
from queueflow.core.config import (
    EVERY_COMMAND,
    Settings,
    env_name,
    flag_name,
    flag_settings,
    is_secret,
    load_settings,
    service_environment,
)

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(queueflow.__file__).resolve().parent
EVERYWHERE = ["--redis-url", "--database-url", "--stream", "--group", "--log-level"]
EVERYWHERE += ["--log-format"]
WORKER = ["--consumer", "--batch-size", "--block-ms", "--shutdown-timeout"]
# The setting flags each command had before they were declared on the settings: none is lost.
FLAGS_BEFORE = {
    "dev": [*EVERYWHERE, *WORKER, "--workers"],
    "worker": [*EVERYWHERE, *WORKER],
    "dead-letters": [*EVERYWHERE, "--dead-letter-stream"],
    "reporting": [*EVERYWHERE, "--database-read-url"],
    "retention": [*EVERYWHERE, "--raw-retention-days"],
    **{c: EVERYWHERE for c in ("ingest", "migrate", "verify", "forget", "smoke")},
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(env_name(name), raising=False)


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def setting_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.option_strings[0]: a for a in parser._actions if a.dest in Settings.model_fields}


def other_value(name: str) -> object:
    """A valid value of the setting unlike its default."""
    field = Settings.model_fields[name]
    if name == "redis_url":
        return "redis://:pw@cache:6380/2"
    if name == "database_url":
        return "postgresql://u:pw@db:5432/qf"
    if name == "database_read_url":
        return "postgresql://u:pw@replica:5432/qf"
    if name in ("consumer", "migrations_dir"):
        return f"other-{name}"
    if name == "user_id_key":
        return "a-key-of-sixteen-or-more"
    if name == "stats_tokens":
        return "all-sites-token,scoped-token=a.example|b.example"
    if name in ("cors_origins", "reporting_cors_origins"):
        return "https://www.example.com,http://localhost:3000"
    if isinstance(field.default, bool):
        return not field.default
    if isinstance(field.default, str):
        choices = typing.get_args(field.annotation)
        return next(c for c in choices if c != field.default) if choices else "other"
    return field.default + (0.5 if field.annotation is float else 1)


def test_every_setting_has_a_one_line_description() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description and "\n" not in field.description, name
        assert len(field.description) <= 100, name


def test_the_commands_are_the_parsers() -> None:
    assert tuple(subcommands()) == EVERY_COMMAND


def test_each_command_takes_exactly_its_declared_flags() -> None:
    for command, parser in subcommands().items():
        options = setting_options(parser)
        assert list(options) == [flag_name(n) for n in flag_settings(command)]
        assert sorted(options) == sorted(FLAGS_BEFORE[command]), command
        for action in options.values():
            field = Settings.model_fields[action.dest]
            assert action.default is None  # unset: the environment or the default applies
            assert field.description in action.help and env_name(action.dest) in action.help


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Settings] = []
    monkeypatch.setattr(cli, "_run", lambda args, settings, tracing: seen.append(settings) or 0)
    monkeypatch.setattr(cli, "configure_logging", lambda *args: None)
    monkeypatch.setattr(cli, "configure_tracing", lambda *args: None)
    monkeypatch.setenv("QUEUEFLOW_BATCH_SIZE", "50")
    monkeypatch.setenv("QUEUEFLOW_STREAM", "from_env")
    argv = ["worker", "--batch-size", "7", "--shutdown-timeout", "2.5", "--log-level", "error"]
    assert cli.main([*argv, "--redis-url", "redis://r:1/0"]) == 0
    (s,) = seen
    assert (s.batch_size, s.shutdown_timeout, s.log_level) == (7, 2.5, "error")
    assert (s.stream, s.redis_dsn()) == ("from_env", "redis://r:1/0")
    assert cli.main(["dead-letters", "list", "--dead-letter-stream", "d"]) == 0
    assert seen[1].dead_letter_stream == "d" and seen[1].batch_size == 50


def test_a_bad_flag_value_is_a_configuration_error(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["migrate", "--log-level", "loud"]) == 2
    assert capsys.readouterr().err.startswith("queueflow: configuration error: QUEUEFLOW_LOG")


def test_the_service_environment_is_read_back_as_the_same_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    changed = load_settings(**{name: other_value(name) for name in Settings.model_fields})
    env = service_environment(changed, secrets=True)
    assert sorted(env) == sorted(env_name(n) for n in Settings.model_fields)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    assert load_settings() == changed


def test_the_service_environment_keeps_secrets_out_unless_asked() -> None:
    settings = load_settings(redis_url="redis://:pw@cache:6380/0", stream="s")
    env = service_environment(settings)
    assert "REDIS_URL" not in env and "pw" not in str(env)
    assert "DATABASE_URL" not in env  # unset: left out, never "None"
    secrets = {n for n in Settings.model_fields if is_secret(n)}
    assert secrets == {
        "redis_url",
        "database_url",
        "database_read_url",
        "user_id_key",
        "stats_tokens",
    }
    assert service_environment(settings, only=["stream", "redis_url"], secrets=True) == {
        "QUEUEFLOW_STREAM": "s",
        "REDIS_URL": "redis://:pw@cache:6380/0",
    }
    with pytest.raises(ValueError, match="secrets=True"):
        service_environment(settings, only=["redis_url"])
    with pytest.raises(ValueError, match="no such setting"):
        service_environment(settings, only=["strem"])


def test_the_urls_are_unprefixed_and_the_rest_prefixed() -> None:
    assert env_name("redis_url") == "REDIS_URL" and env_name("database_url") == "DATABASE_URL"
    assert env_name("http_body_timeout_s") == "QUEUEFLOW_HTTP_BODY_TIMEOUT_S"


def test_the_readme_table_lists_every_setting_with_its_default() -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Configuration") :]
    section = section[: section.index("\n## ", 1)]
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| ([^|]*) \|", section, re.M))
    assert sorted(rows) == sorted(env_name(n) for n in Settings.model_fields)
    for name, field in Settings.model_fields.items():
        if field.default is not None and field.default_factory is None:
            shown = str(field.default).lower() if isinstance(field.default, bool) else field.default
            assert rows[env_name(name)].strip() == (f"`{shown}`" if shown != "" else "empty"), name


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_cli_and_dev_do_not_import_each_other_and_the_runtime_neither() -> None:
    assert "queueflow.cli" not in imported_modules(PACKAGE / "dev.py")
    assert not {"queueflow.cli", "queueflow.dev"} & imported_modules(PACKAGE / "runtime.py")
    assert not {"run_async", "serve_app", "migrate_command"} & {
        node.name
        for node in ast.parse((PACKAGE / "cli.py").read_text()).body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def test_dev_starts_each_worker_with_its_own_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from queueflow import dev

    started: list[dict] = []
    monkeypatch.setattr(dev.subprocess, "Popen", lambda command, **kw: started.append(kw))
    settings = load_settings(
        redis_url="redis://r:1/0", database_url="postgresql://u:pw@d/q", consumer="box"
    ).model_copy(update={"batch_size": 7, "shutdown_timeout": 3.0, "log_format": "console"})
    dev._start_worker(settings, "127.0.0.1", 9001, 1)
    (env,) = (kw["env"] for kw in started)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    assert load_settings() == settings.model_copy(update={"consumer": "box-dev-1"})
