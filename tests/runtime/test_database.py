"""The shared engines: no pre-ping, one failed statement per dead pool, reads without BEGIN.

A database restart is played by terminating the pool's backends with pg_terminate_backend,
which is what each connection sees when PostgreSQL restarts under it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
import pytest
import sqlalchemy as sa
import sqlalchemy.exc
from sqlalchemy.ext.asyncio import AsyncEngine

from service_runtime.database import (
    PoolSettings,
    connect_with,
    create_engine_async,
    is_disconnect_error,
    read_engine,
)
from tests.cancellation import cancel_at_each_step, let_psycopg_yield_every_time


@asynccontextmanager
async def engine_for(url: str, pool_size: int | None = None) -> AsyncIterator[AsyncEngine]:
    pool = PoolSettings(size=pool_size) if pool_size is not None else None
    engine = create_engine_async(url, pool=pool)
    try:
        yield engine
    finally:
        await engine.dispose()


async def backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()


async def fill_pool(engine: AsyncEngine, size: int) -> set[int]:
    """Checks out `size` connections at once, so the pool holds that many; their backend pids."""
    held = [await engine.connect() for _ in range(size)]
    try:
        return {(await c.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one() for c in held}
    finally:
        for conn in held:
            await conn.close()


async def terminate(admin: AsyncEngine, pids: set[int]) -> None:
    """Kills the backends and waits (bounded) until PostgreSQL no longer lists them."""
    async with admin.connect() as conn:
        await conn.execute(
            sa.text("SELECT pg_terminate_backend(pid) FROM unnest(CAST(:pids AS int[])) AS pid"),
            {"pids": sorted(pids)},
        )
    for _ in range(200):
        async with admin.connect() as conn:
            alive = (
                await conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE pid = ANY(CAST(:pids AS int[]))"
                    ),
                    {"pids": sorted(pids)},
                )
            ).scalar_one()
        if alive == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"backends {pids} still alive")


async def test_the_pool_never_pings_a_connection_before_use(pg_url):
    async with engine_for(pg_url) as engine:
        pings = 0
        dialect = engine.sync_engine.dialect
        real_ping = dialect.do_ping

        def counting_ping(dbapi_connection):
            nonlocal pings
            pings += 1
            return real_ping(dbapi_connection)

        dialect.do_ping = counting_ping  # type: ignore[method-assign]
        for _ in range(5):
            await backend_pid(engine)

        assert pings == 0


async def test_after_a_restart_one_call_fails_and_the_whole_pool_reconnects(pg_url):
    async with engine_for(pg_url, pool_size=4) as engine, engine_for(pg_url) as admin:
        stale = await fill_pool(engine, 4)
        assert len(stale) == 4
        await terminate(admin, stale)

        # The first statement on a dead connection fails, and says its connection died...
        with pytest.raises(sqlalchemy.exc.OperationalError) as failed:
            await backend_pid(engine)
        assert failed.value.connection_invalidated

        # ...which retires every connection opened before it: four calls at once, three of
        # which get the other dead connections of the pool, all find them replaced at checkout
        # instead of failing a call each.
        fresh = await fill_pool(engine, 4)
        assert len(fresh) == 4
        assert not stale & fresh


class _Error(Exception):
    def __init__(self, sqlstate: str | None) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "gone"),
    [
        ("08006", True),  # connection_failure
        ("08003", True),  # connection_does_not_exist
        ("57P01", True),  # admin_shutdown: the server is restarting
        ("57P02", True),  # crash_shutdown
        ("57P03", True),  # cannot_connect_now: starting up or shutting down
        ("40001", False),  # serialization_failure: retry the transaction, keep the connection
        ("23505", False),  # unique_violation
        ("57014", False),  # query_canceled: the connection is fine
        (None, False),
    ],
)
def test_errors_that_say_the_connection_is_gone_are_disconnects(sqlstate, gone):
    assert is_disconnect_error(_Error(sqlstate)) is gone


async def _transaction_status(conn) -> psycopg.pq.TransactionStatus:
    raw = await conn.get_raw_connection()
    return raw.driver_connection.info.transaction_status


async def test_reads_on_postgresql_run_without_a_transaction_and_leave_the_pool_transactional(
    pg_url,
):
    async with engine_for(pg_url, pool_size=1) as engine:
        async with read_engine(engine).connect() as conn:
            pid = (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
            # No BEGIN was sent before the read, so no ROLLBACK is needed after it.
            assert await _transaction_status(conn) == psycopg.pq.TransactionStatus.IDLE

        # The same pooled connection, through the engine itself: transactions as before.
        async with engine.connect() as conn:
            assert (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one() == pid
            assert await _transaction_status(conn) == psycopg.pq.TransactionStatus.INTRANS
            await conn.execute(sa.text("CREATE TEMP TABLE t (x int)"))
            await conn.rollback()
            # Rolled back: the table a transaction created is gone.
            exists = await conn.execute(sa.text("SELECT to_regclass('pg_temp.t') IS NOT NULL"))
            assert exists.scalar_one() is False


async def test_reads_on_sqlite_do_not_wait_for_a_writer(sqlite_url):
    async with engine_for(sqlite_url) as engine:
        writer = await engine.connect()
        try:
            await writer.execute(sa.text("SELECT 1"))  # BEGIN IMMEDIATE: holds the write lock
            raw = await writer.get_raw_connection()
            assert raw.driver_connection._conn.in_transaction

            async with read_engine(engine).connect() as reader:
                count = await asyncio.wait_for(
                    reader.execute(sa.text("SELECT count(*) FROM sync_queue")), timeout=5
                )
                assert count.scalar_one() == 0
        finally:
            await writer.rollback()
            await writer.close()

        # Writes through the engine still take the write lock at BEGIN.
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
            raw = await conn.get_raw_connection()
            assert isinstance(raw.driver_connection._conn, sqlite3.Connection)
            assert raw.driver_connection._conn.in_transaction


async def test_a_burst_waits_for_pooled_connections_instead_of_opening_sessions(pg_url):
    # Sessions opened under load and closed on return cost PostgreSQL a backend each: a burst
    # of requests shares the pool's connections (waiting for one, up to DB_POOL_TIMEOUT).
    async with engine_for(pg_url, pool_size=2) as engine:

        async def busy_backend() -> int:
            async with engine.connect() as conn:
                result = await conn.execute(sa.text("SELECT pg_backend_pid(), pg_sleep(0.05)"))
                return result.scalar_one()

        pids = await asyncio.gather(*(busy_backend() for _ in range(8)))

        assert len(set(pids)) <= 2


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
async def test_a_read_cancelled_at_any_step_gives_its_connection_back_fit_for_writers(
    database, pg_url, sqlite_url, monkeypatch
):
    # On PostgreSQL a read switches its connection to autocommit right after checking it out.
    # Cancelled there, the connection had no owner: the pool lost it until the garbage
    # collector dropped it.
    let_psycopg_yield_every_time(monkeypatch)
    url = pg_url if database == "postgresql" else sqlite_url
    async with engine_for(url, pool_size=1) as engine:

        async def read() -> None:
            async with read_engine(engine).connect() as conn:
                await conn.execute(sa.text("SELECT 1"))

        await read()  # the pool holds its one connection: the sweep never waits for a connect
        await cancel_at_each_step(engine, read)


@pytest.mark.parametrize("isolation_level", ["AUTOCOMMIT", "REPEATABLE READ", "SERIALIZABLE"])
async def test_a_connection_with_options_cancelled_at_any_step_goes_back_as_the_pool_had_it(
    isolation_level, pg_url, monkeypatch
):
    let_psycopg_yield_every_time(monkeypatch)
    async with engine_for(pg_url, pool_size=1) as engine:

        async def read() -> None:
            async with connect_with(engine, isolation_level=isolation_level) as conn:
                await conn.execute(sa.text("SELECT 1"))

        await read()
        await cancel_at_each_step(engine, read)
