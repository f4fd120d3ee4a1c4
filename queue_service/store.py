"""The queue's state machine, as the servicer, maintenance and the scheduler see it.

`JobStore` turns each operation into one call of the database's driver (`queue_service.drivers`:
PostgreSQL or SQLite), with the store's clock and retry policy. It writes no SQL itself. What
the queue shows lives apart, in `store.reader` (`queue_service.readmodel`), and the scheduler's
state in `store.schedules` (`queue_service.schedule_store`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from queue_service.drivers import driver_for
from queue_service.drivers.base import (
    JobListener,
    JobsAvailable,
    LeaderSession,
    Moment,
    PickParams,
    QueueDriver,
    SignalTarget,
)
from queue_service.errors import QueueError
from queue_service.lifecycle import RetryPolicy
from queue_service.models import (
    Caller,
    Completion,
    EnqueueRequest,
    EnqueueResult,
    FailOutcome,
    Failure,
    Job,
    JobRef,
    LeasedJob,
    QueuePause,
    RecoveredJobs,
    Release,
    ResultAck,
    WorkerRun,
    WorkerRunStatus,
)
from queue_service.readmodel import QueueReader
from queue_service.reconnect import retried_on_disconnect
from queue_service.retention import Pruned, RetentionPolicy, prune
from queue_service.schedule_store import ScheduleStore


def utcnow() -> datetime:
    """The default clock: this process's, in UTC."""
    return datetime.now(UTC)


