"""The append coalescer's state machine, driven step by step: each round trip is a future the
test completes by hand, so every interleaving is reproduced exactly, not by timing."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queueflow.core.coalescer import Coalescer


class Unavailable(Exception):
    pass


class Wire:
    """A `send` whose round trips stay open until the test finishes them."""

    def __init__(self) -> None:
        self.open: list[tuple[list[str], asyncio.Future[None]]] = []
        self.sent: list[list[str]] = []

    async def send(self, items: list[str]) -> None:
        done = asyncio.get_running_loop().create_future()
        self.open.append((items, done))
        await done
        self.sent.append(items)

    def finish(self, index: int = 0, error: Exception | None = None) -> list[str]:
        items, done = self.open.pop(index)
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)
        return items


async def settle() -> None:
    """Let every ready task run until nothing changes (done-callbacks included)."""
    for _ in range(10):
        await asyncio.sleep(0)


def coalescer(wire: Wire) -> Coalescer[str]:
    return Coalescer(wire.send, cancelled=lambda: Unavailable("cancelled"))


def assert_never_stranded(c: Coalescer[str]) -> None:
    # The invariant: nothing waits in the queue unless a live flusher will take it.
    assert c.queued == 0 or any(not task.done() for task in c._tasks)
    assert 0 <= c.running <= c.max_in_flight


async def test_requests_behind_a_round_trip_go_together_in_the_next() -> None:
    wire = Wire()
    c = coalescer(wire)
    first = asyncio.create_task(c.submit("a"))
    await settle()
    second = asyncio.create_task(c.submit("b"))
    await settle()
    assert [items for items, _ in wire.open] == [["a"], ["b"]]  # two in flight
    rest = [asyncio.create_task(c.submit(x)) for x in "cde"]
    await settle()
    assert c.queued == 3 and len(wire.open) == 2
    wire.finish(0)
    await settle()
    assert first.done() and not second.done()
    assert [items for items, _ in wire.open] == [["b"], ["c", "d", "e"]]
    wire.finish(0)
    wire.finish(0)
    await settle()
    assert all(t.done() for t in [second, *rest])
    assert c.running == 0 and c.queued == 0
    assert wire.sent == [["a"], ["b"], ["c", "d", "e"]]


async def test_a_failure_reaches_every_request_of_its_group_and_of_the_group_behind() -> None:
    wire = Wire()
    c = Coalescer(wire.send, cancelled=lambda: Unavailable("cancelled"), max_in_flight=1)
    first = [asyncio.create_task(c.submit(x)) for x in "ab"]
    await settle()
    behind = [asyncio.create_task(c.submit(x)) for x in "cd"]
    await settle()
    wire.finish(0, Unavailable("timeout"))
    await settle()
    for task in first + behind:  # the group behind fails at once, without its own round trip
        with pytest.raises(Unavailable, match="timeout"):
            task.result()
    assert wire.open == [] and c.running == 0
    later = asyncio.create_task(c.submit("e"))  # the next request is tried again
    await settle()
    wire.finish(0)
    await settle()
    assert later.done() and later.exception() is None


async def test_a_failure_does_not_fail_every_later_request_under_continuous_load() -> None:
    wire = Wire()
    c = Coalescer(wire.send, cancelled=lambda: Unavailable("cancelled"), max_in_flight=1)
    a = asyncio.create_task(c.submit("a"))
    await settle()
    b = asyncio.create_task(c.submit("b"))
    await settle()
    wire.finish(0, Unavailable("timeout"))  # b fails at once with a
    c_task = asyncio.create_task(c.submit("c"))  # queued before the flusher looked again
    await settle()
    assert a.exception() is not None and b.exception() is not None
    wire.finish(0)
    await settle()
    assert c_task.exception() is None


async def test_a_request_in_the_window_after_a_flusher_stops_starts_a_new_one() -> None:
    """The reproduced defect: a flusher that has seen its queue empty but whose done-callback
    has not run yet was still counted, so a request queued then waited with nobody to send it."""
    wire = Wire()
    c = coalescer(wire)
    tasks = []
    for x in "ab":
        tasks.append(asyncio.create_task(c.submit(x)))
        await settle()
    assert len(wire.open) == 2
    wire.finish(0)
    wire.finish(0)
    # Scheduled after both flushers' wake-ups: it runs in the same loop turn in which they see
    # an empty queue and return, before their done-callbacks run.
    late = asyncio.create_task(c.submit("late"))
    await asyncio.sleep(0)
    assert_never_stranded(c)
    await settle()
    assert all(t.done() for t in tasks)
    assert [items for items, _ in wire.open] == [["late"]]
    wire.finish(0)
    await settle()
    assert late.done() and late.exception() is None


async def test_cancelled_flushers_leave_nobody_waiting() -> None:
    wire = Wire()
    c = coalescer(wire)
    tasks = [asyncio.create_task(c.submit(x)) for x in "abcd"]
    await settle()
    for flusher in list(c._tasks):
        flusher.cancel()
    await settle()
    for task in tasks:
        with pytest.raises(Unavailable, match="cancelled"):
            task.result()
    assert c.running == 0 and c.queued == 0


async def test_a_cancelled_submitter_does_not_break_its_group() -> None:
    wire = Wire()
    c = coalescer(wire)
    gone = asyncio.create_task(c.submit("a"))
    await settle()
    stays = asyncio.create_task(c.submit("b"))
    await settle()
    gone.cancel()
    await settle()
    wire.finish(0)
    wire.finish(0)
    await settle()
    assert gone.cancelled() and stays.done() and stays.exception() is None


# A random schedule of steps: submit one more request, or finish (well or badly) one of the
# round trips in flight, with the loop run a random number of turns in between.
STEPS = st.lists(
    st.tuples(st.sampled_from(["submit", "ok", "fail"]), st.integers(0, 3), st.integers(0, 3)),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(steps=STEPS, max_in_flight=st.integers(1, 3))
def test_no_schedule_leaves_a_request_waiting_with_no_flusher(
    steps: list[tuple[str, int, int]], max_in_flight: int
) -> None:
    async def run() -> None:
        wire = Wire()
        c = Coalescer(
            wire.send, cancelled=lambda: Unavailable("cancelled"), max_in_flight=max_in_flight
        )
        submitted: list[asyncio.Task[None]] = []
        for action, which, turns in steps:
            if action == "submit":
                submitted.append(asyncio.create_task(c.submit(f"e{len(submitted)}")))
            elif wire.open:
                wire.finish(which % len(wire.open), Unavailable() if action == "fail" else None)
            for _ in range(turns):
                await asyncio.sleep(0)
                assert_never_stranded(c)
        # Drain: finishing every round trip must answer every request, failed or not.
        for _ in range(len(submitted) + 2):
            await settle()
            assert_never_stranded(c)
            while wire.open:
                wire.finish(0)
                await settle()
        assert all(t.done() for t in submitted)
        assert c.running == 0 and c.queued == 0
        sent = [item for group in wire.sent for item in group]
        assert len(sent) == len(set(sent))  # nothing sent twice

    asyncio.run(run())


async def test_without_fail_queued_a_group_queued_behind_a_failure_is_still_sent() -> None:
    sent: list[list[int]] = []
    release = asyncio.Event()

    async def send(items: list[int]) -> None:
        sent.append(items)
        if items == [0]:
            await release.wait()
            raise RuntimeError("that partition timed out")

    coalescer = Coalescer(
        send, cancelled=lambda: RuntimeError("x"), max_in_flight=1, fail_queued=False
    )
    first = asyncio.create_task(coalescer.submit(0))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(coalescer.submit(n)) for n in (1, 2)]
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(RuntimeError, match="timed out"):
        await first
    await asyncio.gather(*queued)  # sent in their own round trip, which succeeded
    assert sent == [[0], [1, 2]]
