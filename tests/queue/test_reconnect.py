"""A pooled connection that died (database restarted, backend terminated) costs no request.

The engine here has no `pool_pre_ping`, so the store meets the dead connection itself: a safe
operation is run again once on a fresh connection; an operation that is not safe to repeat
fails, to be retried by its caller.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from queue_service.drivers.postgres import libpq_conninfo
from queue_service.models import Caller, Completion, EnqueueRequest, Failure, JobStatus, SyncType
from queue_service.store import JobStore
from service_runtime.database import async_url
from tests.queue.helpers import insert_accounts


@pytest.fixture
async def bare_engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(async_url(pg_url), pool_size=1, max_overflow=0)
    yield engine
    await engine.dispose()


async def kill_pooled_connection(engine: AsyncEngine, pg_url: str, *, pooled: int = 1) -> None:
    """Ends the backends of the pool's `pooled` connections while they sit idle in the pool."""
    async with contextlib.AsyncExitStack() as held:
        pids = []
        for _ in range(pooled):  # all checked out at once: `pooled` distinct connections
            conn = await held.enter_async_context(engine.connect())
            pids.append((await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one())
    async with await psycopg.AsyncConnection.connect(
        libpq_conninfo(pg_url), autocommit=True
    ) as admin:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", (pids,))
        # Wait (bounded) until the backends are gone, so the next use surely meets dead links.
        for _ in range(100):
            cursor = await admin.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
            )
            if await cursor.fetchone() is None:
                return
    pytest.fail(f"backends {pids} did not end")


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


async def test_every_hot_statement_survives_a_dead_pooled_connection(bare_engine, pg_url):
    store = JobStore(bare_engine)
    first, second, third = await insert_accounts(bare_engine, uuid.uuid4(), 3, datetime.now(UTC))
    lease = timedelta(seconds=30)

    await kill_pooled_connection(bare_engine, pg_url)
    one = await store.job_enqueue(EnqueueRequest(first, SyncType.FULL), Caller.everyone())
    await kill_pooled_connection(bare_engine, pg_url)
    # Two requests: the batch's statement runs inside a transaction, not in autocommit.
    two, three = await store.job_enqueue_many(
        [EnqueueRequest(second, SyncType.FULL), EnqueueRequest(third, SyncType.FULL)],
        Caller.everyone(),
    )
    await kill_pooled_connection(bare_engine, pg_url)
    picked = await store.job_pick(max_jobs=3, lease=lease, worker_id="w")
    tokens = {j.id: j.lease_token for j in picked}
    assert set(tokens) == {one.job.id, two.job.id, three.job.id}
    token = tokens[one.job.id]
    assert token is not None
    await kill_pooled_connection(bare_engine, pg_url)
    await store.lease_extend(one.job.id, token, lease)
    await kill_pooled_connection(bare_engine, pg_url)
    acks = await store.results_report(
        [
            Completion(one.job.id, token),
            Failure(two.job.id, tokens[two.job.id], "boom", permanent=True),
            Completion(three.job.id, tokens[three.job.id]),
        ]
    )

    assert [a.job.status for a in acks if a.job] == [
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.SUCCEEDED,
    ]


async def test_a_dead_connection_has_every_older_pooled_connection_replaced(pg_url):
    """The retry after a dead connection must not check out the next dead one."""
    engine = create_async_engine(async_url(pg_url), pool_size=2, max_overflow=0)
    try:
        store = JobStore(engine)
        await kill_pooled_connection(engine, pg_url, pooled=2)

        picked = await store.job_pick(max_jobs=1, lease=timedelta(seconds=30), worker_id="w")

        assert picked == []
    finally:
        await engine.dispose()


async def test_a_failing_hot_statement_raises_sqlalchemy_s_error_and_keeps_the_connection(
    bare_engine, pg_url
):
    store = JobStore(bare_engine)
    [account] = await insert_accounts(bare_engine, uuid.uuid4(), 1, datetime.now(UTC))
    queued = await store.job_enqueue(EnqueueRequest(account, SyncType.FULL), Caller.everyone())

    # Not a disconnect: a statement PostgreSQL refuses (a lease of a million years overflows
    # its timestamps), on the pool's one connection.
    with pytest.raises(sa.exc.DataError) as err:
        await store.job_pick(max_jobs=1, lease=timedelta(days=365_000_000), worker_id="w")

    assert not err.value.connection_invalidated
    assert isinstance(err.value.orig, psycopg.errors.DatetimeFieldOverflow)
    [job] = await store.job_pick(max_jobs=1, lease=timedelta(seconds=30), worker_id="w")
    assert job.id == queued.job.id
