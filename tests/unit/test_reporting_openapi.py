"""Reporting's OpenAPI document: every data route says what it answers (with an example), that
it needs a token (401, 403 and the bearer scheme), that bad parameters are 422, and that it
answers CSV too."""

from __future__ import annotations

import json

import pytest

from queueflow.core.config import load_settings
from queueflow.reporting.app import create_app

ROUTES = ["/stats", "/stats/timeseries", "/stats/breakdown", "/stats/realtime"]
ROUTES += ["/stats/ingest", "/sites"]


@pytest.fixture(scope="module")
def document() -> dict:
    return create_app(load_settings(database_url="postgresql://u@127.0.0.1:1/d")).openapi()


def schemas_of(document: dict, schema: dict) -> list[dict]:
    refs = [schema, *schema.get("anyOf", [])]
    names = [r["$ref"].rsplit("/", 1)[1] for r in refs if "$ref" in r]
    return [document["components"]["schemas"][n] for n in names]


@pytest.mark.parametrize("route", ROUTES)
def test_each_route_documents_its_answers_errors_and_examples(document: dict, route: str) -> None:
    operation = document["paths"][route]["get"]
    assert {"200", "401", "403", "422"} <= operation["responses"].keys()
    content = operation["responses"]["200"]["content"]
    assert content["text/csv"]["schema"] == {"type": "string"}
    answers = schemas_of(document, content["application/json"]["schema"])
    assert answers and all(a.get("examples") for a in answers), route
    assert {"HTTPBearer": []} in operation["security"]
    assert "format" in {p["name"] for p in operation["parameters"]}


def test_examples_name_the_range_from_as_the_answers_do(document: dict) -> None:
    text = json.dumps(document["components"]["schemas"]["RangeStatsResponse"])
    assert '"from": "2026-11-24"' in text and "from_" not in text
