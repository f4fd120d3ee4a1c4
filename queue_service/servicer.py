"""QueueService over gRPC: requests to domain calls, domain errors to status codes.

Nothing here touches SQL or decides a job's fate; it reads requests (`requests`), calls the
store, and writes responses (`convert`). Who may call what is the POLICY table, enforced by the
auth interceptor before a handler runs.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import grpc

from gmbsync.queue.v1 import queue_service_pb2 as pb
from gmbsync.queue.v1 import queue_service_pb2_grpc as pb_grpc
from queue_service import convert, requests
from queue_service.diagnostics import AlertThresholds, build_diagnostics
from queue_service.errors import (
    AccountInactive,
    AccountNotFound,
    ActiveJobExists,
    IllegalTransition,
    JobNotFound,
    LeaseLost,
    QueueError,
    WorkerRunNotFound,
)
from queue_service.models import (
    Caller,
    Completion,
    Failure,
    Job,
    JobStatus,
    PageCursor,
    Release,
    ResultAck,
    ScheduleDefaults,
)
from queue_service.notifier import JobSignal
from queue_service.picking import pick_with_wait
from queue_service.rate_limit import UserRateLimiter
from queue_service.settings import QueueSettings
from queue_service.store import JobStore
from queue_service.watches import WatchesClosed, WatchReads
from service_runtime import errors
from service_runtime.auth import OPERATOR, USER, WORKER, Role, current_principal
from service_runtime.telemetry import current_trace_context

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["QueueService"].full_name
#: The ErrorInfo domain of QueueService's own reasons.
QUEUE_ERROR_DOMAIN = "gmbsync.queue.v1"
#: RESOURCE_EXHAUSTED: the caller enqueued faster than ENQUEUE_RATE_PER_USER allows; RetryInfo
#: says when enough of their budget is back. Metadata: `rate_per_second`, `burst`.
ENQUEUE_RATE_LIMITED = "ENQUEUE_RATE_LIMITED"

_RPC_ROLES = {
    "EnqueueSync": USER,
    "EnqueueSyncBatch": USER,
    "GetJob": USER,
    "ListJobs": USER,
    "GetQueueStatus": USER,
    "CancelJob": USER,
    "RetryJob": USER,
    "PickJobs": WORKER,
    "ExtendLease": WORKER,
    "CompleteJob": WORKER,
    "FailJob": WORKER,
    "ReleaseJob": WORKER,
    "ReportResults": WORKER,
    "StartWorkerRun": WORKER,
    "FinishWorkerRun": WORKER,
    "MarkStaleJobs": OPERATOR,
    "GetDiagnostics": OPERATOR,
    "GetSyncSchedule": OPERATOR,
    "SetSyncSchedule": OPERATOR,
    "WatchJob": USER,
    "PauseQueue": OPERATOR,
    "ResumeQueue": OPERATOR,
}
POLICY: dict[str, frozenset[Role]] = {
    f"/{SERVICE_NAME}/{rpc}": roles for rpc, roles in _RPC_ROLES.items()
}

_STATUS_OF: dict[type[QueueError], grpc.StatusCode] = {
    JobNotFound: grpc.StatusCode.NOT_FOUND,
    AccountNotFound: grpc.StatusCode.NOT_FOUND,
    WorkerRunNotFound: grpc.StatusCode.NOT_FOUND,
    AccountInactive: grpc.StatusCode.FAILED_PRECONDITION,
    LeaseLost: grpc.StatusCode.FAILED_PRECONDITION,
    IllegalTransition: grpc.StatusCode.FAILED_PRECONDITION,
    ActiveJobExists: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_of(error: QueueError) -> grpc.StatusCode:
    for kind, code in _STATUS_OF.items():
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.FAILED_PRECONDITION


Response = TypeVar("Response")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Response]]


def translated(handler: Handler[Response]) -> Handler[Response]:
    """Turns the domain's errors into the RPC's status, once for every method."""

    @functools.wraps(handler)
    async def run(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Response:
        try:
            return await handler(self, request, context)
        except errors.InvalidArgument as exc:
            await errors.abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, str(exc), violations=exc.violations
            )
        except QueueError as exc:
            await errors.abort(context, status_of(exc), str(exc))
        raise AssertionError("unreachable: abort raises")

    return run


def _caller() -> Caller:
    principal = current_principal()
    if principal.sees_everything:
        return Caller.everyone()
    assert principal.user_id is not None
    return Caller.user(principal.user_id)


FINISHED_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


def _job_version(job: Job) -> tuple[object, ...]:
    """What tells a watcher that a job changed: any state change moves one of these."""
    return (job.status, job.attempts, job.updated_at, len(job.errors), job.scheduled_at)


def _enqueue_reply(job: pb.Job, duplicate: bool) -> pb.EnqueueSyncResponse:
    message = (
        "Sync job already queued for this account"
        if duplicate
        else "Sync job enqueued successfully"
    )
    return pb.EnqueueSyncResponse(job=job, duplicate=duplicate, message=message)


# A long poll answers this long before the caller's deadline, so that its answer (maybe jobs
# leased to the caller) arrives while the caller still waits for it.
PICK_DEADLINE_MARGIN = timedelta(milliseconds=500)


def _status_after(result: Completion | Failure | Release, ack: ResultAck) -> int:
    """The job's status after an accepted result, from the result itself when the ack carries
    no job (ack_only): a completion succeeds, a failure is retried (pending) or fails."""
    if ack.job is not None:
        return convert.JOB_STATUS_TO_PB[ack.job.status]
    if isinstance(result, Completion):
        return pb.JOB_STATUS_SUCCEEDED
    if isinstance(result, Failure):
        return pb.JOB_STATUS_PENDING if ack.will_retry else pb.JOB_STATUS_FAILED
    return pb.JOB_STATUS_PENDING


class QueueServicer(pb_grpc.QueueServiceServicer):
    def __init__(self, store: JobStore, signal: JobSignal, settings: QueueSettings) -> None:
        self._store = store
        self._signal = signal
        self._settings = settings
        self.enqueue_limiter = UserRateLimiter(
            settings.enqueue_rate_per_user, settings.enqueue_burst_per_user
        )
        self._thresholds = AlertThresholds(
            failure_rate=settings.alert_failure_rate,
            processing_age=settings.alert_processing_age,
            pending_backlog=settings.alert_pending_backlog,
            api_disabled_window=settings.alert_api_disabled_window,
            transaction_age=settings.alert_transaction_age,
        )
        self._schedule_defaults = ScheduleDefaults(
            incremental_interval=settings.schedule_incremental_interval,
            full_interval=settings.schedule_full_interval,
        )
        self._watch_reads = WatchReads(
            store.reader.jobs_by_id, settings.watch_poll_interval.total_seconds()
        )

    def close_watches(self) -> None:
        """Ends every WatchJob stream (UNAVAILABLE: the client watches again elsewhere), at
        once instead of holding the shutdown's drain."""
        self._watch_reads.close()

    # -- users --------------------------------------------------------------------------------

    async def _admit_enqueues(
        self, context: grpc.aio.ServicerContext, count: int, rpc: str
    ) -> None:
        """Applies the per-user enqueue rate limit: RESOURCE_EXHAUSTED with a RetryInfo delay
        (and ErrorInfo ENQUEUE_RATE_LIMITED) when the caller's bucket is short."""
        principal = current_principal()
        if principal.sees_everything or not self.enqueue_limiter.enabled:
            return
        assert principal.user_id is not None
        burst = self.enqueue_limiter.burst
        if count > burst:
            raise errors.InvalidArgument.field(
                "items", f"holds {count} requests; a user may enqueue at most {burst} at once"
            )
        wait = self.enqueue_limiter.take(principal.user_id, count)
        if wait > 0:
            await errors.abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{rpc}: enqueue rate limit of {self.enqueue_limiter.rate:g} syncs a second per "
                f"user reached; retry in {wait:.1f} s",
                retry_delay_seconds=wait,
                reason=ENQUEUE_RATE_LIMITED,
                domain=QUEUE_ERROR_DOMAIN,
                error_metadata={"rate_per_second": self.enqueue_limiter.rate, "burst": burst},
            )

    @translated
    async def EnqueueSync(self, request, context):
        parsed = requests.enqueue_request(
            request,
            now=self._store.clock(),
            default_max_attempts=self._settings.default_max_attempts,
            trace_context=current_trace_context(context.invocation_metadata()),
        )
        assert parsed is not None
        await self._admit_enqueues(context, 1, "EnqueueSync")
        result = await self._store.job_enqueue(parsed, _caller())
        return _enqueue_reply(convert.job_to_pb(result.job), result.duplicate)

    @translated
    async def EnqueueSyncBatch(self, request, context):
        parsed = requests.enqueue_batch(
            request,
            now=self._store.clock(),
            default_max_attempts=self._settings.default_max_attempts,
            trace_context=current_trace_context(context.invocation_metadata()),
        )
        await self._admit_enqueues(context, len(parsed), "EnqueueSyncBatch")
        try:
            if request.view == pb.JOB_VIEW_ID:
                # Only each job's reference is read back: see `JobStore.job_enqueue_many_refs`.
                refs = await self._store.job_enqueue_many_refs(parsed, _caller())
                replies = [_enqueue_reply(convert.job_to_id_pb(r.job), r.duplicate) for r in refs]
            else:
                jobs = await self._store.job_enqueue_many(parsed, _caller())
                replies = [_enqueue_reply(convert.job_to_pb(r.job), r.duplicate) for r in jobs]
        except (AccountNotFound, AccountInactive) as exc:
            # Say which item: the batch is all-or-nothing, so the caller must fix that one.
            index = next((i for i, r in enumerate(parsed) if str(r.account_id) in str(exc)), None)
            prefix = f"items[{index}]: " if index is not None else ""
            raise type(exc)(prefix + str(exc)) from None
        return pb.EnqueueSyncBatchResponse(results=replies)

    @translated
    async def GetJob(self, request, context):
        job = await self._store.reader.job_get(requests.job_id(request), _caller())
        return pb.GetJobResponse(job=convert.job_to_pb(job))

    @translated
    async def ListJobs(self, request, context):
        job_filter, size, cursor = requests.list_request(request)
        caller = _caller()
        if (
            job_filter.user_id is not None
            and not caller.sees_everything
            and job_filter.user_id != caller.user_id
        ):
            await errors.abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "user_id: only admins and workers may list another user's jobs",
            )
        # One extra row tells whether a next page exists without a count query.
        jobs = await self._store.reader.job_list(caller, job_filter, limit=size + 1, after=cursor)
        next_token = ""
        if len(jobs) > size:
            jobs = jobs[:size]
            last = jobs[-1]
            next_token = requests.encode_page_token(
                PageCursor(created_at=last.created_at, job_id=last.id), job_filter
            )
        return pb.ListJobsResponse(
            jobs=[convert.job_to_pb(j) for j in jobs], next_page_token=next_token
        )

    @translated
    async def GetQueueStatus(self, request, context):
        limit = requests.recent_limit(request.recent_limit, default=20)
        caller = _caller()
        stats, recent = await self._store.reader.queue_status(caller, limit=limit)
        pauses = await self._store.reader.pause_list(caller)
        return pb.GetQueueStatusResponse(
            stats=convert.stats_to_pb(stats),
            jobs=[convert.job_to_pb(j) for j in recent],
            pauses=[convert.pause_to_pb(p) for p in pauses],
        )

    @translated
    async def CancelJob(self, request, context):
        job = await self._store.job_cancel(requests.job_id(request), _caller())
        return pb.CancelJobResponse(job=convert.job_to_pb(job))

    @translated
    async def RetryJob(self, request, context):
        job = await self._store.job_retry(requests.job_id(request), _caller())
        return pb.RetryJobResponse(job=convert.job_to_pb(job))

    # -- workers ------------------------------------------------------------------------------

    @translated
    async def PickJobs(self, request, context):
        pick = requests.pick_request(request, default_lease=self._settings.default_lease)
        wait = pick.pop("wait")
        worker_view = request.view == pb.JOB_VIEW_WORKER
        # Never hold a job past the caller's deadline: it would be leased to nobody.
        remaining = context.time_remaining()
        if remaining is not None:
            wait = min(wait, max(timedelta(0), timedelta(seconds=remaining) - PICK_DEADLINE_MARGIN))
        if worker_view:
            # Only the worker's fields are read back: see `JobStore.job_pick_leased`.
            leased = await pick_with_wait(
                functools.partial(self._store.job_pick_leased, **pick),
                self._signal,
                wait=wait,
                fallback_interval=self._settings.pick_fallback_interval,
            )
            return pb.PickJobsResponse(jobs=[convert.job_to_worker_pb(j) for j in leased])
        jobs = await pick_with_wait(
            functools.partial(self._store.job_pick, **pick),
            self._signal,
            wait=wait,
            fallback_interval=self._settings.pick_fallback_interval,
        )
        return pb.PickJobsResponse(jobs=[convert.job_to_pb(j, with_lease_token=True) for j in jobs])

    @translated
    async def ExtendLease(self, request, context):
        job, token, lease = requests.extend_request(
            request, default_lease=self._settings.default_lease
        )
        expires = await self._store.lease_extend(job, token, lease)
        response = pb.ExtendLeaseResponse()
        response.lease_expires_at.FromDatetime(expires)
        return response

    @translated
    async def CompleteJob(self, request, context):
        completion = requests.completion(request)
        assert completion is not None
        job = await self._store.job_complete(completion)
        return pb.CompleteJobResponse(job=convert.job_to_pb(job))

    @translated
    async def FailJob(self, request, context):
        failure = requests.failure(request)
        assert failure is not None
        outcome = await self._store.job_fail(failure)
        return pb.FailJobResponse(job=convert.job_to_pb(outcome.job), will_retry=outcome.will_retry)

    @translated
    async def ReleaseJob(self, request, context):
        release = requests.release_request(request)
        assert release is not None
        job = await self._release(release)
        return pb.ReleaseJobResponse(job=convert.job_to_pb(job))

    async def _release(self, release: Release) -> Job:
        job = await self._store.job_release(
            release.job_id, release.lease_token, release.delay, reason=release.reason
        )
        log.info(
            "job %s released unrun%s: %s",
            release.job_id,
            f" for {release.delay}" if release.delay else "",
            release.reason or "no reason given",
        )
        return job

    @translated
    async def ReportResults(self, request, context):
        results = requests.report_request(request)
        outcomes = [r for r in results if not isinstance(r, Release)]
        by_job: dict[uuid.UUID, ResultAck] = {}
        if outcomes:
            # ack_only: the driver returns no jobs, so none is read back, decoded or converted.
            acks = await self._store.results_report(outcomes, with_jobs=not request.ack_only)
            for ack in acks:
                by_job[ack.job_id] = ack
        # Releases come one by one, each in a transaction of its own, after the batch: they
        # are the rare path (shutdown, an open breaker, a deferral), never the drain's.
        for release in results:
            if isinstance(release, Release):
                try:
                    by_job[release.job_id] = ResultAck(
                        job_id=release.job_id, job=await self._release(release)
                    )
                except QueueError as exc:
                    by_job[release.job_id] = ResultAck(job_id=release.job_id, error=exc)
        response = pb.ReportResultsResponse()
        ok = grpc.StatusCode.OK.value[0]
        for result in results:
            ack = by_job[result.job_id]
            if ack.error is None:
                # ack_only spares the full job, the costliest part of the reply.
                full = (
                    {}
                    if request.ack_only or ack.job is None
                    else {"job": convert.job_to_pb(ack.job)}
                )
                response.acks.add(
                    job_id=str(ack.job_id), code=ok, status=_status_after(result, ack), **full
                )
            else:
                code = (
                    status_of(ack.error)
                    if isinstance(ack.error, QueueError)
                    else grpc.StatusCode.INTERNAL
                )
                response.acks.add(
                    job_id=str(ack.job_id), code=code.value[0], message=str(ack.error)
                )
        return response

    @translated
    async def StartWorkerRun(self, request, context):
        worker_id, metadata = requests.start_run_request(request)
        run = await self._store.worker_run_start(worker_id, metadata)
        return pb.StartWorkerRunResponse(run=convert.worker_run_to_pb(run))

    @translated
    async def FinishWorkerRun(self, request, context):
        run_id, status, notes, metadata = requests.finish_run_request(request)
        run = await self._store.worker_run_finish(run_id, status, notes, metadata)
        return pb.FinishWorkerRunResponse(run=convert.worker_run_to_pb(run))

    # -- operators ----------------------------------------------------------------------------

    @translated
    async def MarkStaleJobs(self, request, context):
        threshold = requests.stale_threshold(request, self._settings.stale_threshold)
        recovered = await self._store.jobs_recover(started_before=self._store.clock() - threshold)
        return pb.MarkStaleJobsResponse(
            requeued=len(recovered.requeued),
            failed=len(recovered.failed),
            job_ids=[str(i) for i in (*recovered.requeued, *recovered.failed)],
        )

    @translated
    async def GetDiagnostics(self, request, context):
        limit = requests.recent_limit(request.recent_limit, default=10)
        snapshot = await self._store.reader.diagnostics_snapshot(
            now=self._store.clock(),
            stale_after=self._thresholds.processing_age,
            recent_limit=limit,
            api_disabled_window=self._thresholds.api_disabled_window,
        )
        return convert.diagnostics_to_pb(build_diagnostics(snapshot, self._thresholds))

    @translated
    async def GetSyncSchedule(self, request, context):
        schedule = await self._store.schedules.schedule_get(requests.schedule_get_request(request))
        return pb.GetSyncScheduleResponse(schedule=convert.schedule_to_pb(schedule))

    @translated
    async def SetSyncSchedule(self, request, context):
        account_id, change = requests.schedule_set_request(request)
        schedule = await self._store.schedules.schedule_set(
            account_id, change, self._schedule_defaults
        )
        log.info("schedule of account %s changed: %s", account_id, change)
        return pb.SetSyncScheduleResponse(schedule=convert.schedule_to_pb(schedule))

    # -- watchers -----------------------------------------------------------------------------

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchJobResponse]:
        # A server-streaming handler is an async generator: `translated` cannot wrap it.
        try:
            job_id = requests.job_id(request)
        except errors.InvalidArgument as exc:
            await errors.abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, str(exc), violations=exc.violations
            )
        try:
            # The first read, with the caller's rights: the later ones need not ask again.
            job: Job | None = await self._store.reader.job_get(job_id, _caller())
        except QueueError as exc:
            await errors.abort(context, status_of(exc), str(exc))
        seen: tuple[object, ...] | None = None
        while job is not None:
            finished = job.status in FINISHED_STATUSES
            version = _job_version(job)
            if version != seen:
                seen = version
                yield pb.WatchJobResponse(job=convert.job_to_pb(job), finished=finished)
            if finished:
                return
            try:
                job = await self._watch_reads.next_read(job_id)
            except WatchesClosed:
                await errors.abort(
                    context,
                    grpc.StatusCode.UNAVAILABLE,
                    "the server is shutting down; watch the job again",
                    retry_delay_seconds=1,
                )
        await errors.abort(context, grpc.StatusCode.NOT_FOUND, f"job {job_id} not found")

    @translated
    async def PauseQueue(self, request, context):
        user_id, reason = requests.pause_request(request)
        paused_by = _who()
        pause = await self._store.queue_pause(user_id, reason, paused_by)
        log.warning(
            "picking paused for %s by %s: %s", _scope(user_id), paused_by, reason or "no reason"
        )
        active = await self._store.reader.pause_list(Caller.everyone())
        return pb.PauseQueueResponse(
            pause=convert.pause_to_pb(pause),
            active_pauses=[convert.pause_to_pb(p) for p in active],
        )

    @translated
    async def ResumeQueue(self, request, context):
        user_id, reason = requests.pause_request(request)
        resumed = await self._store.queue_resume(user_id)
        if resumed:
            log.warning(
                "picking resumed for %s by %s: %s", _scope(user_id), _who(), reason or "no reason"
            )
        active = await self._store.reader.pause_list(Caller.everyone())
        return pb.ResumeQueueResponse(
            resumed=resumed, active_pauses=[convert.pause_to_pb(p) for p in active]
        )


def _who() -> str:
    """The caller, for the record of a pause: its user id, or its role for a service."""
    principal = current_principal()
    return str(principal.user_id) if principal.user_id else principal.role.value


def _scope(user_id: uuid.UUID | None) -> str:
    """What a pause holds, for the log."""
    return "the whole queue" if user_id is None else f"user {user_id}"


__all__ = ["POLICY", "SERVICE_NAME", "QueueServicer"]
