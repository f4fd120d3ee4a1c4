"""Heartbeats keep a long job's lease; a lost lease stops the worker reporting for that job."""

from __future__ import annotations

import uuid

from clients.queue import JobStatus
from clients.worker.job import Outcome
from tests.e2e.conftest import System, eventually

SUCCEEDED = JobStatus.Value("JOB_STATUS_SUCCEEDED")
PROCESSING = JobStatus.Value("JOB_STATUS_PROCESSING")


async def test_heartbeats_keep_a_job_that_outlives_its_lease(system: System) -> None:
    account_id = await system.connect_account(1)
    # 5 s leases, and Google takes 7 s: only the heartbeats keep the reaper away.
    system.emulator.state.inject("latency", endpoint="locations", latency=7.0, count=1)
    job = await system.enqueue(account_id)
    system.start_worker()

    done = await system.wait_for_status(job.id, SUCCEEDED)

    assert done.attempts == 1
    assert not done.errors


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
