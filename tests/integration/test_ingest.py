"""POST /event and /events over a real port against a real Redis: what is accepted lands in the
stream exactly once, and every class of bad input changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import pytest
import redis.asyncio as redis
from redis._parsers import _AsyncRESP2Parser

from queueflow.core.config import Settings
from queueflow.core.errors import StreamUnavailable
from queueflow.core.events import decode_entry
from queueflow.core.stream import EVENT_FIELD, EventStream
from queueflow.embedded import free_port
from queueflow.ingest.app import create_app
from tests.helpers import event, serve


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(settings)) as client:
        yield client


async def stream_events(r: redis.Redis, settings: Settings) -> list:
    return [decode_entry(f[EVENT_FIELD]) for _, f in await r.xrange(settings.stream)]


async def test_one_event_is_accepted_and_appended(client, redis_client, settings) -> None:
    response = await client.post("/event", json=event(path="/pricing"))
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "accepted"
    (stored,) = await stream_events(redis_client, settings)
    assert stored.event_id == body["event_id"] and stored.path == "/pricing"


async def test_a_client_event_id_is_kept(client, redis_client, settings) -> None:
    response = await client.post("/event", json=event(event_id="order-42:v1"))
    assert response.json()["event_id"] == "order-42:v1"
    assert (await stream_events(redis_client, settings))[0].event_id == "order-42:v1"


async def test_send_beacon_text_plain_bodies_are_json(client, redis_client, settings) -> None:
    response = await client.post(
        "/event",
        content=json.dumps(event()),
        headers={"content-type": "text/plain;charset=UTF-8"},
    )
    assert response.status_code == 202
    assert await redis_client.xlen(settings.stream) == 1


async def test_a_batch_is_accepted_whole(client, redis_client, settings) -> None:
    items = [event(user_id=f"u{i}") for i in range(100)]
    response = await client.post("/events", json=items)
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 100 and len(set(body["event_ids"])) == 100
    stored = await stream_events(redis_client, settings)
    assert [e.event_id for e in stored] == body["event_ids"]
    assert [e.user_id for e in stored] == [f"u{i}" for i in range(100)]


async def test_concurrent_requests_share_round_trips_and_each_lands_once(
    client, redis_client, settings
) -> None:
    singles = [client.post("/event", json=event(user_id=f"s{i}")) for i in range(200)]
    batches = [
        client.post("/events", json=[event(user_id=f"b{i}-{j}") for j in range(10)])
        for i in range(20)
    ]
    responses = await asyncio.gather(*singles, *batches)
    assert {r.status_code for r in responses} == {202}
    accepted = [r.json()["event_id"] for r in responses[:200]]
    accepted += [i for r in responses[200:] for i in r.json()["event_ids"]]
    stored = await stream_events(redis_client, settings)
    assert sorted(e.event_id for e in stored) == sorted(accepted)
    assert len(set(accepted)) == 400
    # Each batch's events stay together and in order, whatever was appended beside them.
    users = [e.user_id for e in stored]
    for i in range(20):
        first = users.index(f"b{i}-0")
        assert users[first : first + 10] == [f"b{i}-{j}" for j in range(10)]


async def test_a_batch_redis_refuses_is_503_and_the_next_one_lands(
    client, redis_client, settings
) -> None:
    await redis_client.set(settings.stream, "not a stream")  # every XADD fails inside EXEC
    response = await client.post("/events", json=[event(), event()])
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert await redis_client.get(settings.stream) == b"not a stream"
    await redis_client.delete(settings.stream)
    assert (await client.post("/events", json=[event(), event()])).status_code == 202
    assert await redis_client.xlen(settings.stream) == 2


async def test_appends_without_the_hiredis_parser(settings, redis_client) -> None:
    # The transaction's replies are read from hiredis's reader when there is one; redis-py's
    # pure-Python parser takes the slower, public path.
    client = redis.from_url(settings.redis_dsn(), parser_class=_AsyncRESP2Parser)
    try:
        stream = EventStream(client, settings)
        await asyncio.gather(stream.add([b'{"n":1}', b'{"n":2}']), stream.add([b'{"n":3}']))
        name = f"{settings.stream}:taken"
        await redis_client.set(name, "x")
        taken = EventStream(client, settings.model_copy(update={"stream": name}))
        with pytest.raises(StreamUnavailable):
            await taken.add([b"{}", b"{}"])
    finally:
        await client.aclose()
        await redis_client.delete(f"{settings.stream}:taken")
    entries = await redis_client.xrange(settings.stream)
    assert [f[EVENT_FIELD] for _, f in entries] == [b'{"n":1}', b'{"n":2}', b'{"n":3}']


async def test_the_urls_credentials_and_database_apply_to_appends(settings, redis_client) -> None:
    user, password = f"ingest-{settings.stream}", "s3cret/:@"
    await redis_client.acl_setuser(
        user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"]
    )
    base = settings.redis_dsn().split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    url = f"redis://{user}:{quote(password, safe='')}@{base}/5"
    db5 = redis.from_url(url)
    try:
        async with serve(create_app(settings.model_copy(update={"redis_url": url}))) as client:
            assert (await client.post("/event", json=event())).status_code == 202
            assert (await client.post("/events", json=[event(), event()])).status_code == 202
        assert await db5.xlen(settings.stream) == 3
        assert await redis_client.xlen(settings.stream) == 0  # nothing in database 0
    finally:
        await db5.delete(settings.stream)
        await db5.aclose()
        await redis_client.acl_deluser(user)


BAD_SINGLE = [
    pytest.param(b"{not json", "application/json", 400, id="malformed-json"),
    pytest.param(b"", "application/json", 400, id="empty-body"),
    pytest.param(json.dumps(event(site_id=5)).encode(), "application/json", 422, id="wrong-type"),
    pytest.param(json.dumps({"site_id": "s"}).encode(), "application/json", 422, id="missing"),
    pytest.param(json.dumps(event(x=1)).encode(), "application/json", 422, id="unknown-field"),
    pytest.param(json.dumps(event(path="x")).encode(), "application/json", 422, id="bad-path"),
    pytest.param(
        json.dumps(event(user_id="a\u0000b")).encode(), "application/json", 422, id="nul-in-string"
    ),
    pytest.param(
        json.dumps(event(site_id="\u202e\u0007bell")).encode(),
        "application/json",
        422,
        id="control-chars",
    ),
    pytest.param(
        json.dumps(event(timestamp="2001-01-01T00:00:00Z")).encode(),
        "application/json",
        422,
        id="too-old",
    ),
    pytest.param(json.dumps([event()]).encode(), "application/json", 422, id="array-to-event"),
    pytest.param(
        json.dumps(event()).encode(), "application/x-www-form-urlencoded", 415, id="form-media-type"
    ),
    pytest.param(json.dumps(event()).encode(), "application/xml", 415, id="xml-media-type"),
    pytest.param(b'{"site_id": "\\ud800"}', "application/json", 400, id="lone-surrogate"),
]


@pytest.mark.parametrize(("body", "content_type", "status"), BAD_SINGLE)
async def test_bad_input_is_refused_and_nothing_is_enqueued(
    client, redis_client, settings, body: bytes, content_type: str, status: int
) -> None:
    response = await client.post("/event", content=body, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    assert response.json()["detail"]
    assert await redis_client.xlen(settings.stream) == 0


async def test_validation_errors_have_fastapis_shape(client) -> None:
    response = await client.post("/event", json=event(path="nope"))
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "path"] and error["type"] and error["msg"]


async def test_an_oversize_body_is_413_by_content_length(client, redis_client, settings) -> None:
    big = event(properties={"k": "v" * 500}) | {"referrer": "r" * 2000}
    body = json.dumps([big] * 40).encode()
    assert len(body) > settings.max_body_bytes
    response = await client.post(
        "/events", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert await redis_client.xlen(settings.stream) == 0


async def test_an_oversize_chunked_body_is_cut_off_while_reading(client, redis_client, settings):
    async def chunks() -> AsyncIterator[bytes]:
        yield b"["
        for _ in range(200):  # ~100 KB without a Content-Length header
            yield json.dumps(event(referrer="r" * 400)).encode() + b","
        yield b"{}]"

    response = await client.post(
        "/events", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert await redis_client.xlen(settings.stream) == 0


async def test_a_batch_with_one_bad_item_enqueues_nothing(client, redis_client, settings) -> None:
    items = [event(), event(), event(event_type=""), event()]
    response = await client.post("/events", json=items)
    assert response.status_code == 422
    assert [e["loc"][:3] for e in response.json()["detail"]] == [["body", 2, "event_type"]]
    assert await redis_client.xlen(settings.stream) == 0


@pytest.mark.parametrize("items", [[], {"site_id": "s"}, "nope"], ids=["empty", "object", "str"])
async def test_a_batch_must_be_a_non_empty_array(client, redis_client, settings, items) -> None:
    response = await client.post("/events", json=items)
    assert response.status_code == 422
    assert await redis_client.xlen(settings.stream) == 0


async def test_a_batch_over_the_count_limit_is_refused(settings, redis_client) -> None:
    small = settings.model_copy(update={"max_batch_events": 3})
    async with serve(create_app(small)) as client:
        response = await client.post("/events", json=[event()] * 4)
    assert response.status_code == 422
    assert await redis_client.xlen(settings.stream) == 0


async def test_duplicates_are_enqueued_for_the_worker_to_dedupe(client, redis_client, settings):
    for _ in range(3):
        assert (await client.post("/event", json=event(event_id="same"))).status_code == 202
    assert [e.event_id for e in await stream_events(redis_client, settings)] == ["same"] * 3


async def test_wrong_methods_are_405(client) -> None:
    assert (await client.get("/event")).status_code == 405


async def test_probes_and_openapi(client) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"redis": "ok"}
    schema = (await client.get("/openapi.json")).json()
    assert {"/event", "/events", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    body = schema["paths"]["/event"]["post"]["requestBody"]["content"]["application/json"]
    assert "site_id" in json.dumps(schema["components"]["schemas"]["Event"])
    assert body["schema"]["$ref"].endswith("/Event")


async def test_metrics_count_accepted_and_rejected(client) -> None:
    await client.post("/event", json=event())
    await client.post("/event", content=b"{", headers={"content-type": "application/json"})
    text = (await client.get("/metrics")).text
    assert "queueflow_ingest_events_accepted_total" in text
    assert 'queueflow_ingest_events_rejected_total{reason="malformed_json"}' in text
    assert 'queueflow_http_requests_total{route="/event",status="202"}' in text


@contextlib.asynccontextmanager
async def blackhole() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never answers: a hung Redis."""
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read(-1)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("kind", ["refused", "hung"])
async def test_redis_unreachable_is_503_with_retry_after_within_2s(settings, kind: str) -> None:
    async with contextlib.AsyncExitStack() as stack:
        # "refused": nothing listens on the port; "hung": it accepts and never answers.
        port = await stack.enter_async_context(blackhole()) if kind == "hung" else free_port()
        down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"})
        async with serve(create_app(down)) as client:
            for path, body in (("/event", event()), ("/events", [event(), event()])):
                started = time.monotonic()
                response = await client.post(path, json=body)
                assert time.monotonic() - started < 2.0
                assert response.status_code == 503
                assert int(response.headers["retry-after"]) >= 1
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["redis"].startswith("unav")


async def test_backlog_over_the_limit_is_503_until_workers_catch_up(settings, redis_client):
    limited = settings.model_copy(update={"backlog_limit": 5, "backlog_refresh_ms": 50})
    stream = EventStream(redis_client, settings)
    async with serve(create_app(limited)) as client:
        assert (await client.post("/events", json=[event()] * 8)).status_code == 202
        await asyncio.sleep(0.2)
        refused = await client.post("/event", json=event())
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0
        assert await redis_client.xlen(settings.stream) == 8
        # A worker catches up: everything delivered and acknowledged.
        await stream.ensure_group()
        await stream.ack([e.id for e in await stream.read("w", count=100, block_ms=10)])
        await asyncio.sleep(0.2)
        assert (await client.post("/event", json=event())).status_code == 202
        metrics = (await client.get("/metrics")).text
        assert 'queueflow_ingest_events_rejected_total{reason="backpressure"}' in metrics
