"""Events at every documented limit, in every field, with 2-, 3- and 4-byte characters, sent
to a real ingest and drained by a real worker: each is either refused with a 422 or stored
and counted. Never a 5xx, never an event the store cannot hold, never a stuck worker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queueflow.core.config import Settings
from tests.helpers import Service, service_env, wait_until_exact

# The limits the README documents: (unit, most) per field.
LIMITS = {
    "site_id": ("bytes", 256),
    "event_type": ("chars", 64),
    "path": ("bytes", 2048),
    "user_id": ("chars", 256),
    "referrer": ("bytes", 2048),
}
PROPERTY_NAME_CHARS, PROPERTY_VALUE_CHARS, PROPERTY_KEYS = 64, 512, 30
WIDE = ["a", "é", "中", "😀"]  # 1, 2, 3 and 4 bytes in UTF-8


def _size(text: str, unit: str) -> int:
    return len(text.encode()) if unit == "bytes" else len(text)


@st.composite
def text_at(draw: st.DrawFn, unit: str, most: int, prefix: str = "") -> str:
    """A string at its limit, just under it, or one character over, of mixed widths."""
    chars = draw(st.lists(st.sampled_from(WIDE), min_size=1, max_size=4))
    target = draw(st.sampled_from(["at", "at", "over", "short"]))
    text = prefix
    i = 0
    while True:
        nxt = text + chars[i % len(chars)]
        if _size(nxt, unit) > most:
            break
        text, i = nxt, i + 1
    if target == "over":
        text += chars[i % len(chars)]
    elif target == "short":
        text = text[: max(len(prefix) + 1, len(text) // 3)]
    return text


@st.composite
def events(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
    """(event, whether every documented limit holds for it)."""
    body: dict[str, Any] = {"timestamp": datetime.now(UTC).isoformat()}
    for field, (unit, most) in LIMITS.items():
        if field == "referrer" and draw(st.booleans()):
            continue
        body[field] = draw(text_at(unit, most, prefix="/" if field == "path" else ""))
    if draw(st.booleans()):
        body["event_type"] = "page_view"  # so the path lands in the path counts' key
    if draw(st.booleans()):
        alphabet = "abcXYZ019._:-"
        body["event_id"] = draw(st.text(alphabet, min_size=120, max_size=129))
    if draw(st.booleans()):
        count = draw(st.sampled_from([1, 3, PROPERTY_KEYS, PROPERTY_KEYS + 1]))
        name = draw(text_at("chars", PROPERTY_NAME_CHARS))
        value = draw(text_at("chars", PROPERTY_VALUE_CHARS))
        body["properties"] = {f"{i}{name}"[:65]: value for i in range(count)}
    within = (
        all(_size(body[f], unit) <= most for f, (unit, most) in LIMITS.items() if f in body)
        and len(body.get("event_id", "x")) <= 128
    )
    if "properties" in body:
        props = body["properties"]
        within = within and len(props) <= PROPERTY_KEYS
        within = within and all(len(k) <= PROPERTY_NAME_CHARS for k in props)
        within = within and all(len(v) <= PROPERTY_VALUE_CHARS for v in props.values())
    return body, within


class Pipeline:
    def __init__(self, client: httpx.Client, settings: Settings) -> None:
        self.client, self.settings = client, settings
        self.accepted: list[dict[str, Any]] = []


@pytest.fixture
def pipeline(settings: Settings) -> Iterator[Pipeline]:
    """A real ingest and worker for the whole property run. At its end, the aggregates must
    equal a naive recount of every accepted event, and nothing may have been dead-lettered
    (no accepted event was refused by the store)."""
    # A body limit above the largest event this test builds, so that each field's own limit is
    # what decides (30 property values of 512 four-byte characters are 60 KB alone).
    env = {
        **service_env(settings),
        "QUEUEFLOW_MAX_BODY_BYTES": "1048576",
        "QUEUEFLOW_BLOCK_MS": "100",
    }
    ingest = Service("ingest", env).wait_healthy()
    worker = Service("worker", env).wait_healthy()
    try:
        with httpx.Client(base_url=ingest.url, timeout=10) as client:
            run = Pipeline(client, settings)
            yield run
        assert worker.proc.poll() is None, "the worker died"
        assert run.accepted, "no example was accepted: the strategy is broken"
        wait_until_exact(settings.database_dsn(), run.accepted, timeout_s=30)
        r = redis.Redis.from_url(settings.redis_dsn())
        try:
            assert r.xlen(settings.dead_letter_stream) == 0
        finally:
            r.close()
    finally:
        ingest.stop()
        worker.stop()


async def _stored(database_url: str, site_id: str, event_id: str) -> bool:
    conn = await asyncpg.connect(database_url)
    try:
        query = "SELECT count(*) = 1 FROM events WHERE site_id = $1 AND event_id = $2"
        return await conn.fetchval(query, site_id, event_id)
    finally:
        await conn.close()


def _wait_stored(database_url: str, site_id: str, event_id: str, timeout_s: float = 15) -> None:
    async def poll() -> None:
        async with asyncio.timeout(timeout_s):
            while not await _stored(database_url, site_id, event_id):  # noqa: ASYNC110
                await asyncio.sleep(0.05)

    asyncio.run(poll())


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=events(), escaped=st.booleans())
def test_every_event_at_the_limits_is_refused_or_stored_and_counted(
    pipeline: Pipeline, case: tuple[dict[str, Any], bool], escaped: bool
) -> None:
    body, within = case
    raw = json.dumps(body, ensure_ascii=escaped).encode()  # \u escapes, surrogate pairs too
    response = pipeline.client.post(
        "/event", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == (202 if within else 422), response.text
    if response.status_code == 202:
        event_id = response.json()["event_id"]
        # Stored within seconds: a worker stuck on this event would never get there.
        _wait_stored(pipeline.settings.database_dsn(), body["site_id"], event_id)
        pipeline.accepted.append({**body, "event_id": event_id})
