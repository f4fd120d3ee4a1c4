"""Restarts and scale: workers reconnect by themselves; replicas and workers share one queue."""

from __future__ import annotations

import asyncio

from clients import Credentials, QueueClient
from clients.queue import JobStatus
from queue_service.app import QueueApp
from tests.conftest import TEST_TRIGGER_SECRET
from tests.e2e.conftest import System, eventually

SUCCEEDED = JobStatus.Value("JOB_STATUS_SUCCEEDED")


async def test_a_worker_carries_on_after_queue_service_restarts(system: System) -> None:
    worker = system.start_worker()
    first = await system.enqueue(await system.connect_account(1))
    await system.wait_for_status(first.id, SUCCEEDED)

    await system.restart_queue()
    second = await system.enqueue(await system.connect_account(2))

    done = await system.wait_for_status(second.id, SUCCEEDED)
    assert done.worker_id == worker.config.worker_id
    assert done.attempts == 1


async def test_many_workers_and_two_queue_replicas_share_one_database(system: System) -> None:
    replica = QueueApp(system.queue_app.settings)
    replica_port = await replica.start()
    replica_addr = f"127.0.0.1:{replica_port}"
    try:
        accounts = [await system.connect_account(n) for n in range(1, 7)]
        jobs = [await system.enqueue(account) for account in accounts]
        workers = [
            system.start_worker(queue_addr=addr, concurrency=2)
            for addr in (system.queue_addr, replica_addr, system.queue_addr, replica_addr)
        ]

        async def statuses() -> list[int]:
            return [(await system.job(job.id)).status for job in jobs]

        await eventually(statuses, lambda s: s == [SUCCEEDED] * len(jobs), what="all succeeded")
        summaries = await system.stop_workers()
    finally:
        await replica.stop(grace=0.5)

    finished = [await system.job(job.id) for job in jobs]
    assert all(job.attempts == 1 for job in finished)  # no job ran twice
    assert sum(s.run.jobs_succeeded for s in summaries) == len(jobs)
    assert sum(s.run.jobs_picked for s in summaries) == len(jobs)
    assert {job.worker_id for job in finished} <= {w.config.worker_id for w in workers}


async def test_a_runs_counts_are_exact_and_shown_by_diagnostics(system: System) -> None:
    accounts = [await system.connect_account(n) for n in (1, 2, 3)]
    jobs = [await system.enqueue(account) for account in accounts]
    system.start_worker(concurrency=3)
    await asyncio.gather(*(system.wait_for_status(job.id, SUCCEEDED) for job in jobs))
    (summary,) = await system.stop_workers()

    async with QueueClient.connect(
        system.queue_addr, Credentials.trigger_secret(TEST_TRIGGER_SECRET)
    ) as queue:
        diagnostics = await queue.get_diagnostics(recent_limit=5)
    (run,) = [r for r in diagnostics.recent_worker_runs if r.id == summary.run.id]
    assert (run.jobs_picked, run.jobs_processed, run.jobs_succeeded) == (3, 3, 3)
    assert summary.outcomes == {"succeeded": 3}
