"""Which partition each append round trip goes to (core/stream.py): in turn, past one busy
with another round trip, and past one where an append just failed, probed one at a time."""

from __future__ import annotations

import pytest
import redis.asyncio as redis

from queueflow.core import stream as stream_module
from queueflow.core.config import load_settings
from queueflow.core.stream import AVOID_S, EventStream


def partitioned(n: int) -> EventStream:
    settings = load_settings(redis_url="redis://127.0.0.1:1/0", stream_partitions=n)
    return EventStream(redis.Redis(), settings)  # never connected: only the choice is tested


def done(stream: EventStream, partition: int, failed: bool = False) -> None:
    """What _append does when a round trip to the partition ends."""
    if failed:
        stream._avoid(partition)
    else:
        stream._avoid_until[partition] = 0.0
    stream._in_flight[partition] -= 1


def test_round_trips_go_to_the_partitions_in_turn() -> None:
    stream = partitioned(4)
    picked = []
    for _ in range(8):
        picked.append(stream._next_partition())
        done(stream, picked[-1])
    assert picked == [0, 1, 2, 3, 0, 1, 2, 3]


def test_a_partition_busy_with_a_round_trip_is_passed_over_while_another_is_free() -> None:
    stream = partitioned(2)
    first = stream._next_partition()
    second = stream._next_partition()
    assert (first, second) == (0, 1)
    done(stream, second)
    assert stream._next_partition() == 1  # 0 is still in flight
    one = partitioned(1)
    assert one._next_append == 0  # one stream: no choice is made at all


def test_a_failed_partition_is_passed_over_then_probed_one_round_trip_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(stream_module.time, "monotonic", lambda: now[0])
    stream = partitioned(3)
    assert stream._next_partition() == 0
    done(stream, 0, failed=True)
    for _ in range(6):  # passed over for AVOID_S
        picked = stream._next_partition()
        assert picked != 0
        done(stream, picked)
    now[0] += AVOID_S + 0.01
    stream._next_append = 0
    assert stream._next_partition() == 0  # the probe
    for _ in range(4):  # while it is out, the others take the round trips
        picked = stream._next_partition()
        assert picked != 0
        done(stream, picked)
    done(stream, 0)  # it answered: back in turn
    assert sorted(stream._next_partition() for _ in range(3)) == [0, 1, 2]


def test_when_every_partition_failed_lately_round_trips_still_go_in_turn() -> None:
    stream = partitioned(2)
    for p in (0, 1):
        stream._avoid(p)
    assert [stream._next_partition() for _ in range(2)] == [0, 1]
