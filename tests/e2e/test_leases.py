"""Heartbeats keep a long job's lease; a lost lease stops the worker reporting for that job."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, timedelta

from clients.queue import JobStatus
from clients.worker.job import Outcome
from sync_service.emulator.faults import Endpoint
from tests.e2e.conftest import System, eventually

SUCCEEDED = JobStatus.Value("JOB_STATUS_SUCCEEDED")
PROCESSING = JobStatus.Value("JOB_STATUS_PROCESSING")
LEASE = timedelta(seconds=5)


async def test_heartbeats_keep_a_job_that_outlives_its_lease(system: System) -> None:
    """Google holds the sync's locations request until the lease has been extended past its
    first expiry by more than a whole lease, and until the database's clock has passed that
    expiry: the job outlived its first lease, by events rather than by a fixed latency, and
    only the heartbeats kept the reaper (running every 200 ms) away."""
    account_id = await system.connect_account(1)
    released = asyncio.Event()
    faults = system.emulator._faults

    async def held_at_google(endpoint, request, **kwargs):  # type: ignore[no-untyped-def]
        fault = await faults(endpoint, request, **kwargs)
        if endpoint is Endpoint.LOCATIONS:
            await released.wait()
        return fault

    system.emulator._faults = held_at_google  # type: ignore[method-assign]
    job = await system.enqueue(account_id)
    system.start_worker(lease_duration=LEASE)
    picked = await system.wait_for_job(
        job.id, lambda j: j.status == PROCESSING, what="the job picked"
    )
    first_expiry = picked.lease_expires_at.ToDatetime(tzinfo=UTC)

    await system.wait_for_job(
        job.id,
        lambda j: j.lease_expires_at.ToDatetime(tzinfo=UTC) > first_expiry + LEASE,
        what="heartbeats extending the lease past its first expiry",
    )
    await eventually(
        lambda: system.scalar("SELECT now()"),
        lambda now: now > first_expiry,
        what="the database's clock past the first expiry",
    )
    released.set()
    done = await system.wait_for_status(job.id, SUCCEEDED)

    assert done.attempts == 1
    assert not done.errors
    assert done.completed_at.ToDatetime(tzinfo=UTC) > first_expiry


async def test_a_worker_that_lost_its_lease_reports_nothing_for_the_job(system: System) -> None:
    account_id = await system.connect_account(1)
    system.emulator.state.inject("latency", endpoint="locations", latency=30.0, count=1)
    job = await system.enqueue(account_id)
    worker = system.start_worker()
    await system.wait_for_job(job.id, lambda j: j.status == PROCESSING, what="the job picked")

    # Another holder takes the lease (as after an expiry and a re-pick elsewhere).
    other_token = uuid.uuid4()
    await system.execute(
        "UPDATE sync_queue SET lease_token = :t, worker_id = 'someone-else' WHERE id = :j",
        t=other_token,
        j=uuid.UUID(job.id),
    )

    async def lease_lost() -> int:
        return worker.outcomes[Outcome.LEASE_LOST]

    await eventually(lease_lost, lambda n: n == 1, what="the worker to notice the lost lease")
    held = await system.job(job.id)
    assert held.status == PROCESSING  # the worker neither completed nor failed it
    assert held.worker_id == "someone-else"
    assert not held.errors
