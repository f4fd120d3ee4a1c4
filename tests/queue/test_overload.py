"""A server whose database connections are all busy answers UNAVAILABLE with a retry delay.

QueueService runs with a pool of one connection (DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0) and a short
DB_POOL_TIMEOUT. A request that cannot get a connection in time is overload, not a bug: the
client gets UNAVAILABLE with RetryInfo and ErrorInfo DATABASE_BUSY, and the log gets one WARNING
for the burst, no traceback and no ERROR.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gmbsync.queue.v1 import queue_service_pb2 as pb
from queue_service.settings import QueueSettings
from queue_service.tables import sync_queue
from service_runtime.config import ConfigError, Env
from service_runtime.database import PoolSettings
from service_runtime.errors import SERVICE_ERROR_DOMAIN, ServiceReason, error_info, retry_delay
from tests.conftest import WORKER_METADATA
from tests.queue.conftest import RunningQueue, queue_settings, start_queue, stop_queue

TINY_POOL = PoolSettings(size=1, max_overflow=0, timeout=timedelta(milliseconds=200))


@pytest.fixture
async def tiny_queue(any_db_url: str, auth_settings) -> AsyncIterator[RunningQueue]:
    running = await start_queue(queue_settings(any_db_url, auth_settings, db_pool=TINY_POOL))
    yield running
    await stop_queue(running)


async def status(queue: RunningQueue) -> grpc.StatusCode | grpc.aio.AioRpcError:
    try:
        await queue.stub.GetQueueStatus(pb.GetQueueStatusRequest(), metadata=WORKER_METADATA)
    except grpc.aio.AioRpcError as err:
        return err
    return grpc.StatusCode.OK


async def take_the_only_connection(engine: AsyncEngine) -> AsyncConnection:
    """The pool's one connection, once the queue's own background work (the leader's first
    maintenance pass, right after start) has let go of it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        try:
            return await engine.connect().start()
        except sa.exc.TimeoutError:
            if loop.time() > deadline:
                raise


async def test_requests_that_find_every_connection_busy_get_unavailable_with_a_retry_delay(
    tiny_queue, caplog
):
    held = await take_the_only_connection(tiny_queue.app.engine)
    caplog.set_level(logging.WARNING)
    try:
        await held.execute(sa.text("SELECT 1"))  # the pool's only connection is now in use
        answers = await asyncio.gather(*(status(tiny_queue) for _ in range(5)))
    finally:
        await held.close()

    for answer in answers:
        assert isinstance(answer, grpc.aio.AioRpcError), answer
        assert answer.code() == grpc.StatusCode.UNAVAILABLE
        assert retry_delay(answer) == pytest.approx(1.0)
        info = error_info(answer)
        assert info is not None
        assert (info.reason, info.domain) == (ServiceReason.DATABASE_BUSY, SERVICE_ERROR_DOMAIN)
    # One line for the burst, at WARNING, without a traceback; nothing at ERROR.
    busy = [r for r in caplog.records if "DATABASE_BUSY" in r.getMessage()]
    assert len(busy) == 1
    assert busy[0].levelno == logging.WARNING and busy[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    # The connection is back: the same request is served.
    assert await status(tiny_queue) == grpc.StatusCode.OK


async def test_a_burst_of_concurrent_batches_is_never_internal_and_all_land_when_retried(
    pg_url, auth_settings, caplog
):
    """20 concurrent EnqueueSyncBatch of 25 accounts each through one pooled connection: some
    wait, the overloaded ones are told to come back later, and retried, every job lands."""
    caplog.set_level(logging.WARNING)
    running = await start_queue(queue_settings(pg_url, auth_settings, db_pool=TINY_POOL))
    try:
        owner = uuid.uuid4()
        batches = [
            [await running.add_account(owner, name=f"Shop {b}-{i}") for i in range(25)]
            for b in range(20)
        ]
        codes: list[grpc.StatusCode] = []

        async def send(accounts: list[uuid.UUID]) -> None:
            request = pb.EnqueueSyncBatchRequest(
                items=[
                    pb.EnqueueSyncRequest(account_id=str(a), sync_type=pb.SYNC_TYPE_FULL)
                    for a in accounts
                ]
            )
            for _ in range(50):
                try:
                    await running.stub.EnqueueSyncBatch(request, metadata=WORKER_METADATA)
                except grpc.aio.AioRpcError as err:
                    codes.append(err.code())
                    delay = retry_delay(err)
                else:
                    codes.append(grpc.StatusCode.OK)
                    return
                if codes[-1] != grpc.StatusCode.UNAVAILABLE or delay is None:
                    pytest.fail(f"a batch was answered {codes[-1]} (retry delay {delay})")
                await asyncio.sleep(delay / 10)  # sooner than asked: keep the test short
            pytest.fail("a batch was refused 50 times")

        await asyncio.gather(*(send(batch) for batch in batches))

        conn = await take_the_only_connection(running.app.engine)
        try:
            count = (
                await conn.execute(sa.select(sa.func.count()).select_from(sync_queue))
            ).scalar_one()
        finally:
            await conn.close()
        assert count == 20 * 25
        assert grpc.StatusCode.INTERNAL not in codes
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        await stop_queue(running)


def test_the_pool_is_sized_from_the_environment():
    assert QueueSettings.from_env(Env({})).db_pool == PoolSettings(
        size=10, max_overflow=0, timeout=timedelta(seconds=5)
    )
    pool = QueueSettings.from_env(
        Env({"DB_POOL_SIZE": "3", "DB_MAX_OVERFLOW": "0", "DB_POOL_TIMEOUT": "250ms"})
    ).db_pool
    assert pool == PoolSettings(size=3, max_overflow=0, timeout=timedelta(milliseconds=250))
    # No connections beyond the pool unless asked for: a burst waits for pooled ones.
    assert QueueSettings.from_env(Env({"DB_POOL_SIZE": "4"})).db_pool.max_overflow == 0
    assert QueueSettings.from_env(Env({"DB_MAX_OVERFLOW": "4"})).db_pool.max_overflow == 4
    for bad in ({"DB_POOL_SIZE": "0"}, {"DB_POOL_TIMEOUT": "soon"}, {"DB_MAX_OVERFLOW": "-1"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            QueueSettings.from_env(Env(bad))
