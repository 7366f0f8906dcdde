"""Group commit: requests that arrive while a round trip is in flight go together in the next.

Under load each request then costs a fraction of a Redis round trip instead of a whole one.
The rule that keeps it safe: whenever a request is queued, at least one flusher is running
and will take it. A flusher is counted as running until the moment it sees an empty queue
and decides to stop, with no `await` in between, so an `add` can never queue behind a
flusher that has already decided to stop (a done-callback would count it a loop turn late,
and requests queued in that turn were stranded with nobody to send them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

# Round trips in flight at once: with one, ingest and Redis take turns (each idle while the
# other works); with two, Redis runs one group while ingest decodes the next.
MAX_IN_FLIGHT = 2


class Coalescer(Generic[T]):
    """Runs `send(items)` for groups of submitted items; every submitter learns its group's
    outcome. `send` raises to fail the whole group; if a flusher is cancelled (at shutdown),
    whoever still waits gets `cancelled()`."""

    def __init__(
        self,
        send: Callable[[list[T]], Awaitable[None]],
        *,
        cancelled: Callable[[], Exception],
        max_in_flight: int = MAX_IN_FLIGHT,
        fail_queued: bool = True,
    ) -> None:
        self._send = send
        self._cancelled = cancelled
        # Whether a failed round trip also fails the group queued behind it (see _flush).
        self.fail_queued = fail_queued
        self.max_in_flight = max_in_flight
        self._queue: list[tuple[T, asyncio.Future[None]]] = []
        self.running = 0  # flushers that will still look at the queue
        self._tasks: set[asyncio.Task[None]] = set()  # strong references until they end

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, item: T) -> None:
        """Wait until `item` was sent with its group; raise what `send` raised for it."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self.running < self.max_in_flight:
            self.running += 1
            task = asyncio.create_task(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await future

    async def _flush(self) -> None:
        group: list[tuple[T, asyncio.Future[None]]] = []
        failure: BaseException | None = None
        try:
            while self._queue:
                group, self._queue = self._queue, []
                if failure is None or not self.fail_queued:
                    failure = None
                    try:
                        await self._send([item for item, _ in group])
                    except Exception as exc:
                        failure = exc
                    _settle(group, failure)
                else:
                    # Those who queued while the failed round trip timed out have waited one
                    # timeout already: they fail at once instead of waiting for a second one.
                    _settle(group, failure)
                    failure = None
                group = []
            self.running -= 1  # no await since the queue was seen empty: see the docstring
        except BaseException:  # cancelled (shutdown): nobody may be left waiting
            self.running -= 1
            stranded, self._queue = group + self._queue, []
            _settle(stranded, self._cancelled())
            raise


def _settle(
    group: Sequence[tuple[object, asyncio.Future[None]]], failure: BaseException | None
) -> None:
    for _, future in group:
        if future.done():  # the submitter was cancelled meanwhile
            continue
        if failure is None:
            future.set_result(None)
        else:
            future.set_exception(failure)