class JobStore:
    """Jobs and worker runs through one driver.

    `clock` may be replaced at any time (tests move time); while it is the default, leases are
    judged by the database's clock where it has one. `on_jobs_available(count)` hears of ready
    jobs where the database cannot announce them itself (see `drivers.driver_for`).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        retry_policy: RetryPolicy | None = None,
        clock: Callable[[], datetime] = utcnow,
        on_jobs_available: JobsAvailable | None = None,
        driver: QueueDriver | None = None,
    ) -> None:
        self.engine = engine
        self.retry_policy = retry_policy or RetryPolicy()
        self.clock = clock
        self.driver = driver or driver_for(
            engine, retry_policy=self.retry_policy, on_jobs_available=on_jobs_available
        )
        self.reader = QueueReader(self.driver)
        self.schedules = ScheduleStore(self.driver, lambda: self.clock())

    def moment(self) -> Moment:
        """Now, as the driver takes it: an injected clock also judges leases."""
        now = self.clock()
        return Moment(now=now, lease_now=None if self.clock is utcnow else now)

    async def ping(self) -> bool:
        """True when the database answers (raises otherwise)."""
        await self.driver.ping()
        return True

    def listener(self, signal: SignalTarget) -> JobListener | None:
        """A listener relaying every replica's announcements of ready jobs, if the database
        has notifications."""
        return self.driver.listener(signal)

    def leader_session(self) -> AbstractAsyncContextManager[LeaderSession]:
        """A session that can hold the leadership of maintenance."""
        return self.driver.leader_session()

    # -- users --------------------------------------------------------------------------------

    @retried_on_disconnect
    async def job_enqueue(self, request: EnqueueRequest, caller: Caller) -> EnqueueResult[Job]:
        """Enqueues one sync, or returns (and maybe upgrades) the account's active job."""
        [result] = await self.driver.job_insert_many([request], caller=caller, moment=self.moment())
        return result

    @retried_on_disconnect
    async def job_enqueue_many(
        self, requests: Sequence[EnqueueRequest], caller: Caller
    ) -> list[EnqueueResult[Job]]:
        """Enqueues many syncs at once; any error writes none of them."""
        return await self.driver.job_insert_many(requests, caller=caller, moment=self.moment())

    @retried_on_disconnect
    async def job_enqueue_many_refs(
        self, requests: Sequence[EnqueueRequest], caller: Caller
    ) -> list[EnqueueResult[JobRef]]:
        """`job_enqueue_many`, each job answered by its reference (JOB_VIEW_ID)."""
        return await self.driver.job_insert_many_refs(requests, caller=caller, moment=self.moment())

    async def job_cancel(self, job_id: uuid.UUID, caller: Caller) -> Job:
        """Cancels a pending job."""
        return await self.driver.job_cancel(job_id, caller, moment=self.moment())

    async def job_retry(self, job_id: uuid.UUID, caller: Caller) -> Job:
        """Puts a failed or cancelled job back to pending with its attempts reset."""
        return await self.driver.job_retry(job_id, caller, moment=self.moment())

    # -- workers ------------------------------------------------------------------------------

    @retried_on_disconnect
    async def job_pick(
        self,
        *,
        max_jobs: int,
        lease: timedelta,
        worker_id: str,
        worker_run_id: uuid.UUID | None = None,
    ) -> list[Job]:
        """Leases up to `max_jobs` jobs: those whose lease ran out first, then ready ones in
        pick order. Expired jobs whose attempts are used up fail instead (worker lost)."""
        params = PickParams(
            max_jobs=max_jobs, lease=lease, worker_id=worker_id, worker_run_id=worker_run_id
        )
        return await self.driver.job_pick(params, moment=self.moment())

    @retried_on_disconnect
    async def job_pick_leased(
        self,
        *,
        max_jobs: int,
        lease: timedelta,
        worker_id: str,
        worker_run_id: uuid.UUID | None = None,
    ) -> list[LeasedJob]:
        """`job_pick` for a worker: the same jobs, each as a `LeasedJob` (JOB_VIEW_WORKER)."""
        params = PickParams(
            max_jobs=max_jobs, lease=lease, worker_id=worker_id, worker_run_id=worker_run_id
        )
        return await self.driver.job_pick_leased(params, moment=self.moment())

    @retried_on_disconnect
    async def lease_extend(
        self, job_id: uuid.UUID, lease_token: uuid.UUID, lease: timedelta
    ) -> datetime:
        """Moves a held lease's end to `lease` from now; returns the new end."""
        return await self.driver.job_lease_extend(job_id, lease_token, lease, moment=self.moment())

    @retried_on_disconnect
    async def job_complete(self, completion: Completion) -> Job:
        """Completes a leased job (CompleteJob)."""
        job, _ = _accepted(await self.driver.job_report_many([completion], moment=self.moment()))
        return job

    @retried_on_disconnect
    async def job_fail(self, failure: Failure) -> FailOutcome:
        """Records a failed attempt of a leased job (FailJob): retried later or failed."""
        job, will_retry = _accepted(
            await self.driver.job_report_many([failure], moment=self.moment())
        )
        return FailOutcome(job=job, will_retry=will_retry)

    @retried_on_disconnect
    async def job_release(
        self,
        job_id: uuid.UUID,
        lease_token: uuid.UUID,
        delay: timedelta | None = None,
        *,
        reason: str = "",
    ) -> Job:
        """Returns a leased job to pending and gives its attempt back: it was never run, or its
        service asked for it later. Not picked before `now + delay`.

        A `reason` replaces `last_error`, where an operator looking at a pending job sees why it
        waits; `errors` stays the list of failed attempts, which a release is not.
        """
        release = Release(job_id=job_id, lease_token=lease_token, reason=reason, delay=delay)
        return await self.driver.job_release(release, moment=self.moment())

    @retried_on_disconnect
    async def results_report(
        self, results: Sequence[Completion | Failure], *, with_jobs: bool = True
    ) -> list[ResultAck]:
        """Applies many results at once (ReportResults); a refused result does not stop the
        others. Without `with_jobs` the acks say only what was accepted."""
        return await self.driver.job_report_many(results, moment=self.moment(), with_jobs=with_jobs)

    async def worker_run_start(self, worker_id: str, metadata: dict[str, Any]) -> WorkerRun:
        """Records the start of a worker run."""
        return await self.driver.worker_run_insert(worker_id, metadata, moment=self.moment())

    async def worker_run_finish(
        self,
        run_id: uuid.UUID,
        status: WorkerRunStatus,
        notes: str | None,
        metadata: dict[str, Any],
    ) -> WorkerRun:
        """Finishes a running worker run."""
        return await self.driver.worker_run_finish(
            run_id, status, notes, metadata, moment=self.moment()
        )

    # -- operators ----------------------------------------------------------------------------

    @retried_on_disconnect
    async def queue_pause(
        self, user_id: uuid.UUID | None, reason: str, paused_by: str | None
    ) -> QueuePause:
        """Pauses picking for one user's jobs, or the whole queue (`user_id` None)."""
        return await self.driver.queue_pause(user_id, reason, paused_by, moment=self.moment())

    @retried_on_disconnect
    async def queue_resume(self, user_id: uuid.UUID | None) -> bool:
        """Ends a pause of picking; False if there was none."""
        return await self.driver.queue_resume(user_id, moment=self.moment())

    # -- maintenance --------------------------------------------------------------------------

    @retried_on_disconnect
    async def jobs_recover(self, *, started_before: datetime | None = None) -> RecoveredJobs:
        """Recovers processing jobs whose lease expired (or that started before a threshold):
        back to pending after backoff while attempts remain, else failed (worker lost)."""
        return await self.driver.job_rescue_stuck(
            moment=self.moment(), started_before=started_before
        )

    async def analyze_if_stale(self) -> bool:
        """Refreshes the queue table's planner statistics if they lag (see the driver)."""
        return await self.driver.queue_analyze_if_stale(moment=self.moment())

    async def prune(self, policy: RetentionPolicy) -> Pruned:
        """Deletes every finished job and worker run older than its retention period, in
        batches (see `queue_service.retention`)."""
        return await prune(self.driver, policy, now=self.clock())


def _accepted(acks: list[ResultAck]) -> tuple[Job, bool]:
    """The job of the one ack of a single result, or the error that refused it."""
    [ack] = acks
    if ack.error is not None:
        assert isinstance(ack.error, QueueError)
        raise ack.error
    assert ack.job is not None
    return ack.job, ack.will_retry
