"""WORKER_PREFETCH: jobs leased ahead of a free slot, held with their leases kept, each run once.

A real QueueService on PostgreSQL, a worker run in-process, and a scripted SyncService
(tests/worker/rig.py) whose gate holds syncs in flight, so that the slots stay taken.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from clients.worker import Worker
from clients.worker.config import ConfigError, load_config
from clients.worker.runner import RunSummary
from queue_service.tables import sync_queue
from tests.conftest import TEST_TRIGGER_SECRET
from tests.worker.rig import WAIT, Rig, run_counts, until


async def statuses(rig: Rig, jobs: list[str]) -> collections.Counter[str]:
    return collections.Counter([(await rig.job(job_id))["status"] for job_id in jobs])


async def until_rows(rig: Rig, jobs: list[str], expected: dict[str, int], what: str) -> None:
    """Polls the jobs' rows until their statuses are `expected` (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while (found := await statuses(rig, jobs)) != expected:
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}: statuses {dict(found)}")
        await asyncio.sleep(0.02)


async def one_running_one_held(rig: Rig) -> tuple[Worker, asyncio.Task[RunSummary], list[str]]:
    """A worker of one slot and a prefetch of one, on 6 s leases, with its one sync held at the
    gate and the second job held for its slot; and the two jobs."""
    rig.sync.gate.clear()
    jobs = await rig.enqueue(2)
    worker = rig.worker(concurrency=1, prefetch=1, lease_duration=timedelta(seconds=6))
    task = rig.start(worker)
    await until(lambda: len(rig.sync.calls) == 1, "one sync in flight")
    await until(lambda: len(worker._held) == 1, "one job held")
    return worker, task, jobs


async def test_a_prefetching_worker_leases_jobs_ahead_of_its_slots_and_runs_each_once(
    rig: Rig,
) -> None:
    rig.sync.gate.clear()  # every sync waits: the two slots stay taken
    jobs = await rig.enqueue(8)
    worker = rig.worker(concurrency=2, prefetch=3)
    task = rig.start(worker)

    # Two running, three held with their leases, three left for other workers.
    await until_rows(rig, jobs, {"processing": 5, "pending": 3}, "five jobs leased")
    await until(lambda: len(rig.sync.calls) == 2, "two syncs in flight")
    assert REGISTRY.get_sample_value("gmbsync_worker_jobs_prefetched") == 3
    assert REGISTRY.get_sample_value("gmbsync_worker_jobs_running") == 2
    await asyncio.sleep(0.3)  # more poll rounds: still no more than two syncs at once
    assert len(rig.sync.calls) == 2

    rig.sync.gate.set()
    await until(lambda: worker.outcomes["succeeded"] == 8, "eight jobs to succeed")
    worker.request_stop("test finished")
    summary = await asyncio.wait_for(task, WAIT)
    await worker.sync.close()

    assert sorted(rig.sync.calls) == sorted(jobs)  # each job ran exactly once
    assert run_counts(summary) == (8, 8, 8, 0, 0)
    for job_id in jobs:
        row = await rig.job(job_id)
        assert (row["status"], row["attempts"]) == ("succeeded", 1)


async def test_a_held_job_keeps_its_lease_while_it_waits_for_a_slot(rig: Rig) -> None:
    # A 6 s lease, extended every 2 s: the held job waits through more than a whole lease.
    worker, task, jobs = await one_running_one_held(rig)
    held = worker._held[0].job.id
    first = await rig.job(held)

    await asyncio.sleep(8)
    row = await rig.job(held)
    assert (row["status"], row["worker_id"], row["lease_token"]) == (
        "processing",
        worker.config.worker_id,
        first["lease_token"],
    )
    assert row["lease_expires_at"] > first["lease_expires_at"]  # extended, not run out

    rig.sync.gate.set()
    await until(lambda: worker.outcomes["succeeded"] == 2, "both jobs to succeed")
    worker.request_stop("test finished")
    summary = await asyncio.wait_for(task, WAIT)
    await worker.sync.close()
    assert sorted(rig.sync.calls) == sorted(jobs)
    assert run_counts(summary) == (2, 2, 2, 0, 0)


