"""Cancelling a database call at each of its awaits in turn, and what the pool must hold after.

A gRPC deadline, a sync's deadline or a failed sibling task cancels a call at whatever await it
has reached. Whatever connection the call had checked out must then be back in the pool, and
as the pool's writers expect it: not in autocommit, not at another isolation level, or their
transactions would commit statement by statement or fail where they should not. On SQLite the
writer's BEGIN IMMEDIATE also proves that no discarded connection still holds the write lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import psycopg
import psycopg.waiting
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

# The turns of the loop a call is cancelled after, one per run: on a local database a call's
# checkout, the switch of its settings and its statements fall within them.
STEPS = 30


def let_psycopg_yield_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """psycopg lets the loop run after an operation that did not block only once the loop has
    been busy a while, as it is under load; this makes it do so every time, so that a sweep
    meets every await where a cancellation can land."""
    monkeypatch.setattr(psycopg.waiting, "MAX_BUSY_TIME", 0.0)


async def cancel_at_each_step(engine: AsyncEngine, call: Callable[[], Awaitable[object]]) -> None:
    """Runs `call` STEPS times, cancelling it after 0, 1, 2... turns of the loop, and checks
    after each that no connection is left checked out and that a writer's connection is
    transactional at the default isolation level."""
    for steps in range(STEPS):
        task = asyncio.ensure_future(call())
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert isinstance(engine.pool, QueuePool)
        assert engine.pool.checkedout() == 0, f"a connection left out, cancelled after {steps}"
        # The pool is LIFO: this is the connection the cancelled call gave back.
        async with engine.begin() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            if isinstance(raw, psycopg.AsyncConnection):
                assert raw.autocommit is False, f"autocommit, cancelled after {steps}"
                assert raw.isolation_level in (None, psycopg.IsolationLevel.READ_COMMITTED), (
                    f"{raw.isolation_level}, cancelled after {steps}"
                )
