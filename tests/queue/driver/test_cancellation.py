"""A driver call cancelled at any await (a caller's deadline, a server stopping) gives its
connection back to the pool as the pool's writers expect it (`tests.cancellation`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import sqlalchemy as sa

from tests.cancellation import cancel_at_each_step, let_psycopg_yield_every_time
from tests.queue.driver.conftest import T0, DriverUnderTest


async def _snapshot_read(db: DriverUnderTest) -> None:
    async with db.driver.snapshot() as conn:
        await conn.execute(sa.text("SELECT 1"))


CALLS: dict[str, Callable[[DriverUnderTest], Awaitable[object]]] = {
    # The pick: on PostgreSQL one autocommit statement.
    "pick": lambda db: db.pick(at=T0),
    # Reads that must agree: on PostgreSQL a REPEATABLE READ transaction.
    "snapshot": _snapshot_read,
    # A read through the pool's reads (autocommit on PostgreSQL).
    "lease clock": lambda db: db.driver.lease_clock_now(),
}


@pytest.mark.parametrize("call", CALLS)
async def test_a_call_cancelled_at_any_await_gives_its_connection_back_fit_for_writers(
    db: DriverUnderTest, call: str, monkeypatch: pytest.MonkeyPatch
):
    let_psycopg_yield_every_time(monkeypatch)
    await CALLS[call](db)  # the pool holds a connection: the sweep never waits for a connect

    await cancel_at_each_step(db.engine, lambda: CALLS[call](db))
