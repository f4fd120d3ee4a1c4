"""The queue's hot statements stay prepared through the reads that share their connections.

psycopg prepares a statement on its fifth execution on a connection, and drops every statement
prepared on the connection when it sends a ROLLBACK. A read that ended in ROLLBACK (a health
check's ping, the leader's look at the lease clock, a schedule read, GetQueueStatus's snapshot)
sent the hot path back to being parsed and planned on every execution."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from queue_service.drivers import Moment, QueueDriver, driver_for
from queue_service.models import Caller, EnqueueRequest, SyncType
from queue_service.readmodel import QueueReader
from queue_service.schedule_store import ScheduleStore
from service_runtime.database import PoolSettings, create_engine_async
from tests.queue.helpers import insert_accounts

PREPARED_AT = 5


@pytest.fixture
async def one_connection(pg_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine whose pool holds one connection: every call below shares it."""
    engine = create_engine_async(pg_url, pool=PoolSettings(size=1))
    yield engine
    await engine.dispose()


async def _enqueue_until_prepared(driver: QueueDriver) -> uuid.UUID:
    accounts = await insert_accounts(
        driver.engine, uuid.uuid4(), PREPARED_AT + 1, datetime.now(UTC)
    )
    for account in accounts:
        await driver.job_insert_many(
            [EnqueueRequest(account_id=account, sync_type=SyncType.FULL)],
            caller=Caller.everyone(),
            moment=Moment(now=datetime.now(UTC)),
        )
    return accounts[0]


async def _prepared(driver: QueueDriver) -> list[str]:
    # In autocommit: this look ends in no ROLLBACK of its own.
    async with driver.reads.connect() as conn:
        rows = await conn.execute(sa.text("SELECT statement FROM pg_prepared_statements"))
        return list(rows.scalars())


async def test_reads_leave_the_enqueue_prepared(one_connection: AsyncEngine):
    driver = driver_for(one_connection)
    account = await _enqueue_until_prepared(driver)
    assert any("INSERT INTO sync_queue" in s for s in await _prepared(driver))

    await driver.ping()
    await driver.lease_clock_now()
    await QueueReader(driver).queue_status(Caller.everyone(), limit=5)
    await ScheduleStore(driver, lambda: datetime.now(UTC)).schedule_get(account)

    assert any("INSERT INTO sync_queue" in s for s in await _prepared(driver))
