"""Backpressure's figure: refreshed in the background, kept through failures of any kind."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from queueflow.ingest.backpressure import Backlog


class Figures:
    """A stream whose backlog() answers from a script: numbers, or exceptions to raise."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)

    async def backlog(self) -> int:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


async def test_over_and_back_under_the_limit() -> None:
    backlog = Backlog(Figures(5, 11, 3), limit=10, refresh_s=1)  # type: ignore[arg-type]
    await backlog.refresh()
    assert not backlog.over
    await backlog.refresh()
    assert backlog.over and backlog.entries == 11
    await backlog.refresh()
    assert not backlog.over


async def test_redis_down_keeps_the_last_figure() -> None:
    backlog = Backlog(Figures(11, RedisConnectionError()), limit=10, refresh_s=1)  # type: ignore[arg-type]
    await backlog.refresh()
    await backlog.refresh()
    assert backlog.over and backlog.entries == 11


async def test_an_unexpected_error_does_not_stop_the_refresh_loop() -> None:
    stream = Figures(11, ValueError("a bug"), 3)
    backlog = Backlog(stream, limit=10, refresh_s=0.01)  # type: ignore[arg-type]
    task = asyncio.create_task(backlog.run())
    try:
        async with asyncio.timeout(5):
            while backlog.over or backlog.entries != 3:  # noqa: ASYNC110 - polling its state
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
