"""What web pages need from ingest, over a real port against a real Redis: events without a
timestamp, CORS, /tracker.js, bots said out loud, user ids hashed before they leave ingest,
and each site's accounting."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest
import redis.asyncio as redis
from prometheus_client import REGISTRY

from queueflow.core.config import Settings
from queueflow.core.events import decode_entry
from queueflow.core.ingest_counts import counts_key
from queueflow.core.stream import EVENT_FIELD
from queueflow.core.user_ids import UserIdHasher
from queueflow.embedded import free_port
from queueflow.ingest.accounting import MAX_PENDING_KEYS, Accounting
from queueflow.ingest.app import create_app
from queueflow.ingest.tracker_js import SCRIPT
from queueflow.reporting.app import create_app as create_reporting
from tests.helpers import Service, event, send, serve, service_env, wait_until_exact, workload

GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
PAGE = "https://www.shop.example"
KEY = "a-test-key-of-some-length"


@pytest.fixture
async def web(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """Ingest allowing one origin, hashing user ids."""
    listed = settings.model_copy(update={"cors_origins": PAGE, "user_id_key": KEY})
    async with serve(create_app(listed)) as client:
        yield client


async def entries(r: redis.Redis, settings: Settings) -> list:
    return [f[EVENT_FIELD] for _, f in await r.xrange(settings.stream)]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def counts(r: redis.Redis, settings: Settings, site: str) -> dict[bytes, bytes]:
    return await r.hgetall(counts_key(settings.stream, datetime.now(UTC).date(), site))


async def test_an_event_without_timestamp_is_dated_by_ingest(web, redis_client, settings) -> None:
    before = datetime.now(UTC)
    body = event(timestamp=None)
    assert (await web.post("/event", json=body)).status_code == 202
    (payload,) = await entries(redis_client, settings)
    stored = decode_entry(payload)
    assert stored.timestamp is not None and before <= stored.timestamp <= datetime.now(UTC)
    batch = [event(timestamp=None, user_id="a"), event(user_id="b")]
    assert (await web.post("/events", json=batch)).status_code == 202


async def test_preflights_and_origins(web, redis_client, settings) -> None:
    asks = {"origin": PAGE, "access-control-request-method": "POST"}
    for path, methods in (("/event", "POST"), ("/events", "POST"), ("/tracker.js", "GET, HEAD")):
        answer = await web.options(path, headers=asks)
        assert answer.status_code == 204, path
        assert answer.headers["access-control-allow-origin"] == PAGE
        assert answer.headers["access-control-allow-methods"] == methods
        assert answer.headers["access-control-allow-headers"] == "content-type"
        assert answer.headers["access-control-max-age"] == "86400"
        refused = await web.options(path, headers={**asks, "origin": "https://evil.example"})
        assert refused.status_code == 403

    rejected = sample("queueflow_ingest_events_rejected_total", reason="cors")
    for origins in (["https://evil.example"], ["https://evil.example", PAGE], ["null"]):
        headers = [("content-type", "application/json")] + [("origin", o) for o in origins]
        answer = await web.post("/event?x=1", content=json.dumps(event()), headers=headers)
        assert answer.status_code == 403  # the first Origin decides, before anything else
        assert "access-control-allow-origin" not in answer.headers  # never told it may read
    assert await redis_client.xlen(settings.stream) == 0
    assert sample("queueflow_ingest_events_rejected_total", reason="cors") == rejected + 3

    # Every answer to a listed origin says it may read it, a 422 included; a server (no
    # Origin header) is never refused.
    for body, status in ((event(), 202), (event(path="nope"), 422)):
        answer = await web.post("/event", json=body, headers={"origin": PAGE})
        assert answer.status_code == status
        assert answer.headers["access-control-allow-origin"] == PAGE
        assert answer.headers["vary"] == "origin"
    assert (await web.post("/event", json=event())).status_code == 202


async def test_any_origin_by_default(settings) -> None:
    async with serve(create_app(settings)) as client:
        answer = await client.post("/event", json=event(), headers={"origin": "https://a.example"})
        assert answer.status_code == 202
        assert answer.headers["access-control-allow-origin"] == "*"


async def test_the_tracker_is_served_cached_and_compressed(web) -> None:
    plain = SCRIPT.read_bytes()
    answer = await web.get("/tracker.js", headers={"accept-encoding": "identity"})
    assert answer.status_code == 200 and answer.content == plain
    assert answer.headers["content-type"] == "text/javascript; charset=utf-8"
    assert answer.headers["cache-control"] == "public, max-age=3600"
    etag = answer.headers["etag"]
    zipped = await web.get("/tracker.js", headers={"accept-encoding": "gzip, br"})
    assert zipped.headers["content-encoding"] == "gzip" and zipped.content == plain  # decoded
    assert int(zipped.headers["content-length"]) == len(gzip.compress(plain, 9, mtime=0))
    assert zipped.headers["etag"] != etag  # another representation, another tag
    again = await web.get("/tracker.js", headers={"if-none-match": f'W/"x", {etag}'})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == zipped.headers["etag"]  # what it would have sent
    assert (await web.get("/tracker.js", headers={"if-none-match": "*"})).status_code == 304
    two_lines = [("if-none-match", etag), ("if-none-match", '"other"')]
    assert (await web.get("/tracker.js", headers=two_lines)).status_code == 304
    refused = await web.get("/tracker.js", headers={"accept-encoding": "gzip;q=0, identity"})
    assert "content-encoding" not in refused.headers and refused.content == plain
    head = await web.head("/tracker.js")
    assert head.status_code == 200 and head.content == b""
    for answer, status in (
        (await web.post("/tracker.js", headers={"origin": PAGE}), 405),
        (await web.get("/tracker.js?v=2", headers={"origin": PAGE}), 422),  # never ignored
        (await web.get("/tracker.js", headers={"origin": PAGE}), 200),
    ):
        assert answer.status_code == status
        assert answer.headers["access-control-allow-origin"] == PAGE  # every answer
    refused = await web.get("/tracker.js", headers={"origin": "https://evil.example"})
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
    assert refused.headers["vary"] == "origin"


async def test_known_crawlers_are_answered_and_counted_not_enqueued(
    web, redis_client, settings
) -> None:
    dropped = sample("queueflow_ingest_events_dropped_total", reason="bot")
    answer = await web.post("/events", json=[event(), event()], headers={"user-agent": GOOGLEBOT})
    assert answer.status_code == 202
    assert answer.json() == {"status": "ignored", "reason": "bot"}
    assert await redis_client.xlen(settings.stream) == 0
    assert sample("queueflow_ingest_events_dropped_total", reason="bot") == dropped + 2
    for agent in (CHROME, "curl/8.5.0", "python-httpx/0.27.2", "Go-http-client/1.1"):
        answer = await web.post("/event", json=event(), headers={"user-agent": agent})
        assert answer.json()["status"] == "accepted", agent
    await asyncio.sleep(1.3)  # drops are written with the next flush, once a second
    site = await counts(redis_client, settings, "site-1")
    assert site == {b"accepted": b"4", b"dropped:bot": b"2"}


async def test_raw_user_ids_never_leave_ingest(web, redis_client, settings) -> None:
    hasher = UserIdHasher(KEY)
    users = [f"visitor-{i}@example.com" for i in range(5)]
    batch = [event(user_id=u, site_id=s) for u in users for s in ("a.example", "b.example")]
    assert (await web.post("/events", json=batch)).status_code == 202
    payloads = await entries(redis_client, settings)
    assert all(b"visitor-" not in p for p in payloads)
    stored = [decode_entry(p) for p in payloads]
    assert [e.user_id for e in stored] == [
        hasher(e.site_id, u)
        for e, u in zip(stored, [u for u in users for _ in range(2)], strict=True)
    ]
    assert len({(e.site_id, e.user_id) for e in stored}) == 10  # distinct stays distinct


async def test_each_sites_events_are_accounted(web, redis_client, settings) -> None:
    batch = [event(site_id="a.example"), event(site_id="a.example"), event(site_id="b.example")]
    assert (await web.post("/events", json=batch)).status_code == 202
    # Counted in the transaction that appended them: already there.
    assert await counts(redis_client, settings, "a.example") == {b"accepted": b"2"}
    assert await counts(redis_client, settings, "b.example") == {b"accepted": b"1"}
    key = counts_key(settings.stream, datetime.now(UTC).date(), "a.example")
    assert 0 < await redis_client.ttl(key) <= 400 * 86400
    over = [{"site_id": f"flood-{i}"} for i in range(settings.max_batch_events + 1)]
    assert (await web.post("/events", json=over)).status_code == 422  # names no site
    bad = [event(site_id="a.example"), event(site_id="a.example", path="nope")]
    assert (await web.post("/events", json=bad)).status_code == 422
    assert (
        await web.post("/event", content=b"{not json", headers={"content-type": "application/json"})
    ).status_code == 400
    await asyncio.sleep(1.3)
    assert await counts(redis_client, settings, "a.example") == {
        b"accepted": b"2",
        b"rejected:validation": b"2",  # events, not requests: the whole batch was refused
    }
    assert await redis_client.keys(f"{{{settings.stream}}}:ingest:*:flood-*") == []


def test_the_database_never_holds_a_raw_id_and_uniques_stay_exact(settings) -> None:
    env = {**service_env(settings), "QUEUEFLOW_USER_ID_KEY": KEY, "QUEUEFLOW_BLOCK_MS": "100"}
    events = workload(400)
    raw_ids = {e["user_id"] for e in events}
    services = [Service("ingest", env).wait_healthy(), Service("worker", env).wait_healthy()]
    try:
        send(services[0].url, events)
        hasher = UserIdHasher(KEY)
        hashed = [{**e, "user_id": hasher(e["site_id"], e["user_id"])} for e in events]
        wait_until_exact(settings.database_dsn(), hashed)  # the same uniques, per site and day

        async def held() -> set[str]:
            conn = await asyncpg.connect(settings.database_dsn())
            try:
                ids = await conn.fetch(
                    "SELECT user_id FROM events UNION SELECT user_id FROM site_users"
                )
                return {r["user_id"] for r in ids}
            finally:
                await conn.close()

        stored = asyncio.run(held())
        assert stored and not stored & raw_ids
        assert all(len(i) == 32 for i in stored)
    finally:
        for service in services:
            assert service.stop() == 0


async def test_drop_and_reject_counts_wait_out_a_redis_outage_within_bounds(
    redis_client, settings
) -> None:
    down = redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    accounting = Accounting(down, settings.stream)
    accounting.note("dropped:bot", ["kept.example"] * 3)
    accounting.note("rejected:validation", (f"invented-{i}" for i in range(5000)))
    await accounting.flush()  # Redis down: kept, not lost
    assert len(accounting._pending) == MAX_PENDING_KEYS
    accounting.client = redis_client
    await accounting.flush()
    assert await counts(redis_client, settings, "kept.example") == {b"dropped:bot": b"3"}
    assert len(await redis_client.keys(f"{{{settings.stream}}}:ingest:*")) == MAX_PENDING_KEYS
    await down.aclose()


async def test_reporting_tells_what_ingest_did_with_a_sites_events(settings) -> None:
    locked = settings.model_copy(update={"stats_tokens": "all-token,shop-token=shop.example"})
    bearer = {"authorization": "Bearer all-token"}
    async with serve(create_app(settings)) as ingest, serve(create_reporting(locked)) as reporting:
        good = [event(site_id="shop.example", user_id=f"u{i}") for i in range(3)]
        assert (await ingest.post("/events", json=good)).status_code == 202
        await ingest.post(
            "/event", json=event(site_id="shop.example"), headers={"user-agent": GOOGLEBOT}
        )
        await ingest.post("/events", json=[event(site_id="shop.example", path="nope")] * 2)
        await asyncio.sleep(1.3)  # drops and rejections: written with the next flush
        answer = await reporting.get(
            "/stats/ingest", params={"site_id": "shop.example"}, headers=bearer
        )
        assert answer.status_code == 200
        body = answer.json()
        assert (body["accepted"], body["dropped"], body["rejected"]) == (
            3,
            {"bot": 1},
            {"validation": 2},
        )
        assert body["date"] == datetime.now(UTC).date().isoformat() and body["lag_entries"] == 3
        empty = await reporting.get(
            "/stats/ingest", params={"site_id": "none.example"}, headers=bearer
        )
        assert empty.json()["accepted"] == 0 and empty.json()["dropped"] == {"bot": 0}
        scoped = {"authorization": "Bearer shop-token"}
        other = await reporting.get(
            "/stats/ingest", params={"site_id": "x.example"}, headers=scoped
        )
        assert other.status_code == 403
        assert (
            await reporting.get("/stats/ingest", params={"site_id": "shop.example"})
        ).status_code == 401
        assert (
            await reporting.get("/stats/ingest", params={"site_id": "s", "x": "1"}, headers=bearer)
        ).status_code == 422
