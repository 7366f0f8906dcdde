"""EventStream's domain operations against a real Valkey: appending, reading new and own
pending entries, acknowledging, claiming, dead-lettering and the dead-letter stream, and the
backlog as the group sees it (also before any group exists)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from queueflow.core.config import Settings
from queueflow.core.errors import StreamUnavailable
from queueflow.core.stream import (
    DELIVERIES_FIELD,
    EVENT_FIELD,
    REASON_FIELD,
    SOURCE_ID_FIELD,
    SOURCE_STREAM_FIELD,
    TRACEPARENT_FIELD,
    Entry,
    EventStream,
    connect,
)
from queueflow.embedded import free_port

TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def stream(parts) -> EventStream:
    return parts[0]


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
async def stream_over(request, settings: Settings) -> AsyncIterator[EventStream]:
    """The stream through a client speaking RESP2 or RESP3 (?protocol=3 in the URL)."""
    client = redis.from_url(settings.redis_dsn(), protocol=request.param, socket_timeout=5)
    yield EventStream(client, settings)
    await client.aclose()


async def stored(r: redis.Redis, name: str) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in await r.xrange(name)]


async def test_appends_one_and_many_with_and_without_trace_context(
    stream: EventStream, redis_client, settings
) -> None:
    await stream.add([b'{"n":1}'])
    await stream.add([b'{"n":2}', b'{"n":3}'], TRACEPARENT)
    await asyncio.gather(*(stream.add([b'{"n":%d}' % n]) for n in range(4, 54)))
    entries = await stored(redis_client, settings.stream)
    assert entries[:3] == [
        {EVENT_FIELD: b'{"n":1}'},
        {EVENT_FIELD: b'{"n":2}', TRACEPARENT_FIELD: TRACEPARENT},
        {EVENT_FIELD: b'{"n":3}', TRACEPARENT_FIELD: TRACEPARENT},
    ]
    assert sorted(e[EVENT_FIELD] for e in entries[3:]) == sorted(
        b'{"n":%d}' % n for n in range(4, 54)
    )


async def test_reads_new_then_own_pending_until_acknowledged(stream_over: EventStream) -> None:
    stream = stream_over
    await stream.ensure_group()
    await stream.ensure_group()  # a second time is no error
    assert await stream.read_new("a", count=10, block_ms=50) == []  # nothing within BLOCK
    await stream.add([b"1", b"2", b"3"])
    first = await stream.read_new("a", count=2, block_ms=None)
    assert [e.fields for e in first] == [{EVENT_FIELD: b"1"}, {EVENT_FIELD: b"2"}]
    assert first[0].received_ms > 0
    rest = await stream.read_new("b", count=10, block_ms=None)
    assert [e.fields for e in rest] == [{EVENT_FIELD: b"3"}]
    assert await stream.read_new("a", count=10, block_ms=None) == []  # all delivered

    # What a consumer holds comes back to it, and to it only, until acknowledged.
    assert await stream.read_own_pending("a", count=10) == first
    assert await stream.read_own_pending("b", count=10) == rest
    assert await stream.pending_count("a") == 2
    await stream.ack([first[0].id])
    await stream.ack([])  # nothing to acknowledge: no round trip, no error
    assert await stream.read_own_pending("a", count=10) == first[1:]
    assert await stream.pending_count("a") == 1 and await stream.pending_count("z") == 0


async def test_a_pending_entry_deleted_from_the_stream_reads_without_fields(
    stream: EventStream, redis_client, settings
) -> None:
    await stream.ensure_group()
    await stream.add([b"1", b"2"])
    delivered = await stream.read_new("a", count=10, block_ms=None)
    await redis_client.xdel(settings.stream, delivered[0].id)
    assert await stream.read_own_pending("a", count=10) == [
        Entry(delivered[0].id, {}),
        delivered[1],
    ]


async def test_claims_idle_entries_and_counts_deliveries(stream: EventStream) -> None:
    await stream.ensure_group()
    await stream.add([b"1", b"2", b"3"])
    held = await stream.read_new("gone", count=10, block_ms=None)
    assert await stream.delivery_counts("gone", held) == {e.id: 1 for e in held}
    assert await stream.delivery_counts("gone", []) == {}

    cursor, page = await stream.claim_idle("me", min_idle_ms=0, cursor=b"0-0", count=2)
    assert page == held[:2] and cursor == held[2].id
    cursor, page = await stream.claim_idle("me", min_idle_ms=0, cursor=cursor, count=2)
    assert page == held[2:] and cursor == b"0-0"  # the pass is complete
    assert await stream.delivery_counts("me", held) == {e.id: 2 for e in held}
    assert await stream.read_own_pending("gone", count=10) == []
    _, none_idle = await stream.claim_idle("you", min_idle_ms=60_000, cursor=b"0-0", count=10)
    assert none_idle == []


async def test_dead_letters_are_kept_listed_paged_and_deleted(
    stream: EventStream, redis_client, settings
) -> None:
    await stream.ensure_group()
    await stream.add([b"e%d" % n for n in range(5)], TRACEPARENT)
    entries = await stream.read_new("w", count=10, block_ms=None)
    for n, entry in enumerate(entries):
        await stream.dead_letter(entry, f"reason {n}", n + 1)
    assert await stream.pending_count("w") == 0  # dead-lettered means acknowledged

    assert await stream.dead_letter_count() == 5
    letters = await stream.dead_letters(count=10)
    assert [letter.fields for letter in letters] == [
        {
            EVENT_FIELD: b"e%d" % n,
            TRACEPARENT_FIELD: TRACEPARENT,
            REASON_FIELD: b"reason %d" % n,
            SOURCE_ID_FIELD: entry.id,
            SOURCE_STREAM_FIELD: settings.stream.encode(),
            DELIVERIES_FIELD: b"%d" % (n + 1),
        }
        for n, entry in enumerate(entries)
    ]
    # Pages follow on from the last id seen, as bytes or as text.
    assert await stream.dead_letters(count=2) == letters[:2]
    assert await stream.dead_letters(count=2, after=letters[1].id) == letters[2:4]
    assert await stream.dead_letters(count=2, after=letters[3].id.decode()) == letters[4:]
    assert await stream.dead_letters(count=2, after=letters[4].id) == []

    assert await stream.get_dead_letter(letters[2].id) == letters[2]
    assert await stream.get_dead_letter(letters[2].id.decode()) == letters[2]
    assert await stream.get_dead_letter("1-1") is None

    assert await stream.delete_dead_letters([]) == 0
    assert await stream.delete_dead_letters([letters[0].id, letters[1].id.decode(), "1-1"]) == 2
    assert await stream.dead_letters(count=10) == letters[2:]
    assert await stream.delete_dead_letters(None) == 3
    assert await stream.dead_letter_count() == 0
    assert not await redis_client.exists(settings.dead_letter_stream)
    assert await stream.delete_dead_letters(None) == 0
    assert (await stream.stats()).dead_letters == 0


async def test_backlog_and_stats_before_and_after_a_group_exists(
    stream: EventStream, settings
) -> None:
    empty = await stream.stats()
    assert (empty.length, empty.lag, empty.pending, empty.consumers) == (0, 0, 0, 0)
    assert empty.oldest_pending_ms is None and await stream.backlog() == 0

    await stream.add([b"1", b"2", b"3"])
    before = await stream.stats()  # no worker ever ran: every entry still to be processed
    assert (before.length, before.lag, before.pending, before.consumers) == (3, 3, 0, 0)
    assert await stream.backlog() == 3

    await stream.ensure_group()
    (held, *_) = await stream.read_new("w", count=1, block_ms=None)
    after = await stream.stats()
    assert (after.length, after.lag, after.pending, after.consumers) == (3, 2, 1, 1)
    assert after.oldest_pending_ms == held.received_ms
    assert await stream.backlog() == 3
    await stream.ack([held.id])
    assert await stream.backlog() == 2
    await stream.ping()


async def test_a_client_that_fails_fast_is_stream_unavailable(settings: Settings) -> None:
    client = connect(f"redis://127.0.0.1:{free_port()}", timeout_s=1)
    try:
        with pytest.raises(StreamUnavailable):
            await EventStream(client, settings).add([b"{}"])
        with pytest.raises(StreamUnavailable):
            await EventStream(client, settings).add([b"{}", b"{}"])
    finally:
        await client.aclose()
