"""The worker's batching: one PickJobs for all free slots, results through ReportResults.

A real QueueService on PostgreSQL, a worker run in-process whose QueueService channel counts
every call it makes (a client interceptor), and a scripted SyncService on a loopback port that
answers SyncAccount with a success, at once or when the test lets it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from clients import Credentials, QueueClient, SyncClient
from clients.worker import Worker, WorkerConfig
from clients.worker.circuit_breaker import BreakerState
from clients.worker.runner import RunSummary
from gmbsync.sync.v1 import sync_service_pb2 as sync_pb
from gmbsync.sync.v1 import sync_service_pb2_grpc as sync_grpc
from queue_service.tables import sync_queue
from tests.conftest import TEST_TRIGGER_SECRET
from tests.queue.conftest import RunningQueue, queue_settings, start_queue, stop_queue
from tests.queue.helpers import job_row

WAIT = 30.0


@dataclass
class InstantSync(sync_grpc.SyncServiceServicer):
    """Answers every SyncAccount with a success; while `gate` is clear, holds the answers of
    every call but the first `ungated` ones."""

    calls: list[str] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    ungated: int = 0

    def __post_init__(self) -> None:
        self.gate.set()

    async def SyncAccount(self, request, context):
        self.calls.append(request.job_id)
        if len(self.calls) > self.ungated:
            await asyncio.wait_for(self.gate.wait(), WAIT)
        return sync_pb.SyncAccountResponse(
            account_id=request.account_id, sync_type=request.sync_type, locations_synced=1
        )


class CountingInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Counts the calls of a channel by method; `lose_answers` drops the answers of that many
    ReportResults calls after QueueService has carried them out (an answer lost on the way)."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.lose_answers = 0

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        method = client_call_details.method
        name = (method.decode() if isinstance(method, bytes) else method).rsplit("/", 1)[-1]
        self.calls[name] += 1
        call = await continuation(client_call_details, request)
        if name == "ReportResults" and self.lose_answers > 0:
            await call  # carried out by QueueService...
            self.lose_answers -= 1
            raise grpc.aio.AioRpcError(  # ...but the answer never arrives
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details="connection reset before the answer arrived",
            )
        return call


@dataclass
class Rig:
    queue: RunningQueue
    sync: InstantSync
    sync_addr: str
    counter: CountingInterceptor = field(default_factory=CountingInterceptor)

    def worker(self, **overrides: Any) -> Worker:
        values: dict[str, Any] = {
            "trigger_secret": TEST_TRIGGER_SECRET,
            "queue_addr": self.queue.address,
            "sync_addr": self.sync_addr,
            "worker_id": f"batch-worker-{uuid.uuid4().hex[:6]}",
            "concurrency": 8,
            "job_timeout": timedelta(seconds=20),
            "lease_duration": timedelta(seconds=30),
            "poll_wait": timedelta(milliseconds=200),
            "shutdown_grace": timedelta(seconds=20),
        }
        values.update(overrides)
        credentials = Credentials.trigger_secret(TEST_TRIGGER_SECRET)
        channel = grpc.aio.insecure_channel(self.queue.address, interceptors=[self.counter])
        return Worker(
            WorkerConfig(**values),
            queue=QueueClient(channel, credentials, owns_channel=True),
            sync=SyncClient.connect(values["sync_addr"], credentials),
        )

    async def enqueue(self, count: int, **fields: Any) -> list[str]:
        return [
            (await self.queue.enqueue(await self.queue.add_account(), **fields)).id
            for _ in range(count)
        ]

    async def job(self, job_id: str) -> dict[str, Any]:
        return await job_row(self.queue.app.engine, job_id)


@pytest.fixture
async def rig(pg_url: str, auth_settings) -> AsyncIterator[Rig]:
    queue = await start_queue(queue_settings(pg_url, auth_settings))
    sync = InstantSync()
    server = grpc.aio.server()
    sync_grpc.add_SyncServiceServicer_to_server(sync, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    running = Rig(queue=queue, sync=sync, sync_addr=f"127.0.0.1:{port}")
    try:
        yield running
    finally:
        await server.stop(0)
        await stop_queue(running.queue)


async def until(probe: Callable[[], Any], what: str, timeout: float = WAIT) -> None:
    """Polls a condition of in-process state (bounded; fails naming what never happened)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not probe():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def run_until(worker: Worker, done: Callable[[], bool], what: str) -> RunSummary:
    """Runs a continuous worker until `done`, then stops it as SIGTERM does; its summary."""
    task = asyncio.create_task(worker.run())
    try:
        await until(lambda: done() or task.done(), what)
    finally:
        if not task.done():
            worker.request_stop("test finished")
    summary = await asyncio.wait_for(task, WAIT)
    await worker.sync.close()
    return summary


def run_counts(summary: RunSummary) -> tuple[int, int, int, int, int]:
    run = summary.run
    assert run is not None, summary.error
    return (
        run.jobs_picked,
        run.jobs_processed,
        run.jobs_succeeded,
        run.jobs_failed,
        run.jobs_released,
    )


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