async def test_a_held_job_whose_lease_ran_out_in_a_stall_is_handed_back_not_run(
    rig: Rig,
) -> None:
    worker, task, jobs = await one_running_one_held(rig)
    execution = worker._held[0]
    held = execution.job.id
    # What a stall longer than the lease leaves (a stopped process, a starved loop): no
    # extension confirmed for a whole lease, and the lease run out by the database's clock.
    execution._keeper.confirmed_at -= 6
    async with rig.queue.app.engine.begin() as conn:
        await conn.execute(
            sa.update(sync_queue)
            .where(sync_queue.c.id == uuid.UUID(held))
            .values(lease_expires_at=sa.func.now() - timedelta(seconds=1))
        )

    rig.sync.gate.set()  # the running job ends, and the held one's turn comes
    await until(lambda: worker.outcomes["lease_lost"] == 1, "the held job's lease given up")
    worker.request_stop("test finished")
    summary = await asyncio.wait_for(task, WAIT)

    # Never synced under the lease it no longer held (attempt 1); another pick may take it over
    # with a lease of its own, as any job whose lease ran out.
    assert (held, 1) not in rig.sync.attempts
    assert (jobs[0] if jobs[0] != held else jobs[1], 1) in rig.sync.attempts
    assert summary.outcomes["succeeded"] >= 1
    assert summary.outcomes["lease_lost"] == 1


async def test_a_stop_hands_back_held_jobs_at_once_with_no_attempt_spent(rig: Rig) -> None:
    rig.sync.gate.clear()
    jobs = await rig.enqueue(4)
    worker = rig.worker(concurrency=2, prefetch=2)
    task = rig.start(worker)
    await until(lambda: len(rig.sync.calls) == 2, "two syncs in flight")
    await until(lambda: len(worker._held) == 2, "two jobs held")
    held = [execution.job.id for execution in worker._held]

    worker.request_stop("SIGTERM")
    # The held jobs go back while the running ones are still running.
    await until_rows(rig, jobs, {"processing": 2, "pending": 2}, "the held jobs handed back")
    for job_id in held:
        row = await rig.job(job_id)
        assert (row["status"], row["attempts"], row["lease_token"]) == ("pending", 0, None)
        assert "worker shutting down" in row["last_error"]
    assert not task.done()

    rig.sync.gate.set()  # the running jobs end within the grace period
    summary = await asyncio.wait_for(task, WAIT)
    await worker.sync.close()
    assert sorted(rig.sync.calls) == sorted(set(jobs) - set(held))
    assert summary.outcomes == {"succeeded": 2, "released": 2}
    assert run_counts(summary) == (4, 2, 2, 0, 2)


async def test_once_never_prefetches(rig: Rig) -> None:
    rig.sync.gate.clear()
    jobs = await rig.enqueue(6)
    worker = rig.worker(
        concurrency=2,
        prefetch=8,
        once=True,
        max_jobs_per_run=5,
        worker_timeout=timedelta(seconds=40),
    )
    task = rig.start(worker)
    await until(lambda: len(rig.sync.calls) == 2, "two syncs in flight")
    await asyncio.sleep(0.3)
    # Only what it runs now is leased: a --once run may end before a held job's turn.
    assert await statuses(rig, jobs) == {"processing": 2, "pending": 4}

    rig.sync.gate.set()
    summary = await asyncio.wait_for(task, WAIT)
    await worker.sync.close()
    assert run_counts(summary) == (5, 5, 5, 0, 0)
    assert await statuses(rig, jobs) == {"succeeded": 5, "pending": 1}


@pytest.mark.parametrize("raw", ["-1", "257", "many"])
def test_a_prefetch_out_of_range_is_refused_naming_the_setting(raw: str) -> None:
    environ = {"TRIGGER_SECRET": TEST_TRIGGER_SECRET, "WORKER_PREFETCH": raw}
    with pytest.raises(ConfigError, match="WORKER_PREFETCH"):
        load_config([], environ)


def test_prefetch_is_off_unless_asked_for() -> None:
    environ = {"TRIGGER_SECRET": TEST_TRIGGER_SECRET}
    assert load_config([], environ).prefetch == 0
    assert load_config(["--prefetch", "16"], environ).prefetch == 16
    assert load_config([], {**environ, "WORKER_PREFETCH": "32"}).prefetch == 32
