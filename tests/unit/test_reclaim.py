"""The reclaim cursor: a pass walks the pending list page by page, then waits its interval."""

from __future__ import annotations

from queueflow.core.stream import Entry
from queueflow.worker.reclaim import START, Reclaimer


class Pages:
    """A stream whose XAUTOCLAIM answers the given (next cursor, entries) pages in turn."""

    partitions = 1

    def __init__(self, *pages: tuple[bytes, int]) -> None:
        self.pages = list(pages)
        self.cursors: list[bytes] = []
        self.claimed_from: list[int] = []

    async def claim_idle(
        self, consumer: str, *, min_idle_ms: int, cursor: bytes, count: int, partition: int
    ):
        self.cursors.append(cursor)
        self.claimed_from.append(partition)
        next_cursor, n = self.pages.pop(0)
        return next_cursor, [Entry(b"%d-0" % i, {}) for i in range(n)]


def reclaimer(stream: Pages, interval_s: float = 60) -> Reclaimer:
    return Reclaimer(stream, "me", min_idle_ms=1000, page_size=2, interval_s=interval_s)  # type: ignore[arg-type]


async def test_a_pass_carries_its_cursor_to_the_end_then_waits() -> None:
    stream = Pages((b"5-0", 2), (b"9-0", 2), (START, 1))
    r = reclaimer(stream)
    assert r.due()  # the first pass runs at once
    assert len(await r.next_page()) == 2 and r.due()
    assert len(await r.next_page()) == 2 and r.due()
    assert len(await r.next_page()) == 1
    assert stream.cursors == [START, b"5-0", b"9-0"]
    assert not r.due()  # pass complete: the next one after the interval


async def test_a_new_pass_starts_from_the_beginning_once_the_interval_passed() -> None:
    stream = Pages((START, 0), (START, 0))
    r = reclaimer(stream, interval_s=0)
    await r.next_page()
    assert r.due()
    await r.next_page()
    assert stream.cursors == [START, START]


async def test_a_pass_walks_every_partition_in_turn() -> None:
    stream = Pages((b"5-0", 2), (START, 1), (START, 2))
    stream.partitions = 2
    r = reclaimer(stream)
    assert len(await r.next_page()) == 2 and r.partition == 0 and r.due()
    assert len(await r.next_page()) == 1 and r.partition == 1 and r.due()  # on to the next
    assert len(await r.next_page()) == 2 and r.partition == 0
    assert stream.claimed_from == [0, 0, 1] and stream.cursors == [START, b"5-0", START]
    assert not r.due()  # every partition's pass complete: the next after the interval
