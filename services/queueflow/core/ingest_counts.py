"""What ingest did with each site's events, per UTC day: a Redis hash per site and day,
written by ingest (ingest/accounting.py) and read by reporting's `/stats/ingest`.

Fields count events: `accepted`, `dropped:<reason>` (bot) and `rejected:<reason>`
(validation). The key carries the stream's name as a hash tag, `{events_stream}:ingest:
2026-11-23:example.com`, so a Redis Cluster keeps it in the stream's slot: one transaction
appends the events and counts them. A partitioned stream's partitions carry their hash tag
already (`events_stream:{3}`), so each counts into keys of its own slot,
`events_stream:{3}:ingest:...`, and a day's counts are the sum over the partitions.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date
from typing import Any

ACCEPTED = b"accepted"
DROPPED = "dropped:"
REJECTED = "rejected:"
# Kept this long after a day's last count, seconds: longer than any range worth asking for.
RETENTION_S = 400 * 86_400


def counts_key(stream: str, day: date, site_id: str) -> bytes:
    """The key of a site's day counted with appends to `stream` (a stream or a partition)."""
    tagged = stream if _has_hash_tag(stream) else f"{{{stream}}}"
    return f"{tagged}:ingest:{day.isoformat()}:{site_id}".encode()


def _has_hash_tag(name: str) -> bool:
    """Whether Redis Cluster hashes `name` by a {tag} in it (a non-empty one)."""
    start = name.find("{")
    return start >= 0 and name.find("}", start + 1) > start + 1


@dataclass(frozen=True, slots=True)
class DayCounts:
    accepted: int
    dropped: dict[str, int]
    rejected: dict[str, int]


async def day_counts(client: Any, streams: list[str], day: date, site_id: str) -> DayCounts:
    """What ingest did with a site's events on a UTC day (zeros for a day it saw none), over
    the stream's partitions (core/stream.py's partition_names)."""
    found = await asyncio.gather(
        *(client.hgetall(counts_key(stream, day, site_id)) for stream in streams)
    )
    named: dict[str, int] = {}
    for fields in found:
        for name, value in fields.items():
            named[_text(name)] = named.get(_text(name), 0) + int(value)

    def by(prefix: str) -> dict[str, int]:
        return {k.removeprefix(prefix): v for k, v in named.items() if k.startswith(prefix)}

    return DayCounts(named.get(ACCEPTED.decode(), 0), by(DROPPED), by(REJECTED))


def _text(name: bytes | str) -> str:
    return name.decode() if isinstance(name, bytes) else name
