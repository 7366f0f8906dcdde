"""Retrying: what heals by waiting, what is the rows' fault, and what an operator is told."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from queueflow.worker.retry import (
    REFUSALS_BEFORE_PROBE,
    DataRejected,
    Retrying,
    Stopping,
    is_data_error,
    is_refusal,
)


def error(cls: type[asyncpg.PostgresError]) -> asyncpg.PostgresError:
    return cls("refused")


@pytest.mark.parametrize(
    ("exc", "data", "refusal"),
    [
        (error(asyncpg.UniqueViolationError), True, True),  # 23505
        (error(asyncpg.InvalidTextRepresentationError), True, True),  # 22P02
        (error(asyncpg.ProgramLimitExceededError), False, True),  # 54000
        (error(asyncpg.InsufficientPrivilegeError), False, True),  # 42501
        (error(asyncpg.UndefinedTableError), False, True),  # 42P01
        (error(asyncpg.DeadlockDetectedError), False, False),  # 40P01
        (error(asyncpg.SerializationError), False, False),  # 40001
        (error(asyncpg.AdminShutdownError), False, False),  # 57P01
        (error(asyncpg.QueryCanceledError), False, True),  # 57014, a statement_timeout
        (error(asyncpg.DiskFullError), False, False),  # 53100
        (error(asyncpg.LockNotAvailableError), False, False),  # 55P03
        (ConnectionResetError(), False, False),
        (TimeoutError(), False, False),
    ],
)
def test_errors_are_told_apart(exc: BaseException, data: bool, refusal: bool) -> None:
    assert is_data_error(exc) is data
    assert is_refusal(exc) is refusal


class Calls:
    """An operation that fails `failures` times with `exc`, then returns 1."""

    def __init__(self, exc: BaseException, failures: int) -> None:
        self.exc, self.left, self.count = exc, failures, 0

    async def __call__(self) -> int:
        self.count += 1
        if self.left:
            self.left -= 1
            raise self.exc
        return 1


async def ok() -> None:
    return None


async def refused() -> None:
    raise error(asyncpg.InsufficientPrivilegeError)


def quick(stop: asyncio.Event) -> Retrying:
    retrying = Retrying(stop)
    retrying.postgres_backoff.base_s = retrying.postgres_backoff.cap_s = 0.001
    return retrying


async def test_a_data_error_escapes_at_once() -> None:
    call = Calls(error(asyncpg.CheckViolationError), 99)
    with pytest.raises(DataRejected) as raised:
        await quick(asyncio.Event()).postgres(call)
    assert call.count == 1 and raised.value.sqlstate == "23514"


async def test_a_refusal_the_probe_does_not_share_is_the_rows_fault() -> None:
    call = Calls(error(asyncpg.ProgramLimitExceededError), 99)
    with pytest.raises(DataRejected, match="SQLSTATE 54000"):
        await quick(asyncio.Event()).postgres(call, probe=ok)
    assert call.count == REFUSALS_BEFORE_PROBE


async def test_a_known_refusal_escapes_at_once_while_halving() -> None:
    call = Calls(error(asyncpg.ProgramLimitExceededError), 99)
    with pytest.raises(DataRejected):
        await quick(asyncio.Event()).postgres(call, probe=ok, refused=frozenset({"54000"}))
    assert call.count == 1


async def test_a_refusal_the_probe_shares_is_retried_and_reported_until_it_heals() -> None:
    stop = asyncio.Event()
    retrying = quick(stop)
    call = Calls(error(asyncpg.InsufficientPrivilegeError), 10)
    assert await retrying.postgres(call, probe=refused) == 1
    assert call.count == 11 and retrying.problems() == {}


async def test_what_is_retried_is_said_while_it_lasts_and_a_stop_ends_it() -> None:
    stop = asyncio.Event()
    retrying = quick(stop)
    call = Calls(error(asyncpg.InsufficientPrivilegeError), 10**9)
    task = asyncio.create_task(retrying.postgres(call, probe=refused))
    while not retrying.problems():  # noqa: ASYNC110 - polling its state
        await asyncio.sleep(0.001)
    assert retrying.problems()["postgres"].startswith("SQLSTATE 42501")
    stop.set()
    with pytest.raises(Stopping):
        await task


async def test_transient_errors_are_retried_without_a_probe() -> None:
    call = Calls(error(asyncpg.DeadlockDetectedError), 5)
    probed = []

    async def probe() -> None:
        probed.append(1)

    assert await quick(asyncio.Event()).postgres(call, probe=probe) == 1
    assert probed == [] and call.count == 6
