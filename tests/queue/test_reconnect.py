"""A pooled connection that died (database restarted, backend terminated) costs no request.

The engine here has no `pool_pre_ping`, so the store meets the dead connection itself: a safe
operation is run again once on a fresh connection; an operation that is not safe to repeat
fails, to be retried by its caller.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from queue_service.drivers.postgres import libpq_conninfo
from queue_service.models import Caller
from queue_service.store import JobStore
from service_runtime.database import async_url


@pytest.fixture
async def bare_engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(async_url(pg_url), pool_size=1, max_overflow=0)
    yield engine
    await engine.dispose()


async def kill_pooled_connection(engine: AsyncEngine, pg_url: str) -> None:
    """Ends the backend of the pool's one connection while it sits idle in the pool."""
    async with engine.connect() as conn:
        pid = (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
    async with await psycopg.AsyncConnection.connect(
        libpq_conninfo(pg_url), autocommit=True
    ) as admin:
        await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # Wait (bounded) until the backend is gone, so the next use surely meets a dead link.
        for _ in range(100):
            cursor = await admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))
            if await cursor.fetchone() is None:
                return
    pytest.fail(f"backend {pid} did not end")


async def test_a_read_and_a_pick_survive_a_dead_pooled_connection(bare_engine, pg_url):
    store = JobStore(bare_engine)

    await kill_pooled_connection(bare_engine, pg_url)
    stats = await store.reader.job_stats(Caller.everyone())

    assert stats.pending == 0
    await kill_pooled_connection(bare_engine, pg_url)
    picked = await store.job_pick(max_jobs=1, lease=timedelta(seconds=30), worker_id="w")
    assert picked == []


async def test_starting_a_worker_run_is_not_repeated_on_a_dead_connection(bare_engine, pg_url):
    store = JobStore(bare_engine)

    await kill_pooled_connection(bare_engine, pg_url)
    with pytest.raises(sa.exc.DBAPIError) as err:
        await store.worker_run_start("w", {})

    assert err.value.connection_invalidated
    # The caller's own retry, on the fresh connection, works.
    run = await store.worker_run_start("w", {})
    assert run.worker_id == "w"
