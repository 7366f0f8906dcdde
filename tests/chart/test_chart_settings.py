"""The chart's `config` values are exactly the settings meant for a deployment: each one under
its name in camelCase, with the setting's default and bounds, rendered into the ConfigMap as
its own variable. A setting added without the chart (or a chart value without a setting)
fails here; a setting that is not the chart's business is listed, with why, in NOT_IN_CHART."""

from __future__ import annotations

import json
import typing

import pytest
import yaml

from queueflow.core.config import Settings, env_name, load_settings
from tests.chart.conftest import CHART, RELEASE, Render, one

NOT_IN_CHART = {
    "redis_url": "read from the chart's Secret (or an existing one), never from a ConfigMap",
    "database_url": "read from the chart's Secret (or an existing one), never from a ConfigMap",
    "database_read_url": "read by reporting from externalDatabase.existingSecretReadKey",
    "consumer": "each worker pod's own name: the Deployment sets it from metadata.name",
    "workers": "worker processes `queueflow dev` starts; in a cluster they are worker pods",
    "migrations_dir": "the image's own migrations are the ones its code expects",
    "user_id_key": "a secret: read from userIdKey.existingSecret, and by ingest only",
    "stats_tokens": "a secret: generated into the chart's Secret (or statsTokens.existingSecret)",
}
# In the ConfigMap but not a value: log collectors read JSON lines.
FIXED_BY_CHART = {"log_format": "json"}
CHART_SETTINGS = [n for n in Settings.model_fields if n not in {**NOT_IN_CHART, **FIXED_BY_CHART}]
CONSTRAINTS = ("type", "enum", "minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
CONSTRAINTS += ("minLength", "maxLength", "pattern")


def camel(setting: str) -> str:
    first, *rest = setting.split("_")
    return first + "".join(part.capitalize() for part in rest)


def config_values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())["config"]


def configmap(render: Render, values: dict | None = None) -> dict[str, str]:
    return one(render(values), "ConfigMap", f"{RELEASE}-queueflow")["data"]


def read_as_a_pod(data: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a QueueFlow process reads from this ConfigMap's variables alone."""
    for name in Settings.model_fields:
        monkeypatch.delenv(env_name(name), raising=False)
    for variable, value in data.items():
        monkeypatch.setenv(variable, value)
    return load_settings()


def other_value(setting: str, index: int) -> object:
    """A valid value unlike the default (and unlike the others' for other indexes)."""
    field = Settings.model_fields[setting]
    default = field.default
    if setting in ("cors_origins", "reporting_cors_origins"):  # origins, not any string
        return f"https://site{index}.example.com"
    if isinstance(default, bool):
        return not default
    if isinstance(default, str):
        choices = typing.get_args(field.annotation)
        return next(c for c in choices if c != default) if choices else f"{default}_{index}"
    if isinstance(default, float) or field.annotation is float:
        return default + (index + 1) / 4
    return default + index + 1


def test_the_exclusions_are_settings() -> None:
    # A stale entry would hide nothing; a renamed setting must be decided on again.
    assert {**NOT_IN_CHART, **FIXED_BY_CHART}.keys() <= Settings.model_fields.keys()
    for setting, value in FIXED_BY_CHART.items():
        assert value in typing.get_args(Settings.model_fields[setting].annotation)


def test_config_values_are_the_chart_settings_with_their_defaults() -> None:
    values = config_values()
    assert sorted(values) == sorted(camel(n) for n in CHART_SETTINGS)
    for name in CHART_SETTINGS:
        field, value = Settings.model_fields[name], values[camel(name)]
        assert value == field.default, name
        assert isinstance(value, bool) == isinstance(field.default, bool), name


def test_the_configmap_holds_exactly_those_settings_with_their_defaults(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = configmap(render)
    assert sorted(data) == sorted(env_name(n) for n in [*CHART_SETTINGS, *FIXED_BY_CHART])
    settings = read_as_a_pod(data, monkeypatch)
    for name in CHART_SETTINGS:
        assert getattr(settings, name) == Settings.model_fields[name].default, name
    for name, value in FIXED_BY_CHART.items():
        assert getattr(settings, name) == value


def test_each_value_reaches_its_own_variable(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    changed = {name: other_value(name, i) for i, name in enumerate(CHART_SETTINGS)}
    assert len({str(v) for v in changed.values() if not isinstance(v, bool)}) == len(
        [v for v in changed.values() if not isinstance(v, bool)]
    )  # distinct, so a swapped pair of variables shows
    # An external Redis: the chart refuses a Redis Cluster (redis_cluster changed) on its own.
    external = {"redis": {"enabled": False}, "externalRedis": {"url": "redis://redis.example:6379"}}
    data = configmap(render, {"config": {camel(n): v for n, v in changed.items()}, **external})
    settings = read_as_a_pod(data, monkeypatch)
    for name, value in changed.items():
        assert getattr(settings, name) == value, name


def test_the_schema_bounds_are_the_settings_bounds() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["config"]
    assert schema["additionalProperties"] is False
    declared = Settings.model_json_schema()["properties"]
    expected = {
        camel(name): {key: declared[name][key] for key in CONSTRAINTS if key in declared[name]}
        for name in CHART_SETTINGS
    }
    assert schema["properties"] == expected
