"""The circuit breaker: a dead SyncService stops the picking, and costs no job an attempt."""

from __future__ import annotations

from clients.queue import JobStatus
from clients.worker.circuit_breaker import BreakerState
from tests.e2e.conftest import System, eventually

SUCCEEDED = JobStatus.Value("JOB_STATUS_SUCCEEDED")
PENDING = JobStatus.Value("JOB_STATUS_PENDING")


async def test_breaker_opens_on_a_dead_sync_service_and_closes_when_it_returns(
    system: System,
) -> None:
    account_id = await system.connect_account(1)
    await system.stop_sync()
    job = await system.enqueue(account_id, max_attempts=2)
    worker = system.start_worker(circuit_breaker_threshold=2)

    # Opened, probed once after the cool-down, and opened again: SyncService is still down.
    async def times_opened() -> int:
        return worker.breaker.times_opened

    await eventually(times_opened, lambda n: n >= 2, what="the breaker to open twice")
    waiting = await system.wait_for_job(
        job.id,
        lambda j: j.status == PENDING and j.attempts == 0,
        what="the job back in pending with no attempt spent",
    )
    assert not waiting.errors

    await system.start_sync()
    done = await system.wait_for_status(job.id, SUCCEEDED)

    assert done.attempts == 1  # every try while SyncService was down was handed back
    assert not done.errors
    assert worker.breaker.state is BreakerState.CLOSED
    (summary,) = await system.stop_workers()
    run = summary.run
    assert run.jobs_released >= 3  # two to open it, then at least one failed probe
    assert run.jobs_picked == run.jobs_released + 1
    assert (run.jobs_succeeded, run.jobs_failed) == (1, 0)
