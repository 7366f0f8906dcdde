"""POST /event and /events over a real port against a real Redis: what is accepted lands in the
stream exactly once, and every class of bad input changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import re
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
from tests.helpers import event, serve, until

JSON = {"content-type": "application/json"}
UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


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
            for path, body in (("/event", event()), ("/events", [event(event_id="c-1"), event()])):
                started = time.monotonic()
                response = await client.post(path, json=body)
                assert time.monotonic() - started < 2.0
                assert response.status_code == 503
                assert int(response.headers["retry-after"]) >= 1
                ids = response.json()["event_ids"]
                assert len(ids) == (1 if path == "/event" else 2)
                assert all(UUID7.match(i) for i in ids[-1:]) and response.json()["detail"]
                if path == "/events":
                    assert ids[0] == "c-1"
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
        (assigned,) = refused.json()["event_ids"]
        assert UUID7.match(assigned)
        refused = await client.post("/events", json=[event(event_id="mine"), event()])
        assert refused.status_code == 503 and refused.json()["event_ids"][0] == "mine"
        # Bad input is told so, not to retry it.
        assert (await client.post("/event", json=event(path="x"))).status_code == 422
        assert (await client.post("/events", content=b"[{")).status_code == 415
        bad_json = await client.post("/events", content=b"[{", headers=JSON)
        assert bad_json.status_code == 400
        assert await redis_client.xlen(settings.stream) == 8
        # A worker catches up: everything delivered and acknowledged.
        await stream.ensure_group()
        await stream.ack([e.id for e in await stream.read_new("w", count=100, block_ms=10)])
        await asyncio.sleep(0.2)
        assert (await client.post("/event", json=event())).status_code == 202
        metrics = (await client.get("/metrics")).text
        assert 'queueflow_ingest_events_rejected_total{reason="backpressure"}' in metrics


@contextlib.asynccontextmanager
async def slow_replies(redis_url: str) -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A proxy in front of Redis that forwards commands at once but holds Redis's replies
    while `replying` is clear: a Redis that runs the command and answers too late."""
    host, port = redis_url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1].rsplit(":", 1)
    replying = asyncio.Event()
    replying.set()
    tasks: set[asyncio.Task] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, held: bool):
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if held:
                    await replying.wait()
                writer.write(data)
                await writer.drain()
        writer.close()

    async def connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        for task in (pipe(reader, up_writer, False), pipe(up_reader, writer, True)):
            tasks.add(asyncio.create_task(task))

    server = await asyncio.start_server(connect, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], replying
    finally:
        for task in tasks:
            task.cancel()
        server.close()
        await server.wait_closed()


async def test_a_503_after_a_redis_timeout_names_the_ids_that_landed(settings, redis_client):
    # The command reached Redis and ran; only its reply was late. The 503's ids are the ids
    # in the stream, so a client that retries with them is counted once.
    async with slow_replies(settings.redis_dsn()) as (port, replying):
        proxied = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"})
        async with serve(create_app(proxied)) as client:
            for path, body in (
                ("/event", event()),
                ("/events", [event(event_id="client-1"), event(), event()]),
            ):
                replying.set()  # a connection that is up, so the command itself goes out
                await until(lambda: _accepted(client, [event(event_id="warm")]))
                replying.clear()
                started = time.monotonic()
                response = await client.post(path, json=body)
                assert response.status_code == 503 and time.monotonic() - started < 2.0
                assert response.headers["retry-after"]
                ids = response.json()["event_ids"]
                stored = [e.event_id for e in await stream_events(redis_client, settings)]
                assert stored[-len(ids) :] == ids
            assert ids[0] == "client-1" and len(set(ids)) == 3
            replying.set()
            await until(lambda: _accepted(client, [event(event_id=i) for i in ids]))
    stored = [e.event_id for e in await stream_events(redis_client, settings)]
    assert stored[-6:] == ids + ids  # the retry: the same ids again, which the worker dedupes


async def _accepted(client: httpx.AsyncClient, body: list) -> bool:
    return (await client.post("/events", json=body)).status_code == 202


async def test_a_paused_redis_gets_503s_naming_the_events_ids(settings, redis_client) -> None:
    async with serve(create_app(settings)) as client:
        assert (await client.post("/event", json=event())).status_code == 202
        await redis_client.execute_command("CLIENT", "PAUSE", "2500", "WRITE")
        try:
            started = time.monotonic()
            response = await client.post("/events", json=[event(event_id="p-1"), event()])
            assert response.status_code == 503 and time.monotonic() - started < 2.0
            ids = response.json()["event_ids"]
            assert ids[0] == "p-1" and UUID7.match(ids[1])
        finally:
            await redis_client.execute_command("CLIENT", "UNPAUSE")
        await until(lambda: _accepted(client, [event()]))
    # Whatever of the paused batch landed carries the ids the 503 named.
    stored = [e.event_id for e in await stream_events(redis_client, settings)]
    assert set(stored[1:-1]) <= set(ids)


