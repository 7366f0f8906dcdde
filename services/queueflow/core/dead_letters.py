"""Reading, replaying and purging the dead-letter stream (`queueflow dead-letters`).

A dead letter holds the original entry's fields plus `reason`, `source_id` and `deliveries`.
Replaying appends the original `event` payload to the event stream again, then deletes the
dead letter: in that order, so a crash in between replays twice, which the worker's
deduplication on event_id absorbs — the event is still counted exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as redis

from queueflow.core.stream import (
    DELIVERIES_FIELD,
    EVENT_FIELD,
    REASON_FIELD,
    SOURCE_ID_FIELD,
    TRACEPARENT_FIELD,
    EventStream,
)

META_FIELDS = (REASON_FIELD, SOURCE_ID_FIELD, DELIVERIES_FIELD)


@dataclass(frozen=True)
class DeadLetter:
    id: str
    reason: str
    source_id: str
    deliveries: int
    original: dict[str, str]  # the entry's own fields, as text

    @property
    def replayable(self) -> bool:
        return EVENT_FIELD.decode() in self.original

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "reason": self.reason,
            "source_id": self.source_id,
            "deliveries": self.deliveries,
            "fields": self.original,
        }


def _dead_letter(entry_id: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    def text(value: bytes) -> str:
        return value.decode("utf-8", "backslashreplace")

    return DeadLetter(
        id=text(entry_id),
        reason=text(fields.get(REASON_FIELD, b"")),
        source_id=text(fields.get(SOURCE_ID_FIELD, b"")),
        deliveries=int(fields.get(DELIVERIES_FIELD, b"0") or 0),
        original={text(k): text(v) for k, v in fields.items() if k not in META_FIELDS},
    )


class DeadLetters:
    def __init__(self, stream: EventStream) -> None:
        self.stream = stream
        self.client: redis.Redis = stream.client
        self.name = stream.dead_letter_name

    async def count(self) -> int:
        return await self.client.xlen(self.name)

    async def page(self, *, count: int, after: str | None = None) -> list[DeadLetter]:
        start = f"({after}" if after else "-"
        entries = await self.client.xrange(self.name, min=start, max="+", count=count)
        return [_dead_letter(entry_id, fields) for entry_id, fields in entries]

    async def get(self, entry_id: str) -> DeadLetter | None:
        entries = await self.client.xrange(self.name, min=entry_id, max=entry_id)
        return _dead_letter(*entries[0]) if entries else None

    async def replay(self, ids: list[str] | None) -> tuple[int, list[str]]:
        """Replay the given dead letters (all when None); returns (replayed, skipped ids)."""
        replayed, skipped = 0, []
        async for letter, raw in self._select(ids):
            if EVENT_FIELD not in raw:
                skipped.append(letter.id)  # nothing to replay: the entry had no event field
                continue
            await self.stream.add([raw[EVENT_FIELD]], raw.get(TRACEPARENT_FIELD))
            await self.client.xdel(self.name, letter.id)
            replayed += 1
        return replayed, skipped

    async def purge(self, ids: list[str] | None) -> int:
        if ids is None:
            removed = await self.client.xlen(self.name)
            await self.client.delete(self.name)
            return removed
        return await self.client.xdel(self.name, *ids) if ids else 0

    async def _select(self, ids: list[str] | None):
        if ids is not None:
            for entry_id in ids:
                for found_id, fields in await self.client.xrange(self.name, entry_id, entry_id):
                    yield _dead_letter(found_id, fields), fields
            return
        after = "-"
        while entries := await self.client.xrange(self.name, min=after, max="+", count=100):
            for found_id, fields in entries:
                yield _dead_letter(found_id, fields), fields
            after = f"({entries[-1][0].decode()}"
