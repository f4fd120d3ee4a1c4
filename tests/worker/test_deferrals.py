"""SyncService's "come back later" answers: the job goes back unspent, at the time it asked for.

A real QueueService on a real database, a worker run in-process, and a scripted SyncService
on a loopback port that answers SyncAccount with the rich statuses SyncService sends (a
RetryInfo delay and an ErrorInfo reason): the real SyncService cannot be made to give these
answers on demand, and what is tested here is the worker's reading of them.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from clients import Credentials, QueueClient, SyncClient
from clients.worker import Worker, WorkerConfig
from clients.worker.circuit_breaker import BreakerState
from clients.worker.runner import RunSummary
from gmbsync.sync.v1 import sync_service_pb2_grpc as sync_grpc
from service_runtime.errors import SERVICE_ERROR_DOMAIN, ErrorReason, ServiceReason, abort
from tests.conftest import TEST_TRIGGER_SECRET
from tests.queue.conftest import RunningQueue, queue_settings, start_queue, stop_queue
from tests.queue.helpers import job_row
from tests.worker.rig import run_counts

ACTIVATION_URL = (
    "https://console.developers.google.com/apis/api/mybusinessbusinessinformation"
    ".googleapis.com/overview?project=123456"
)
SERVICE = "mybusinessbusinessinformation.googleapis.com"

# The answers, as SyncService sends them.
QUOTA: dict[str, Any] = {
    "code": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "message": "Google quota exhausted: Retry-After 90 s does not fit the deadline",
    "retry_delay_seconds": 90.0,
    "reason": ErrorReason.GOOGLE_QUOTA,
    "error_metadata": {"api": "mybusinessbusinessinformation"},
}
INCOMPLETE: dict[str, Any] = {
    "code": grpc.StatusCode.ABORTED,
    "message": "sync ran out of time after 120 of 300 locations; checkpoint stored",
    "retry_delay_seconds": 1.5,
    "reason": ErrorReason.SYNC_INCOMPLETE,
    "error_metadata": {"locations_done": "120", "locations_total": "300"},
}
API_DISABLED: dict[str, Any] = {
    "code": grpc.StatusCode.UNAVAILABLE,
    "message": f"{SERVICE} has not been used in project 123456 before or it is disabled",
    "retry_delay_seconds": 300.0,
    "reason": ErrorReason.GOOGLE_API_DISABLED,
    "error_metadata": {"service": SERVICE, "activation_url": ACTIVATION_URL},
}
# SyncService's own database blipped: its serving runtime says so, in its own domain.
DATABASE: dict[str, Any] = {
    "code": grpc.StatusCode.UNAVAILABLE,
    "message": "the database is unavailable for the moment; retry after the delay",
    "retry_delay_seconds": 0.5,
    "reason": ServiceReason.DATABASE_UNAVAILABLE,
    "domain": SERVICE_ERROR_DOMAIN,
}


@dataclass
class ScriptedSync(sync_grpc.SyncServiceServicer):
    """Answers every SyncAccount with `answer`; with `hold_until`, only once that many calls
    are waiting (so that jobs picked together are answered together)."""

    answer: dict[str, Any]
    hold_until: int = 0
    calls: list[str] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def SyncAccount(self, request, context):
        self.calls.append(request.job_id)
        if len(self.calls) >= self.hold_until:
            self._arrived.set()
        await asyncio.wait_for(self._arrived.wait(), 20)
        answer = dict(self.answer)
        code, message = answer.pop("code"), answer.pop("message")
        if not answer:
            # No rich status at all: what a proxy or a dying server sends.
            await context.abort(code, message)
        await abort(context, code, message, **answer)


@dataclass
class Rig:
    queue: RunningQueue
    sync: ScriptedSync
    sync_addr: str

    def worker(self, **overrides: Any) -> Worker:
        values: dict[str, Any] = {
            "trigger_secret": TEST_TRIGGER_SECRET,
            "queue_addr": self.queue.address,
            "sync_addr": self.sync_addr,
            "worker_id": f"test-worker-{uuid.uuid4().hex[:6]}",
            "concurrency": 1,
            "once": True,
            "max_jobs_per_run": 5,
            "job_timeout": timedelta(seconds=20),
            "worker_timeout": timedelta(seconds=60),
            "lease_duration": timedelta(seconds=30),
            "poll_wait": timedelta(seconds=1),
            "circuit_breaker_threshold": 3,
            "circuit_breaker_cooldown": timedelta(seconds=30),
        }
        values.update(overrides)
        credentials = Credentials.trigger_secret(TEST_TRIGGER_SECRET)
        return Worker(
            WorkerConfig(**values),
            queue=QueueClient.connect(self.queue.address, credentials),
            sync=SyncClient.connect(self.sync_addr, credentials),
        )

    async def job(self, job_id: str) -> dict[str, Any]:
        return await job_row(self.queue.app.engine, job_id)


@pytest.fixture
async def rig(any_db_url: str, auth_settings) -> AsyncIterator[Rig]:
    queue = await start_queue(queue_settings(any_db_url, auth_settings))
    sync = ScriptedSync(answer=QUOTA)
    server = grpc.aio.server()
    sync_grpc.add_SyncServiceServicer_to_server(sync, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Rig(queue=queue, sync=sync, sync_addr=f"127.0.0.1:{port}")
    finally:
        await server.stop(0)
        await stop_queue(queue)


async def run_once(worker: Worker) -> tuple[RunSummary, datetime, datetime]:
    """Runs a --once worker to its end; the UTC instants just before and just after."""
    before = datetime.now(UTC)
    try:
        summary = await asyncio.wait_for(worker.run(), 60)
    finally:
        await worker.queue.close()
        await worker.sync.close()
    return summary, before, datetime.now(UTC)


def assert_deferred(row: dict[str, Any], delay: float, before: datetime, after: datetime) -> None:
    """Pending, its attempt given back, and not picked again before `delay` after the release
    (which happened between `before` and `after`)."""
    assert row["status"] == "pending"
    assert row["attempts"] == 0
    assert row["errors"] == []  # no failed attempt recorded
    assert row["lease_token"] is None
    wait = timedelta(seconds=delay)
    assert before + wait <= row["scheduled_at"] <= after + wait
    assert row["scheduled_at"] - row["updated_at"] == wait


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (QUOTA, "GOOGLE_QUOTA"),
        (INCOMPLETE, "SYNC_INCOMPLETE"),
        (DATABASE, "DATABASE_UNAVAILABLE"),
    ],
    ids=["google-quota", "sync-incomplete", "sync-database-blip"],
)
async def test_a_come_back_later_answer_defers_the_job_without_spending_an_attempt(
    rig: Rig, answer: dict[str, Any], reason: str
) -> None:
    rig.sync.answer = answer
    account = await rig.queue.add_account()
    job = await rig.queue.enqueue(account, max_attempts=1)
    # One job per run: a short delay may be over before a second pick, which would take it again.
    worker = rig.worker(max_jobs_per_run=1)

    summary, before, after = await run_once(worker)

    row = await rig.job(job.id)
    assert_deferred(row, answer["retry_delay_seconds"], before, after)
    # An operator reading the job sees why it waits.
    assert reason in row["last_error"] and answer["message"] in row["last_error"]
    # SyncService answered for itself: it is healthy.
    assert worker.breaker.state is BreakerState.CLOSED
    assert worker.breaker.consecutive_failures == 0
    assert worker.breaker.times_opened == 0
    assert summary.outcomes == {"deferred": 1}
    # picked, processed, succeeded, failed, released: a deferral is no failure.
    assert run_counts(summary) == (1, 0, 0, 0, 1)
    shown = summary.as_dict()
    assert (shown["jobs_released"], shown["jobs_deferred"], shown["jobs_failed"]) == (1, 1, 0)
    assert rig.sync.calls == [job.id]


async def test_google_api_disabled_defers_the_job_and_holds_this_workers_dispatch(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.sync.answer = API_DISABLED
    accounts = [await rig.queue.add_account() for _ in range(2)]
    first = await rig.queue.enqueue(accounts[0], priority=10)
    second = await rig.queue.enqueue(accounts[1])
    worker = rig.worker()

    with caplog.at_level(logging.INFO):
        summary, before, after = await run_once(worker)

    assert_deferred(await rig.job(first.id), 300.0, before, after)
    assert SERVICE in (await rig.job(first.id))["last_error"]
    # The hold stopped the picking: the second job was never leased, nor SyncService called.
    untouched = await rig.job(second.id)
    assert (untouched["status"], untouched["attempts"], untouched["worker_id"]) == (
        "pending",
        0,
        None,
    )
    assert rig.sync.calls == [first.id]
    assert worker.breaker.state is BreakerState.OPEN
    assert worker.breaker.held
    assert 0 < worker.breaker.seconds_until_probe() <= 300
    assert worker.breaker.consecutive_failures == 0  # SyncService itself is not failing
    assert "circuit breaker open until the run's end" in summary.stop_reason
    assert summary.outcomes == {"deferred": 1}
    assert run_counts(summary) == (1, 0, 0, 0, 1)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert ACTIVATION_URL in errors[0].getMessage() and SERVICE in errors[0].getMessage()


async def test_jobs_in_flight_together_log_the_disabled_api_once(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.sync.answer = API_DISABLED
    rig.sync.hold_until = 2  # both calls are in flight before either is answered
    jobs = [await rig.queue.enqueue(await rig.queue.add_account()) for _ in range(2)]
    worker = rig.worker(concurrency=2)

    with caplog.at_level(logging.INFO):
        summary, before, after = await run_once(worker)

    for job in jobs:
        assert_deferred(await rig.job(job.id), 300.0, before, after)
    assert sorted(rig.sync.calls) == sorted(j.id for j in jobs)
    assert worker.breaker.held and worker.breaker.times_opened == 1
    assert summary.outcomes == {"deferred": 2}
    assert run_counts(summary) == (2, 0, 0, 0, 2)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and ACTIVATION_URL in errors[0].getMessage()


async def test_an_unavailable_without_server_details_still_spends_an_attempt(rig: Rig) -> None:
    # No rich status: the transport's (or a proxy's) UNAVAILABLE, not SyncService's answer.
    rig.sync.answer = {"code": grpc.StatusCode.UNAVAILABLE, "message": "connection reset"}
    job = await rig.queue.enqueue(await rig.queue.add_account(), max_attempts=3)
    worker = rig.worker(max_jobs_per_run=1)

    summary, _, _ = await run_once(worker)

    row = await rig.job(job.id)
    assert row["status"] == "pending"  # retried later by the queue's backoff ...
    assert row["attempts"] == 1  # ... with this attempt spent
    [error] = row["errors"]
    assert "UNAVAILABLE" in error["error"] and not error["permanent"]
    assert worker.breaker.consecutive_failures == 1  # counted against SyncService
    assert worker.breaker.state is BreakerState.CLOSED  # threshold 3 not reached
    assert not worker.breaker.held
    assert summary.outcomes == {"retrying": 1}
    assert run_counts(summary) == (1, 1, 0, 1, 0)


async def test_a_known_reason_under_another_code_is_an_ordinary_failure(rig: Rig) -> None:
    # GOOGLE_QUOTA belongs with RESOURCE_EXHAUSTED; on INTERNAL it asks for nothing.
    rig.sync.answer = {**QUOTA, "code": grpc.StatusCode.INTERNAL}
    job = await rig.queue.enqueue(await rig.queue.add_account(), max_attempts=3)
    worker = rig.worker(max_jobs_per_run=1)

    summary, _, _ = await run_once(worker)

    row = await rig.job(job.id)
    assert (row["status"], row["attempts"], len(row["errors"])) == ("pending", 1, 1)
    assert summary.outcomes == {"retrying": 1}
    assert run_counts(summary) == (1, 1, 0, 1, 0)
