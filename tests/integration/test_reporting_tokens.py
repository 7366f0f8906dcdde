"""Reporting behind QUEUEFLOW_STATS_TOKENS, over a real port against a real PostgreSQL."""

from __future__ import annotations

import logging

import pytest

from queueflow.core.config import Settings
from queueflow.reporting.app import create_app
from tests.helpers import serve

TOKENS = "everything-token,scoped-token=a.example"


async def test_every_stats_answer_needs_a_token_the_probes_and_docs_do_not(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    locked = settings.model_copy(update={"stats_tokens": TOKENS})
    async with serve(create_app(locked)) as client:
        bare = await client.get("/stats", params={"site_id": "a.example"})
        assert bare.status_code == 401 and bare.headers["www-authenticate"] == "Bearer"
        wrong = await client.get(
            "/stats", params={"site_id": "a.example"}, headers={"authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401 and "invalid_token" in wrong.headers["www-authenticate"]
        for token, site, expected in (
            ("everything-token", "b.example", 200),
            ("scoped-token", "a.example", 200),
            ("scoped-token", "b.example", 403),
        ):
            answer = await client.get(
                "/stats", params={"site_id": site}, headers={"authorization": f"Bearer {token}"}
            )
            assert answer.status_code == expected, (token, site)
        for open_path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
            assert (await client.get(open_path)).status_code == 200, open_path
        document = (await client.get("/openapi.json")).json()
        responses = document["paths"]["/stats"]["get"]["responses"]
        assert {"401", "403"} <= set(responses)
        assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "everything-token" not in caplog.text and "scoped-token" not in caplog.text


async def test_without_tokens_reporting_is_open_and_says_so(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with serve(create_app(settings)) as client:
        assert (await client.get("/stats", params={"site_id": "s"})).status_code == 200