# --- Content-Type, Content-Encoding ------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "application/json; charset=latin-1",
        'text/plain; charset="iso-8859-1"',
        "application/json-seq",
        "multipart/form-data",
    ],
)
async def test_a_missing_or_unsupported_content_type_is_415(
    client, redis_client, settings, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    for path, body in (("/event", event()), ("/events", [event()])):
        request = client.build_request("POST", path, content=json.dumps(body), headers=headers)
        assert ("content-type" in request.headers) == (content_type is not None)
        response = await client.send(request)
        assert response.status_code == 415, (content_type, response.text)
        assert "application/json" in response.json()["detail"]
    assert await redis_client.xlen(settings.stream) == 0


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        'text/plain;charset="UTF-8"',
        "text/plain; format=x",
    ],
)
async def test_json_and_text_plain_with_utf8_are_accepted(client, content_type: str) -> None:
    response = await client.post(
        "/event", content=json.dumps(event()), headers={"content-type": content_type}
    )
    assert response.status_code == 202, response.text


async def test_gzip_bodies_are_inflated(client, redis_client, settings) -> None:
    items = [event(user_id=f"g{i}") for i in range(50)]
    for path, body in (("/events", items), ("/event", event(user_id="single"))):
        for coding in ("gzip", "x-gzip", "identity, gzip"):
            response = await client.post(
                path,
                content=gzip.compress(json.dumps(body).encode()),
                headers={**JSON, "content-encoding": coding},
            )
            assert response.status_code == 202, response.text
    response = await client.post(
        "/event",
        content=json.dumps(event()),
        headers={"content-type": "text/plain", "content-encoding": "identity"},
    )
    assert response.status_code == 202
    assert await redis_client.xlen(settings.stream) == 3 * 51 + 1


async def test_gzip_is_inflated_under_the_body_limit(client, redis_client, settings) -> None:
    limit = settings.max_body_bytes
    bomb = gzip.compress(b"[" + b" " * (64 * 1024 * 1024) + b"]")  # 64 MiB in ~64 KB
    assert len(bomb) < limit
    started = time.monotonic()
    response = await client.post(
        "/events", content=bomb, headers={**JSON, "content-encoding": "gzip"}
    )
    assert response.status_code == 413 and time.monotonic() - started < 1
    # Over the limit inflated, though small as sent.
    big = [event(referrer="r" * 1000)] * 70
    assert len(json.dumps(big)) > limit
    response = await client.post(
        "/events",
        content=gzip.compress(json.dumps(big).encode()),
        headers={**JSON, "content-encoding": "gzip"},
    )
    assert response.status_code == 413
    for bad in (b"not gzip", gzip.compress(json.dumps(event()).encode())[:-6], b""):
        response = await client.post(
            "/event", content=bad, headers={**JSON, "content-encoding": "gzip"}
        )
        assert response.status_code == 400, bad
    assert await redis_client.xlen(settings.stream) == 0


@pytest.mark.parametrize("coding", ["br", "deflate", "compress", "zstd", "gzip, gzip", "bogus"])
async def test_other_content_encodings_are_415(client, redis_client, settings, coding) -> None:
    response = await client.post(
        "/events", content=json.dumps([event()]), headers={**JSON, "content-encoding": coding}
    )
    assert response.status_code == 415 and "gzip" in response.json()["detail"]
    assert await redis_client.xlen(settings.stream) == 0


# --- Duplicate keys, malformed and extreme JSON -------------------------------------------------


async def test_duplicate_keys_are_422_naming_the_key(client, redis_client, settings) -> None:
    single = json.dumps(event())[:-1] + ', "path": "/again"}'
    response = await client.post("/event", content=single, headers=JSON)
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"type": "value_error", "loc": ["body", "path"], "msg": "duplicate key `path`"}
    ]
    prop = json.dumps(event())[:-1] + ', "properties": {"a": 1, "a": 2}}'
    response = await client.post(
        "/events", content=f"[{json.dumps(event())}, {prop}]", headers=JSON
    )
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", 1, "properties", "a"] and "duplicate" in error["msg"]
    assert await redis_client.xlen(settings.stream) == 0


@pytest.mark.parametrize(
    "body",
    [
        b'[{"site_id": "s"}] trailing',
        b"[" + json.dumps(event()).encode(),
        b"[" * 20_000 + b"]" * 20_000,
        b'{"properties": {"a": ' + b"[" * 20_000 + b"]" * 20_000 + b"}}",
        b'[{"site_id": 1e999}]',
        b"[" + json.dumps(event(timestamp="0001-01-01T00:00:00+14:00")).encode() + b"]",
        json.dumps([event(timestamp="9999-12-31T23:59:59-12:00")]).encode(),
    ],
    ids=[
        "trailing",
        "truncated",
        "deep",
        "deep-in-properties",
        "huge-number",
        "year-0",
        "year-10000",
    ],
)
async def test_malformed_and_extreme_json_is_4xx_on_both_routes(
    client, redis_client, settings, body: bytes
) -> None:
    for path in ("/event", "/events"):
        response = await client.post(path, content=body, headers=JSON)
        assert response.status_code in (400, 422), (path, response.status_code, response.text)
        assert response.json()["detail"]
    assert await redis_client.xlen(settings.stream) == 0


