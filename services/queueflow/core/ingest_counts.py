"""What ingest did with each site's events, per UTC day: a Redis hash per site and day,
written by ingest (ingest/accounting.py) and read by reporting's `/stats/ingest`.

Fields count events: `accepted`, `dropped:<reason>` (bot) and `rejected:<reason>`
(validation). The key carries the stream's name as a hash tag, `{events_stream}:ingest:
2026-11-23:example.com`, so a Redis Cluster keeps it in the stream's slot: one transaction
appends the events and counts them.
"""

from __future__ import annotations

from datetime import date

ACCEPTED = b"accepted"
DROPPED = "dropped:"
REJECTED = "rejected:"
# Kept this long after a day's last count, seconds: longer than any range worth asking for.
RETENTION_S = 400 * 86_400


def counts_key(stream: str, day: date, site_id: str) -> bytes:
    return f"{{{stream}}}:ingest:{day.isoformat()}:{site_id}".encode()
