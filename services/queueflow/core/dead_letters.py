"""Reading, replaying and purging the dead-letter stream (`queueflow dead-letters`).

A dead letter holds the original entry's fields plus `reason`, `source_id`, `source_stream`
(the partition it came from) and `deliveries`. Replaying appends the original `event` payload
to the event stream again (to a partition, as ingest appends), then deletes the
dead letter: in that order, so a crash in between replays twice, which the worker's
deduplication on event_id absorbs — the event is still counted exactly once. The Redis side
is EventStream's (core/stream.py); this is the operator's view of it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from queueflow.core.stream import (
    DELIVERIES_FIELD,
    EVENT_FIELD,
    REASON_FIELD,
    SOURCE_ID_FIELD,
    SOURCE_STREAM_FIELD,
    TRACEPARENT_FIELD,
    Entry,
    EventStream,
)

META_FIELDS = (REASON_FIELD, SOURCE_ID_FIELD, SOURCE_STREAM_FIELD, DELIVERIES_FIELD)
PAGE = 100  # dead letters read per round trip when going through all of them


@dataclass(frozen=True)
class DeadLetter:
    id: str
    reason: str
    source_id: str
    source_stream: str  # empty for dead letters of before partitions
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
            "source_stream": self.source_stream,
            "deliveries": self.deliveries,
            "fields": self.original,
        }


def _dead_letter(entry: Entry) -> DeadLetter:
    def text(value: bytes) -> str:
        return value.decode("utf-8", "backslashreplace")

    fields = entry.fields
    return DeadLetter(
        id=text(entry.id),
        reason=text(fields.get(REASON_FIELD, b"")),
        source_id=text(fields.get(SOURCE_ID_FIELD, b"")),
        source_stream=text(fields.get(SOURCE_STREAM_FIELD, b"")),
        deliveries=int(fields.get(DELIVERIES_FIELD, b"0") or 0),
        original={text(k): text(v) for k, v in fields.items() if k not in META_FIELDS},
    )


class DeadLetters:
    def __init__(self, stream: EventStream) -> None:
        self.stream = stream
        self.name = stream.dead_letter_name

    async def count(self) -> int:
        return await self.stream.dead_letter_count()

    async def page(self, *, count: int, after: str | None = None) -> list[DeadLetter]:
        return [_dead_letter(e) for e in await self.stream.dead_letters(count=count, after=after)]

    async def get(self, entry_id: str) -> DeadLetter | None:
        entry = await self.stream.get_dead_letter(entry_id)
        return _dead_letter(entry) if entry else None

    async def replay(self, ids: list[str] | None) -> tuple[int, list[str]]:
        """Replay the given dead letters (all when None); returns (replayed, skipped ids)."""
        replayed, skipped = 0, []
        async for entry in self._select(ids):
            event = entry.fields.get(EVENT_FIELD)
            if event is None:
                skipped.append(entry.id.decode())  # nothing to replay: the entry had no event
                continue
            await self.stream.add([event], entry.fields.get(TRACEPARENT_FIELD))
            await self.stream.delete_dead_letters([entry.id])
            replayed += 1
        return replayed, skipped

    async def purge(self, ids: list[str] | None) -> int:
        return await self.stream.delete_dead_letters(ids)

    async def _select(self, ids: list[str] | None) -> AsyncIterator[Entry]:
        if ids is not None:
            for entry_id in ids:
                if entry := await self.stream.get_dead_letter(entry_id):
                    yield entry
            return
        after = None
        while entries := await self.stream.dead_letters(count=PAGE, after=after):
            for entry in entries:
                yield entry
            after = entries[-1].id
