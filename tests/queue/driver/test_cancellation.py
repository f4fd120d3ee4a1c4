"""A driver call cancelled at any await (a caller's deadline, a server stopping) gives its
connection back to the pool as the pool's writers expect it (`tests.cancellation`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import sqlalchemy as sa

from queue_service.drivers import Moment
from queue_service.models import Caller, EnqueueRequest, SyncType
from tests.cancellation import cancel_at_each_step, let_psycopg_yield_every_time
from tests.queue.driver.conftest import LEASE, T0, DriverUnderTest, moment

Call = Callable[[], Awaitable[object]]


async def _pick(db: DriverUnderTest) -> Call:
    # On PostgreSQL one autocommit statement.
    return lambda: db.pick(at=T0)


async def _enqueue(db: DriverUnderTest) -> Call:
    # A transaction; after the first, each one finds the account's job and reports a duplicate.
    request = EnqueueRequest(account_id=await db.add_account(), sync_type=SyncType.FULL)
    return lambda: db.driver.job_insert_many(
        [request], caller=Caller.everyone(), moment=Moment(now=T0)
    )


async def _lease_extension(db: DriverUnderTest) -> Call:
    # A lease-guarded change: on PostgreSQL one autocommit statement.
    job = await db.leased()
    token = job.lease_token
    assert token is not None
    return lambda: db.driver.job_lease_extend(job.id, token, LEASE, moment=moment(T0))


async def _snapshot(db: DriverUnderTest) -> Call:
    # Reads that must agree: on PostgreSQL a REPEATABLE READ transaction.
    async def read() -> None:
        async with db.driver.snapshot() as conn:
            await conn.execute(sa.text("SELECT 1"))

    return read


async def _lease_clock(db: DriverUnderTest) -> Call:
    # A read through the pool's reads (autocommit on PostgreSQL).
    return db.driver.lease_clock_now


CALLS: dict[str, Callable[[DriverUnderTest], Awaitable[Call]]] = {
    "pick": _pick,
    "enqueue": _enqueue,
    "lease extension": _lease_extension,
    "snapshot": _snapshot,
    "lease clock": _lease_clock,
}


@pytest.mark.parametrize("name", CALLS)
async def test_a_call_cancelled_at_any_await_gives_its_connection_back_fit_for_writers(
    db: DriverUnderTest, name: str, monkeypatch: pytest.MonkeyPatch
):
    call = await CALLS[name](db)
    let_psycopg_yield_every_time(monkeypatch)
    await call()  # the pool holds a connection: the sweep never waits for a connect

    await cancel_at_each_step(db.engine, call)
