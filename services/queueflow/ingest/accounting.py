"""Ingest's per-site, per-day accounting (core/ingest_counts.py): accepted events are counted
in the same transaction that appends them (one HINCRBY per site for a whole coalesced round
trip, core/stream.py), so the count moves with the events; drops and
rejections are summed in memory and written once a second (they need no round trip of their
own on the request's path, and a flood of bad requests costs Redis one command per site).
With a partitioned stream, accepted events count into their partition's keys (its hash slot,
its transaction); drops and rejections into the first partition's."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from datetime import date

import msgspec
import structlog

from queueflow.core import redis_wire as wire
from queueflow.core.ingest_counts import ACCEPTED, RETENTION_S, counts_key
from queueflow.core.stream import REDIS_ERRORS, partition_names

log = structlog.get_logger(__name__)
_TTL = b"%d" % RETENTION_S
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
MAX_SITE_CHARS = 256
# Drops and rejections waiting for the next flush are kept for at most this many site-days:
# refused requests naming invented sites must not grow Redis (a long-lived key per site).
MAX_PENDING_KEYS = 1_000


class Accounting:
    def __init__(
        self, client: wire.Client, stream: str, *, partitions: int = 1, flush_s: float = 1.0
    ) -> None:
        self.client = client
        self.stream = stream
        self.streams = partition_names(stream, partitions)
        self.flush_s = flush_s
        self._pending: Counter[tuple[bytes, bytes]] = Counter()  # (key, field) -> events
        self._day = -1  # the UTC day number the keys below are for
        # per partition: site -> today's key, and its HINCRBY key accepted, packed ahead
        self._keys: list[dict[str, tuple[bytes, bytes]]] = [{} for _ in self.streams]
        self._expiring: set[bytes] = set()  # keys this process gave their expiry today

    def _key(self, site_id: str, partition: int = 0) -> tuple[bytes, bytes]:
        """Today's key of the site in a partition, and its packed HINCRBY template."""
        day = int(time.time() // 86_400)  # the UTC day number: cheaper than a date per event
        if day != self._day:
            self._day, self._expiring = day, set()
            self._keys = [{} for _ in self.streams]
        keys = self._keys[partition]
        found = keys.get(site_id)
        if found is None:
            if len(keys) > 100_000:  # bounded: a flood of invented sites
                keys.clear()
            stream = self.streams[partition]
            key = counts_key(stream, date.fromordinal(_EPOCH_ORDINAL + day), site_id)
            found = keys[site_id] = (key, wire.command_template(b"HINCRBY", key, ACCEPTED))
        return found

    def accepted(self, site_ids: list[str], partition: int = 0) -> list[bytes]:
        """Commands counting these accepted events (one append's, of every request in it) for
        the transaction that appends them: one per site; each key's expiry is set the first
        time this process counts into it on a day."""
        first = site_ids[0]
        if site_ids.count(first) == len(site_ids):  # the usual: one site (a C-speed check)
            by_site: Iterable[tuple[str, int]] = ((first, len(site_ids)),)
        else:
            by_site = Counter(site_ids).items()
        commands = []
        for site_id, n in by_site:
            key, increment = self._key(site_id, partition)
            count = b"%d" % n
            commands.append(increment % (len(count), count))
            if key not in self._expiring:
                self._expiring.add(key)
                commands.append(wire.command(b"EXPIRE", key, _TTL))
        return commands

    def append_failed(self) -> None:
        """The transaction with accepted()'s commands did not apply: its expiries must be sent
        again (a key made later without one would never expire)."""
        self._expiring.clear()

    def note(self, field: str, site_ids: Iterable[str]) -> None:
        """Count events dropped or rejected, written with the next flush."""
        name = field.encode()
        pending = self._pending
        for site_id in site_ids:
            entry = (self._key(site_id)[0], name)
            if entry in pending or len(pending) < MAX_PENDING_KEYS:
                pending[entry] += 1

    async def flush(self) -> None:
        pending, self._pending = self._pending, Counter()
        if not pending:
            return
        commands = [wire.command(b"HINCRBY", k, f, b"%d" % n) for (k, f), n in pending.items()]
        commands += [wire.command(b"EXPIRE", k, _TTL) for k in {k for k, _ in pending}]
        try:  # every key in the first partition's slot
            await wire.exchange(self.client, commands, key=self.streams[0].encode())
        except REDIS_ERRORS as exc:
            # Kept for the next flush (Redis down): still bounded by MAX_PENDING_KEYS.
            for entry, n in pending.items():
                if entry in self._pending or len(self._pending) < MAX_PENDING_KEYS:
                    self._pending[entry] += n
            log.warning("could not write ingest counts yet; retrying", error=repr(exc))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
            except Exception:  # a bug here must not stop the counting for good
                log.exception("ingest counts flush failed")


_any = msgspec.json.Decoder()


def readable_sites(body: bytes, max_events: int) -> list[str]:
    """The site_id of each event in a body ingest refused, where one can be read (for its
    rejected counts): an object's, or each array item's that is a string of the right size;
    nothing from a batch over the size limit (its items were never events)."""
    try:
        decoded = _any.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return []
    items = decoded if isinstance(decoded, list) else [decoded]
    if len(items) > max_events:
        return []
    return [
        site
        for item in items
        if isinstance(item, dict)
        and isinstance(site := item.get("site_id"), str)
        and 0 < len(site) <= MAX_SITE_CHARS
    ]
