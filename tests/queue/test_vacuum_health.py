"""A long transaction holds back vacuum: GetDiagnostics shows it, and our own sessions cannot be it.

An idle reader (a session that began a transaction, read, and went quiet) keeps a snapshot:
vacuum may not remove any row version newer than it, so the queue's dead tuples pile up and
every scan of the table walks over them. Diagnostics report the queue's dead tuples and the
oldest open transaction of another session, with an alert past a threshold; the services' own
connections are ended by PostgreSQL if they ever sit idle inside a transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

import psycopg
import pytest
import sqlalchemy as sa

from gmbsync.queue.v1 import queue_service_pb2 as pb
from queue_service.drivers.postgres import libpq_conninfo
from service_runtime.database import PoolSettings, create_engine_async
from tests.conftest import WORKER_METADATA
from tests.queue.conftest import queue_settings, start_queue, stop_queue

T = TypeVar("T")
READER = "idle-reader-under-test"


async def diagnostics(running) -> pb.GetDiagnosticsResponse:  # type: ignore[no-untyped-def]
    return await running.stub.GetDiagnostics(pb.GetDiagnosticsRequest(), metadata=WORKER_METADATA)


async def eventually(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], what: str
) -> T:
    """Polls until `accept(probe())`; statistics reach the views asynchronously (within ~1 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        value = await probe()
        if accept(value):
            return value
        assert loop.time() < deadline, f"never: {what}; last: {value}"
        await asyncio.sleep(0.1)


async def idle_reader(url: str) -> psycopg.AsyncConnection:
    """A session that read the queue in a REPEATABLE READ transaction and went quiet."""
    conn = await psycopg.AsyncConnection.connect(libpq_conninfo(url), application_name=READER)
    await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
    await conn.execute("SELECT count(*) FROM sync_queue")
    return conn


@pytest.fixture
async def watched(pg_url, auth_settings):  # type: ignore[no-untyped-def]
    """A queue whose long_transaction alert fires for any open transaction at all."""
    running = await start_queue(
        queue_settings(pg_url, auth_settings, alert_transaction_age=timedelta(0))
    )
    yield running
    await stop_queue(running)


async def test_an_idle_reader_shows_as_the_oldest_transaction_with_an_alert(watched):
    reader = await idle_reader(watched.database_url)
    try:
        report = await eventually(
            lambda: diagnostics(watched),
            lambda r: r.oldest_transaction_application == READER,
            "the reader as the oldest transaction",
        )
        assert report.oldest_transaction_state == "idle in transaction"
        assert report.oldest_transaction_age.ToTimedelta() > timedelta(0)
        [alert] = [a for a in report.alerts if a.name == "long_transaction"]
        assert READER in alert.message
        assert "idle in transaction" in alert.message
        assert alert.value == pytest.approx(
            report.oldest_transaction_age.ToTimedelta().total_seconds(), abs=1
        )
    finally:
        await reader.close()

    report = await eventually(
        lambda: diagnostics(watched),
        lambda r: r.oldest_transaction_application != READER,
        "the reader gone from diagnostics",
    )
    assert all(READER not in a.message for a in report.alerts)


async def test_dead_tuples_of_the_queue_pile_up_behind_an_idle_reader(watched):
    accounts = [await watched.add_account() for _ in range(20)]
    reader = await idle_reader(watched.database_url)
    try:
        # Every pick and completion leaves dead row versions, all newer than the reader.
        for account in accounts:
            await watched.enqueue(account)
        for job in await watched.pick(max_jobs=20):
            await watched.complete(job)
        await vacuum(watched.database_url)

        report = await eventually(
            lambda: diagnostics(watched),
            lambda r: r.queue_dead_tuples >= 20,
            "dead tuples kept by the reader's snapshot",
        )
        assert report.queue_dead_tuples >= 20
    finally:
        await reader.close()

    # Without the reader vacuum removes them.
    await vacuum(watched.database_url)
    await eventually(
        lambda: diagnostics(watched), lambda r: r.queue_dead_tuples == 0, "vacuum cleaned up"
    )


async def vacuum(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(libpq_conninfo(url), autocommit=True) as conn:
        await conn.execute("VACUUM sync_queue")


async def test_sqlite_reports_no_vacuum_figures(sqlite_url, auth_settings):
    running = await start_queue(
        queue_settings(sqlite_url, auth_settings, alert_transaction_age=timedelta(0))
    )
    try:
        report = await diagnostics(running)
    finally:
        await stop_queue(running)
    assert report.queue_dead_tuples == 0
    assert report.oldest_transaction_age.ToTimedelta() == timedelta(0)
    assert report.oldest_transaction_state == ""
    assert [a.name for a in report.alerts if a.name == "long_transaction"] == []


async def test_a_service_session_left_idle_in_a_transaction_is_ended(pg_url):
    engine = create_engine_async(
        pg_url, pool=PoolSettings(idle_in_transaction_timeout=timedelta(milliseconds=300))
    )
    try:
        async with engine.connect() as conn:
            pid = (await conn.execute(sa.select(sa.func.pg_backend_pid()))).scalar_one()
            # The transaction is open (SQLAlchemy began it) and nothing more is sent.
            async with await psycopg.AsyncConnection.connect(
                libpq_conninfo(pg_url), autocommit=True
            ) as observer:

                async def alive() -> bool:
                    cursor = await observer.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)
                    )
                    row = await cursor.fetchone()
                    return bool(row and row[0])

                await eventually(alive, lambda up: not up, "PostgreSQL ending the idle session")
            with pytest.raises(sa.exc.DBAPIError):
                await conn.execute(sa.select(1))
    finally:
        await engine.dispose()
