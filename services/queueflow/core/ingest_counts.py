"""What ingest did with each site's events, per UTC day: a Redis hash per site and day,
written by ingest (ingest/accounting.py) and read by reporting's `/stats/ingest`.

Fields count events: `accepted`, `dropped:<reason>` (bot) and `rejected:<reason>`
(validation). The key carries the stream's name as a hash tag, `{events_stream}:ingest:
2026-11-23:example.com`, so a Redis Cluster keeps it in the stream's slot: one transaction
appends the events and counts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import redis.asyncio as redis

ACCEPTED = b"accepted"
DROPPED = "dropped:"
REJECTED = "rejected:"
# Kept this long after a day's last count, seconds: longer than any range worth asking for.
RETENTION_S = 400 * 86_400


def counts_key(stream: str, day: date, site_id: str) -> bytes:
    return f"{{{stream}}}:ingest:{day.isoformat()}:{site_id}".encode()


@dataclass(frozen=True, slots=True)
class DayCounts:
    accepted: int
    dropped: dict[str, int]
    rejected: dict[str, int]


async def day_counts(client: redis.Redis, stream: str, day: date, site_id: str) -> DayCounts:
    """What ingest did with a site's events on a UTC day (zeros for a day it saw none)."""
    fields = await client.hgetall(counts_key(stream, day, site_id))
    named = {_text(name): int(value) for name, value in fields.items()}

    def by(prefix: str) -> dict[str, int]:
        return {k.removeprefix(prefix): v for k, v in named.items() if k.startswith(prefix)}

    return DayCounts(named.get(ACCEPTED.decode(), 0), by(DROPPED), by(REJECTED))


def _text(name: bytes | str) -> str:
    return name.decode() if isinstance(name, bytes) else name
