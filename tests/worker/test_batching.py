"""The worker's batching: one PickJobs for all free slots, results through ReportResults.

A real QueueService on PostgreSQL, a worker run in-process whose QueueService channel counts
every call it makes, and a scripted SyncService (tests/worker/rig.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import timedelta

import sqlalchemy as sa

from clients.worker.circuit_breaker import BreakerState
from queue_service.tables import sync_queue
from tests.queue.conftest import start_queue
from tests.worker.rig import WAIT, Rig, run_counts, run_until, until


async def test_a_worker_drains_many_jobs_in_far_fewer_calls_than_jobs(rig: Rig) -> None:
    jobs = await rig.enqueue(50)
    # A batching window wider than the default 5 ms: on a loaded test machine, jobs picked
    # together may finish further apart than that and be picked and reported apart.
    worker = rig.worker(concurrency=8, report_interval=timedelta(milliseconds=50))

    summary = await run_until(
        worker, lambda: worker.outcomes["succeeded"] == 50, "50 jobs to succeed"
    )

    calls = rig.counter.calls
    assert calls["CompleteJob"] == calls["FailJob"] == calls["ReleaseJob"] == 0
    assert calls["PickJobs"] <= 15, calls
    assert 1 <= calls["ReportResults"] < 50, calls
    assert summary.outcomes == {"succeeded": 50}
    assert run_counts(summary) == (50, 50, 50, 0, 0)
    for job_id in jobs:
        row = await rig.job(job_id)
        assert (row["status"], row["attempts"]) == ("succeeded", 1)
        assert row["result"]["locations_synced"] == 1
    assert sorted(rig.sync.calls) == sorted(jobs)  # each job ran exactly once


async def test_a_worker_never_picks_more_jobs_than_it_has_free_slots(rig: Rig) -> None:
    rig.sync.gate.clear()  # every sync waits: the slots stay taken
    jobs = await rig.enqueue(6)
    worker = rig.worker(concurrency=4)
    task = asyncio.create_task(worker.run())
    await until(lambda: len(rig.sync.calls) == 4, "four syncs in flight")
    # Further picks ask for nothing: two jobs stay pending, untouched.
    await until(lambda: rig.counter.calls["PickJobs"] >= 1, "a pick")
    rows = [await rig.job(j) for j in jobs]
    assert sorted(r["status"] for r in rows) == ["pending"] * 2 + ["processing"] * 4
    rig.sync.gate.set()
    await until(lambda: worker.outcomes["succeeded"] == 6, "six jobs to succeed")
    worker.request_stop("test finished")
    summary = await asyncio.wait_for(task, WAIT)
    await worker.sync.close()
    assert run_counts(summary) == (6, 6, 6, 0, 0)


async def test_results_wait_for_a_full_batch_and_go_in_one_call(rig: Rig) -> None:
    rig.sync.gate.clear()
    jobs = await rig.enqueue(4)
    # An hour's interval: only a full batch (4 results) can send them.
    worker = rig.worker(concurrency=4, report_batch=4, report_interval=timedelta(hours=1))
    task = asyncio.create_task(worker.run())
    await until(lambda: len(rig.sync.calls) == 4, "four syncs in flight")
    rig.sync.gate.set()

    await until(lambda: worker.outcomes["succeeded"] == 4, "four jobs to succeed")

    assert worker.reporter.calls == 1
    assert rig.counter.calls["ReportResults"] == 1
    worker.request_stop("test finished")
    summary = await asyncio.wait_for(task, WAIT)
    await worker.sync.close()
    assert run_counts(summary) == (4, 4, 4, 0, 0)
    for job_id in jobs:
        assert (await rig.job(job_id))["status"] == "succeeded"


async def test_a_lone_result_goes_out_after_the_interval_without_a_full_batch(rig: Rig) -> None:
    [job] = await rig.enqueue(1)
    worker = rig.worker(report_batch=1000, report_interval=timedelta(milliseconds=20))

    summary = await run_until(worker, lambda: worker.outcomes["succeeded"] == 1, "the job")

    assert rig.counter.calls["ReportResults"] == 1
    assert (await rig.job(job))["status"] == "succeeded"
    assert run_counts(summary) == (1, 1, 1, 0, 0)


async def test_a_lost_lease_in_a_batch_affects_only_that_job(rig: Rig) -> None:
    rig.sync.gate.clear()
    jobs = await rig.enqueue(3)
    worker = rig.worker(concurrency=3, report_batch=3, report_interval=timedelta(hours=1))
    task = asyncio.create_task(worker.run())
    await until(lambda: len(rig.sync.calls) == 3, "three syncs in flight")
    lost = rig.sync.calls[1]
    # Another holder takes that job's lease (as after an expiry and a re-pick elsewhere).
    async with rig.queue.app.engine.begin() as conn:
        await conn.execute(
            sa.update(sync_queue)
            .where(sync_queue.c.id == uuid.UUID(lost))
            .values(lease_token=uuid.uuid4(), worker_id="someone-else")
        )
    rig.sync.gate.set()

    await until(lambda: sum(worker.outcomes.values()) == 3, "three outcomes")

    assert worker.outcomes == {"succeeded": 2, "lease_lost": 1}
    assert rig.counter.calls["ReportResults"] == 1  # the three went together
    worker.request_stop("test finished")
    summary = await asyncio.wait_for(task, WAIT)
    await worker.sync.close()
    held = await rig.job(lost)
    assert (held["status"], held["worker_id"]) == ("processing", "someone-else")
    for other in set(jobs) - {lost}:
        assert (await rig.job(other))["status"] == "succeeded"
    assert run_counts(summary) == (3, 2, 2, 0, 0)


async def test_a_flush_while_queue_service_is_down_is_retried_and_every_job_ends_once(
    rig: Rig,
) -> None:
    rig.sync.gate.clear()
    jobs = await rig.enqueue(5)
    worker = rig.worker(concurrency=5, report_batch=5, report_interval=timedelta(hours=1))
    task = asyncio.create_task(worker.run())
    await until(lambda: len(rig.sync.calls) == 5, "five syncs in flight")

    # QueueService goes away while the results are on their way.
    await rig.queue.channel.close()
    await rig.queue.app.stop(grace=0)
    rig.sync.gate.set()
    await until(lambda: worker.reporter.calls >= 1, "a ReportResults attempt")
    assert sum(worker.outcomes.values()) == 0  # nothing recorded, nothing given up
    # Back on the same port and database.
    settings = dataclasses.replace(rig.queue.app.settings, listen_addr=rig.queue.address)
    rig.queue = await start_queue(settings)

    await until(lambda: worker.outcomes["succeeded"] == 5, "five jobs to succeed")

    assert rig.counter.calls["ReportResults"] >= 2  # the batch was sent again
    worker.request_stop("test finished")
    summary = await asyncio.wait_for(task, WAIT)
    await worker.sync.close()
    for job_id in jobs:
        row = await rig.job(job_id)
        assert (row["status"], row["attempts"], row["errors"]) == ("succeeded", 1, [])
    assert run_counts(summary) == (5, 5, 5, 0, 0)


async def test_a_batch_whose_answer_was_lost_is_sent_again_and_counted_once(rig: Rig) -> None:
    jobs = await rig.enqueue(3)
    rig.counter.lose_answers = 1
    worker = rig.worker(concurrency=3, report_batch=3, report_interval=timedelta(hours=1))

    summary = await run_until(worker, lambda: sum(worker.outcomes.values()) == 3, "3 outcomes")

    # The first call recorded the three; the retry finds their leases gone. The worker cannot
    # tell that from a lease lost to another worker, and reports nothing more for them...
    assert rig.counter.calls["ReportResults"] == 2
    assert summary.outcomes == {"lease_lost": 3}
    # ...while QueueService holds each job's one ending, counted once for the run.
    for job_id in jobs:
        row = await rig.job(job_id)
        assert (row["status"], row["attempts"]) == ("succeeded", 1)
    assert run_counts(summary) == (3, 3, 3, 0, 0)


async def test_when_no_job_is_left_running_the_results_go_out_without_the_interval(
    rig: Rig,
) -> None:
    jobs = await rig.enqueue(3)
    # An hour's interval and a batch of 1000: only the last running job's end can send them.
    worker = rig.worker(concurrency=3, report_batch=1000, report_interval=timedelta(hours=1))

    summary = await run_until(worker, lambda: worker.outcomes["succeeded"] == 3, "three jobs")

    assert rig.counter.calls["ReportResults"] == 1
    for job_id in jobs:
        assert (await rig.job(job_id))["status"] == "succeeded"
    assert run_counts(summary) == (3, 3, 3, 0, 0)


async def test_stopping_sends_results_held_back_for_a_batch_before_the_run_ends(
    rig: Rig,
) -> None:
    jobs = await rig.enqueue(4)
    # Three syncs answer, the fourth runs on: with an hour's interval and a batch of 1000, the
    # three results wait for company, and only the stop can send them.
    rig.sync.gate.clear()
    rig.sync.ungated = 3
    worker = rig.worker(concurrency=4, report_batch=1000, report_interval=timedelta(hours=1))
    task = asyncio.create_task(worker.run())
    await until(lambda: worker.reporter.backlog == 3, "three results held back")
    assert rig.counter.calls["ReportResults"] == 0

    worker.request_stop("SIGTERM")  # what the signal handler calls
    await until(lambda: worker.outcomes["succeeded"] == 3, "the three results recorded")
    assert rig.counter.calls["ReportResults"] == 1
    rig.sync.gate.set()  # the fourth job ends within the grace period
    summary = await asyncio.wait_for(task, WAIT)
    await worker.sync.close()

    assert summary.outcomes == {"succeeded": 4}
    assert rig.counter.calls["ReportResults"] == 2
    for job_id in jobs:
        assert (await rig.job(job_id))["status"] == "succeeded"
    assert run_counts(summary) == (4, 4, 4, 0, 0)


async def test_jobs_handed_back_while_sync_service_is_down_go_in_one_batch_unspent(
    rig: Rig,
) -> None:
    jobs = await rig.enqueue(4)
    # Nothing listens there: every job finds SyncService unreachable before calling it.
    worker = rig.worker(
        concurrency=4,
        sync_addr="127.0.0.1:9",
        connect_timeout=timedelta(milliseconds=200),
        circuit_breaker_threshold=1,
        circuit_breaker_cooldown=timedelta(minutes=10),
        report_interval=timedelta(seconds=1),
    )

    summary = await run_until(
        worker, lambda: worker.outcomes["released"] == 4, "four jobs handed back"
    )

    assert worker.breaker.state is BreakerState.OPEN
    assert rig.counter.calls["ReleaseJob"] == 0
    assert rig.counter.calls["ReportResults"] == 1
    assert rig.counter.calls["PickJobs"] == 1  # the open breaker stopped the picking
    for job_id in jobs:
        row = await rig.job(job_id)
        assert (row["status"], row["attempts"], row["errors"]) == ("pending", 0, [])
        assert "SyncService unreachable" in row["last_error"]
    assert run_counts(summary) == (4, 0, 0, 0, 4)
