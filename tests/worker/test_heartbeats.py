"""One heartbeat task keeps the leases of every running job; a job that ends is let go.

Against a real QueueService on PostgreSQL, with the shortest lease it grants (5 s), so a
heartbeat comes every 1.7 s.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from google.protobuf import duration_pb2

from clients import Credentials, QueueClient
from clients.worker.lease import Heartbeats
from queue_service.tables import sync_queue
from tests.conftest import TEST_TRIGGER_SECRET
from tests.queue.conftest import RunningQueue, queue_settings, start_queue, stop_queue
from tests.queue.helpers import job_row
from tests.worker.rig import until

LEASE = timedelta(seconds=5)


@pytest.fixture
async def queue(pg_url: str, auth_settings) -> AsyncIterator[RunningQueue]:
    running = await start_queue(queue_settings(pg_url, auth_settings))
    yield running
    await stop_queue(running)


@pytest.fixture
async def heartbeats(queue: RunningQueue) -> AsyncIterator[Heartbeats]:
    client = QueueClient.connect(queue.address, Credentials.trigger_secret(TEST_TRIGGER_SECRET))
    beats = Heartbeats(client, LEASE)
    beats.start()
    yield beats
    await beats.stop()
    await client.close()


async def _picked(queue: RunningQueue, count: int) -> list[Any]:
    for _ in range(count):
        await queue.enqueue(await queue.add_account())
    return await queue.pick(max_jobs=count, lease_duration=_seconds(LEASE))


def _seconds(span: timedelta) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(span)
    return duration


async def test_a_running_job_is_extended_and_an_ended_one_is_not(
    queue: RunningQueue, heartbeats: Heartbeats
) -> None:
    running, ended = await _picked(queue, 2)
    picked_expiry = (await job_row(queue.app.engine, ended.id))["lease_expires_at"]
    kept = heartbeats.keep(running.id, running.lease_token)
    gone = heartbeats.keep(ended.id, ended.lease_token)
    kept.start()
    gone.start()
    await gone.stop()  # the job reported its result at once

    await until(lambda: kept.extensions >= 2, "two heartbeats", timeout=20.0)

    # Two heartbeats took the lease past the one PickJobs granted.
    extended = (await job_row(queue.app.engine, running.id))["lease_expires_at"]
    assert extended > picked_expiry + LEASE / 3
    assert gone.extensions == 0
    assert (await job_row(queue.app.engine, ended.id))["lease_expires_at"] == picked_expiry
    assert not kept.lost
    await kept.stop()


async def test_a_heartbeat_that_finds_the_lease_taken_marks_it_lost_once(
    queue: RunningQueue, heartbeats: Heartbeats
) -> None:
    [job] = await _picked(queue, 1)
    noticed: list[str] = []
    keeper = heartbeats.keep(job.id, job.lease_token, on_lost=lambda: noticed.append(job.id))
    keeper.start()
    async with queue.app.engine.begin() as conn:
        await conn.execute(
            sa.update(sync_queue)
            .where(sync_queue.c.id == uuid.UUID(job.id))
            .values(lease_token=uuid.uuid4())
        )

    await until(lambda: keeper.lost, "the lost lease to be noticed", timeout=20.0)

    assert noticed == [job.id]
    assert keeper.extensions == 0
    await keeper.stop()


async def test_keepers_of_ended_jobs_do_not_pile_up(heartbeats: Heartbeats) -> None:
    # Thousands of short jobs with long leases: their keepers would wait a third of the lease
    # each in the queue; ended ones are swept out instead.
    keepers = [heartbeats.keep(str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(5000)]
    for keeper in keepers:
        keeper.start()
        await keeper.stop()
    live = heartbeats.keep(str(uuid.uuid4()), str(uuid.uuid4()))
    live.start()

    assert heartbeats.queued <= 1100
    assert live.queued
    await live.stop()
