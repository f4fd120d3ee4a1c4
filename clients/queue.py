"""QueueClient: typed async calls of every QueueService RPC.

Which calls are retried on UNAVAILABLE, RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED, and why:

- Reads (GetJob, ListJobs, GetQueueStatus, GetDiagnostics): always safe.
- ExtendLease: repeating it only moves the expiry to "now + duration" again.
- MarkStaleJobs: it recovers whatever is stale at the time; a repeat finds nothing more.
- PauseQueue and ResumeQueue: a repeat leaves the same pause state (a repeated resume answers
  `resumed` false).
- Never retried here: EnqueueSync (a repeat after a lost answer returns `duplicate`, which
  would mislead the caller), PickJobs (a lost answer leases jobs nobody runs until their lease
  expires, burning an attempt: the caller should pick again itself, not this layer),
  CompleteJob, FailJob, ReleaseJob and ReportResults (a repeat after a lost answer sees the
  lease gone and raises LeaseLost for a result that was in fact recorded; the worker, which
  knows what it already reported, retries them itself), Cancel/Retry and worker runs.

Lease calls raise `LeaseLost` (a FailedPrecondition) when the lease is no longer held.

`watch_job` streams a job's changes (WatchJob); `wait_for_job` waits for a job to finish, and
watches again when a stream breaks on a retryable error (a server restarting, a replica going
away) until its own timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from clients.calls import ServiceClient, sync_type_value, to_duration, to_struct, to_timestamp
from clients.errors import ClientError, DeadlineExceeded, JobWaitTimeout, Unavailable
from gmbsync.queue.v1 import queue_service_pb2 as pb
from gmbsync.queue.v1 import queue_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# PickJobs long-polls for up to `wait`; its deadline must outlast the wait by this much.
_PICK_DEADLINE_MARGIN = 10.0

Job = pb.Job
JobResult = pb.JobResult
JobResultAck = pb.JobResultAck
JobStatus = pb.JobStatus
JobView = pb.JobView
SyncResult = pb.SyncResult
SyncSchedule = pb.SyncSchedule
SyncType = pb.SyncType
WorkerRun = pb.WorkerRun
WorkerRunStatus = pb.WorkerRunStatus

#: The statuses a job does not leave by itself (RetryJob may still put it back to pending).
FINISHED_STATUSES = frozenset(
    {pb.JOB_STATUS_SUCCEEDED, pb.JOB_STATUS_FAILED, pb.JOB_STATUS_CANCELLED}
)


class QueueClient(ServiceClient):
    """Typed client of gmbsync.queue.v1.QueueService."""

    service_name = "QueueService"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stub = pb_grpc.QueueServiceStub(self._channel)

    # --- users -------------------------------------------------------------------------------

    async def enqueue_sync(
        self,
        account_id: str,
        sync_type: int | str = pb.SYNC_TYPE_INCREMENTAL,
        *,
        priority: int = 0,
        scheduled_at: datetime | None = None,
        max_attempts: int = 0,
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> pb.EnqueueSyncResponse:
        """Enqueues a sync of one account (or returns the job already queued for it)."""
        request = pb.EnqueueSyncRequest(
            account_id=account_id,
            sync_type=sync_type_value(pb.SyncType, sync_type),
            priority=priority,
            scheduled_at=to_timestamp(scheduled_at),
            max_attempts=max_attempts,
            metadata=to_struct(metadata),
        )
        return await self._unary("EnqueueSync", self._stub.EnqueueSync, request, timeout=timeout)

    async def enqueue_sync_batch(
        self,
        items: Sequence[pb.EnqueueSyncRequest],
        *,
        view: pb.JobView.ValueType = pb.JOB_VIEW_UNSPECIFIED,
        timeout: float | None = None,
    ) -> list[pb.EnqueueSyncResponse]:
        """Enqueues many syncs in one transaction; one answer per item, in order.
        `view=JOB_VIEW_ID` returns only each job's id, account and status."""
        request = pb.EnqueueSyncBatchRequest(items=items, view=view)
        response = await self._unary(
            "EnqueueSyncBatch", self._stub.EnqueueSyncBatch, request, timeout=timeout
        )
        return list(response.results)

    async def get_job(self, job_id: str, *, timeout: float | None = None) -> pb.Job:
        request = pb.GetJobRequest(job_id=job_id)
        response = await self._unary(
            "GetJob", self._stub.GetJob, request, timeout=timeout, idempotent=True
        )
        return response.job

    async def list_jobs(
        self,
        *,
        status: pb.JobStatus.ValueType = pb.JOB_STATUS_UNSPECIFIED,
        account_id: str = "",
        user_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> pb.ListJobsResponse:
        """One page of jobs, newest first."""
        request = pb.ListJobsRequest(
            status=status,
            account_id=account_id,
            user_id=user_id,
            page_size=page_size,
            page_token=page_token,
        )
        return await self._unary(
            "ListJobs", self._stub.ListJobs, request, timeout=timeout, idempotent=True
        )

    async def get_queue_status(
        self, *, recent_limit: int = 0, timeout: float | None = None
    ) -> pb.GetQueueStatusResponse:
        request = pb.GetQueueStatusRequest(recent_limit=recent_limit)
        return await self._unary(
            "GetQueueStatus", self._stub.GetQueueStatus, request, timeout=timeout, idempotent=True
        )

    async def cancel_job(self, job_id: str, *, timeout: float | None = None) -> pb.Job:
        request = pb.CancelJobRequest(job_id=job_id)
        response = await self._unary("CancelJob", self._stub.CancelJob, request, timeout=timeout)
        return response.job

    async def retry_job(self, job_id: str, *, timeout: float | None = None) -> pb.Job:
        request = pb.RetryJobRequest(job_id=job_id)
        response = await self._unary("RetryJob", self._stub.RetryJob, request, timeout=timeout)
        return response.job

    async def watch_job(
        self, job_id: str, *, timeout: float | None = None
    ) -> AsyncIterator[pb.Job]:
        """The job now, then again at each change, ending after the job is finished.

        `timeout` bounds the whole stream (None: as long as the job takes); on running out
        the iteration raises DeadlineExceeded.
        """
        request = pb.WatchJobRequest(job_id=job_id)
        async for response in self._stream(
            "WatchJob", self._stub.WatchJob, request, timeout=timeout
        ):
            yield response.job

    async def wait_for_job(self, job_id: str, timeout: float | None) -> pb.Job:
        """Waits until the job is finished (succeeded, failed or cancelled) and returns it.

        Raises JobWaitTimeout (a DeadlineExceeded, with the last state seen as `job`) when it
        is not finished within `timeout` seconds (None: no limit), and the call's ClientError
        when the job cannot be watched (NotFound, InvalidArgument, PermissionDenied...). A stream
        broken by a retryable error is watched again after a backoff, up to the retry policy's
        `attempts` breaks in a row without the job changing.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        last: pb.Job | None = None
        broken = 0
        while True:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise self._wait_timeout(job_id, timeout, last)
            try:
                async for job in self.watch_job(job_id, timeout=remaining):
                    if job != last:  # progress: breaks before it do not count against this one
                        last, broken = job, 0
                    if job.status in FINISHED_STATUSES:
                        return job
                # A stream that ends before the job is finished (a proxy's idle cut): again.
                error: ClientError = Unavailable(
                    "the watch ended before the job finished", method="QueueService.WatchJob"
                )
            except DeadlineExceeded:
                raise self._wait_timeout(job_id, timeout, last) from None
            except ClientError as exc:
                error = exc
            broken += 1
            if not error.retryable or broken >= self._retry.attempts:
                raise error
            delay = self._retry.backoff(broken, error)
            if deadline is not None:
                delay = min(delay, max(0.0, deadline - loop.time()))
            log.debug("WatchJob %s broke (%s); watching again in %.2f s", job_id, error, delay)
            await asyncio.sleep(delay)

    def _wait_timeout(
        self, job_id: str, timeout: float | None, last: pb.Job | None
    ) -> JobWaitTimeout:
        state = JobStatus.Name(last.status) if last is not None else "unknown"
        return JobWaitTimeout(
            f"job {job_id} not finished after {timeout or 0:g} s (last seen {state})",
            job=last,
            method=f"{self.service_name}.WatchJob",
        )

    # --- workers -----------------------------------------------------------------------------

    async def pick_jobs(
        self,
        *,
        worker_id: str,
        max_jobs: int = 1,
        wait: float | timedelta = 0.0,
        lease_duration: float | timedelta | None = None,
        worker_run_id: str = "",
        view: pb.JobView.ValueType = pb.JOB_VIEW_UNSPECIFIED,
    ) -> list[pb.Job]:
        """Leases up to `max_jobs` ready jobs, long-polling up to `wait` for the first one.

        `view=JOB_VIEW_WORKER` returns only the fields a worker reads (lease token included).
        """
        wait_seconds = wait.total_seconds() if isinstance(wait, timedelta) else wait
        request = pb.PickJobsRequest(
            max_jobs=max_jobs,
            wait=to_duration(wait) if wait_seconds > 0 else None,
            lease_duration=to_duration(lease_duration),
            worker_id=worker_id,
            worker_run_id=worker_run_id,
            view=view,
        )
        response = await self._unary(
            "PickJobs",
            self._stub.PickJobs,
            request,
            timeout=wait_seconds + _PICK_DEADLINE_MARGIN,
        )
        return list(response.jobs)

    async def extend_lease(
        self,
        job_id: str,
        lease_token: str,
        lease_duration: float | timedelta | None = None,
        *,
        timeout: float | None = None,
    ) -> datetime:
        """Extends a held lease; returns the new expiry. LeaseLost if it is no longer held."""
        request = pb.ExtendLeaseRequest(
            job_id=job_id, lease_token=lease_token, lease_duration=to_duration(lease_duration)
        )
        response = await self._unary(
            "ExtendLease",
            self._stub.ExtendLease,
            request,
            timeout=timeout,
            idempotent=True,
            lease=True,
        )
        return response.lease_expires_at.ToDatetime(tzinfo=UTC)

    async def complete_job(
        self,
        job_id: str,
        lease_token: str,
        result: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> pb.Job:
        """Records a job's success."""
        request = pb.CompleteJobRequest(
            job_id=job_id, lease_token=lease_token, result=to_struct(result)
        )
        response = await self._unary(
            "CompleteJob", self._stub.CompleteJob, request, timeout=timeout, lease=True
        )
        return response.job

    async def fail_job(
        self,
        job_id: str,
        lease_token: str,
        error: str,
        *,
        permanent: bool = False,
        retry_after: float | timedelta | None = None,
        timeout: float | None = None,
    ) -> pb.FailJobResponse:
        """Records a failed attempt; `will_retry` says whether the job goes back to pending."""
        request = pb.FailJobRequest(
            job_id=job_id,
            lease_token=lease_token,
            error=error,
            permanent=permanent,
            retry_after=to_duration(retry_after),
        )
        return await self._unary(
            "FailJob", self._stub.FailJob, request, timeout=timeout, lease=True
        )

    async def release_job(
        self,
        job_id: str,
        lease_token: str,
        reason: str,
        *,
        delay: float | timedelta | None = None,
        timeout: float | None = None,
    ) -> pb.Job:
        """Gives a leased job back to pending without spending its attempt."""
        request = pb.ReleaseJobRequest(
            job_id=job_id, lease_token=lease_token, reason=reason, delay=to_duration(delay)
        )
        response = await self._unary(
            "ReleaseJob", self._stub.ReleaseJob, request, timeout=timeout, lease=True
        )
        return response.job

    async def report_results(
        self,
        results: Iterable[pb.JobResult],
        *,
        ack_only: bool = False,
        timeout: float | None = None,
    ) -> list[pb.JobResultAck]:
        """Records many completions, failures and releases in one call; one ack per result, in
        order. With `ack_only` an ack carries the job's id, code and status, not the job."""
        request = pb.ReportResultsRequest(results=list(results), ack_only=ack_only)
        response = await self._unary(
            "ReportResults", self._stub.ReportResults, request, timeout=timeout
        )
        return list(response.acks)

    async def start_worker_run(
        self,
        worker_id: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> pb.WorkerRun:
        """Opens a row in `sync_worker_runs`; its id goes with every PickJobs of the run."""
        request = pb.StartWorkerRunRequest(worker_id=worker_id, metadata=to_struct(metadata))
        response = await self._unary(
            "StartWorkerRun", self._stub.StartWorkerRun, request, timeout=timeout
        )
        return response.run

    async def finish_worker_run(
        self,
        run_id: str,
        *,
        status: pb.WorkerRunStatus.ValueType = pb.WORKER_RUN_STATUS_COMPLETED,
        notes: str = "",
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> pb.WorkerRun:
        """Closes a worker run; the answer carries the server's exact job counts."""
        request = pb.FinishWorkerRunRequest(
            run_id=run_id, status=status, notes=notes, metadata=to_struct(metadata)
        )
        response = await self._unary(
            "FinishWorkerRun", self._stub.FinishWorkerRun, request, timeout=timeout
        )
        return response.run

    # --- operators ---------------------------------------------------------------------------

    async def mark_stale_jobs(
        self, threshold: float | timedelta | None = None, *, timeout: float | None = None
    ) -> pb.MarkStaleJobsResponse:
        request = pb.MarkStaleJobsRequest(threshold=to_duration(threshold))
        return await self._unary(
            "MarkStaleJobs", self._stub.MarkStaleJobs, request, timeout=timeout, idempotent=True
        )

    async def get_diagnostics(
        self, *, recent_limit: int = 0, timeout: float | None = None
    ) -> pb.GetDiagnosticsResponse:
        request = pb.GetDiagnosticsRequest(recent_limit=recent_limit)
        return await self._unary(
            "GetDiagnostics", self._stub.GetDiagnostics, request, timeout=timeout, idempotent=True
        )

    async def get_sync_schedule(
        self, account_id: str, *, timeout: float | None = None
    ) -> pb.SyncSchedule:
        """One account's periodic syncs: overrides, opt-out, and when the next ones fall."""
        request = pb.GetSyncScheduleRequest(account_id=account_id)
        response = await self._unary(
            "GetSyncSchedule",
            self._stub.GetSyncSchedule,
            request,
            timeout=timeout,
            idempotent=True,
        )
        return response.schedule

    async def set_sync_schedule(
        self,
        account_id: str,
        *,
        incremental_interval: float | timedelta | None = None,
        full_interval: float | timedelta | None = None,
        enabled: bool | None = None,
        timeout: float | None = None,
    ) -> pb.SyncSchedule:
        """Changes one account's periodic syncs; None leaves a setting as it is, an interval of
        0 returns it to the service default. Setting the same values again changes nothing."""
        request = pb.SetSyncScheduleRequest(
            account_id=account_id,
            incremental_interval=to_duration(incremental_interval),
            full_interval=to_duration(full_interval),
            enabled=enabled,
        )
        response = await self._unary(
            "SetSyncSchedule",
            self._stub.SetSyncSchedule,
            request,
            timeout=timeout,
            idempotent=True,
        )
        return response.schedule

    # --- queue control -----------------------------------------------------------------------

    async def pause_queue(
        self, user_id: str | None = None, *, reason: str = "", timeout: float | None = None
    ) -> pb.PauseQueueResponse:
        """Stops picking one user's jobs, or the whole queue's when `user_id` is None. A
        repeat only sets the reason again, so it is retried."""
        request = pb.PauseQueueRequest(user_id=user_id or "", reason=reason)
        return await self._unary(
            "PauseQueue", self._stub.PauseQueue, request, timeout=timeout, idempotent=True
        )

    async def resume_queue(
        self, user_id: str | None = None, *, reason: str = "", timeout: float | None = None
    ) -> pb.ResumeQueueResponse:
        """Ends the pause of one user, or of the whole queue when `user_id` is None. Retried: a
        repeat after a lost answer finds nothing to resume and says `resumed` false."""
        request = pb.ResumeQueueRequest(user_id=user_id or "", reason=reason)
        return await self._unary(
            "ResumeQueue", self._stub.ResumeQueue, request, timeout=timeout, idempotent=True
        )


# --- results for ReportResults -------------------------------------------------------------


def completed(
    job_id: str,
    lease_token: str,
    result: Mapping[str, Any] | None = None,
    *,
    sync_result: pb.SyncResult | None = None,
) -> pb.JobResult:
    """A ReportResults item: the job succeeded (as CompleteJob), with its result as JSON-like
    `result` or as a typed `sync_result` (cheaper on both sides; not both)."""
    return pb.JobResult(
        complete=pb.CompleteJobRequest(
            job_id=job_id,
            lease_token=lease_token,
            result=to_struct(result),
            sync_result=sync_result,
        )
    )


def failed(
    job_id: str,
    lease_token: str,
    error: str,
    *,
    permanent: bool = False,
    retry_after: float | timedelta | None = None,
) -> pb.JobResult:
    """A ReportResults item: the attempt failed (as FailJob)."""
    return pb.JobResult(
        fail=pb.FailJobRequest(
            job_id=job_id,
            lease_token=lease_token,
            error=error,
            permanent=permanent,
            retry_after=to_duration(retry_after),
        )
    )


def released(
    job_id: str, lease_token: str, reason: str, *, delay: float | timedelta | None = None
) -> pb.JobResult:
    """A ReportResults item: the job goes back unrun, its attempt given back (as ReleaseJob)."""
    return pb.JobResult(
        release=pb.ReleaseJobRequest(
            job_id=job_id, lease_token=lease_token, reason=reason, delay=to_duration(delay)
        )
    )