async def test_a_batch_of_empty_objects_is_refused_cheaply(client) -> None:
    body = b"[" + b",".join([b"{}"] * 21_845) + b"]"
    response = await client.post("/events", content=body, headers=JSON)
    assert response.status_code == 422 and len(response.content) < 200
    many_bad = json.dumps([{}] * 400).encode()
    response = await client.post("/events", content=many_bad, headers=JSON)
    detail = response.json()["detail"]
    assert response.status_code == 422 and len(detail) == 51
    assert detail[-1]["type"] == "too_many_errors" and "350 more" in detail[-1]["msg"]


@pytest.mark.parametrize("char", ["é", "中", "😀"])
async def test_byte_limits_over_http(client, redis_client, settings, char: str) -> None:
    at = "/" + char * ((2048 - 1) // len(char.encode()))
    at += "a" * (2048 - len(at.encode()))
    assert (await client.post("/event", json=event(path=at))).status_code == 202
    response = await client.post("/event", json=event(path=at + "a"))
    assert response.status_code == 422 and "2048 bytes" in response.json()["detail"][0]["msg"]
    assert await redis_client.xlen(settings.stream) == 1


# --- HTTP/1.0 clients: every answer has a Content-Length -------------------------------------


async def http10(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)  # HTTP/1.0: the server closes the connection
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(
    ("method", "path", "content_type", "body", "status"),
    [
        ("POST", "/event", "application/json", json.dumps(event()).encode(), 202),
        ("POST", "/events", "application/json", json.dumps([event()]).encode(), 202),
        ("POST", "/event", "application/json", b'{"site_id": 1}', 422),
        ("POST", "/events", "application/json", b"[{", 400),
        ("POST", "/event", "application/xml", b"<e/>", 415),
        ("GET", "/events", None, b"", 405),
    ],
)
async def test_http10_clients_get_a_content_length(
    client, method: str, path: str, content_type: str | None, body: bytes, status: int
) -> None:
    port = int(str(client.base_url).rsplit(":", 1)[1])
    head = f"{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    got, headers, answer = await http10(port, head.encode() + b"\r\n" + body)
    assert got == status
    assert "transfer-encoding" not in headers
    assert int(headers["content-length"]) == len(answer) > 0
    json.loads(answer)


async def test_the_openapi_document_says_what_is_enforced(client) -> None:
    schema = (await client.get("/openapi.json")).json()
    fields = schema["components"]["schemas"]["Event"]["properties"]
    timestamp = fields["timestamp"]
    assert timestamp["anyOf"][0]["format"] == "date-time" and "UTC" in timestamp["description"]
    assert "timestamp" not in schema["components"]["schemas"]["Event"]["required"]
    assert fields["path"]["pattern"].startswith("^/")
    assert fields["event_id"]["anyOf"][0]["pattern"] == "^[A-Za-z0-9._:-]+$"
    for name, limit in (("site_id", 256), ("path", 2048), ("referrer", 2048)):
        assert f"{limit} bytes" in fields[name]["description"]
    for route in ("/event", "/events"):
        responses = schema["paths"][route]["post"]["responses"]
        assert set(responses) == {"202", "400", "403", "413", "415", "422", "503"}
        unavailable = responses["503"]["content"]["application/json"]["schema"]
        assert unavailable["required"] == ["detail", "event_ids"]
        assert "Retry-After" in responses["503"]["headers"]
    assert set(schema["paths"]["/tracker.js"]["get"]["responses"]) == {"200", "304", "403", "422"}
    readyz = schema["paths"]["/readyz"]["get"]["responses"]
    assert "503" in readyz
    metrics = schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]


async def test_what_ingest_would_otherwise_ignore_is_refused(settings, redis_client) -> None:
    """A query string, a transfer-coding other than chunked, many gzip members, or an unknown
    field with a huge name: each refused, with an answer that does not grow with the input."""
    import gzip

    body = json.dumps(event()).encode()
    async with serve(create_app(settings)) as client:
        for path in ("/event?x=1", "/event?%00", "/events?a=1&a=2"):
            reply = await client.post(path, content=body, headers=JSON)
            assert reply.status_code == 422, path
        # httpx refuses to send it, so a raw socket does.
        reader, writer = await asyncio.open_connection(client.base_url.host, client.base_url.port)
        writer.write(
            b"POST /event HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: gzip, chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
        )
        status = (await reader.readline()).split()[1]
        writer.close()
        assert status in (b"400", b"415")  # the HTTP parser or ingest refuses it
        members = gzip.compress(b"") * 20 + gzip.compress(body)
        reply = await client.post(
            "/event", content=members, headers={**JSON, "content-encoding": "gzip"}
        )
        assert reply.status_code == 400 and "gzip members" in reply.text
        huge = json.dumps({**event(), "k" * 60_000: 1}).encode()
        reply = await client.post("/event", content=huge, headers=JSON)
        assert reply.status_code == 422 and len(reply.content) < 1_000
        for path in ("/docs?x=1", "/openapi.json?x=1"):
            assert (await client.get(path)).status_code == 422, path
    assert await redis_client.xlen(settings.stream) == 0
