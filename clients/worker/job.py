"""Running one leased job: SyncAccount under a deadline, then its result (a completion, a failure
or a hand-back) through the worker's Reporter, which sends many jobs' results in one
ReportResults. "CompleteJob", "FailJob" and "ReleaseJob" below name what the result records.

What a SyncService error means for the job (see `deferral`, then `classify`):

| error                                              | job                              | breaker |
|----------------------------------------------------|----------------------------------|---------|
| none                                               | CompleteJob with the counts      | success |
| RESOURCE_EXHAUSTED + ErrorInfo GOOGLE_QUOTA        | ReleaseJob, delay = RetryInfo:   | success |
|   (Google's quota has no room before the deadline) |   no attempt spent (deferred)    |         |
| ABORTED + ErrorInfo SYNC_INCOMPLETE                | ReleaseJob, delay = RetryInfo:   | success |
|   (progress made, checkpoint stored, out of time)  |   no attempt spent (deferred)    |         |
| UNAVAILABLE + ErrorInfo GOOGLE_API_DISABLED        | ReleaseJob, delay = RetryInfo:   | held    |
|   (API disabled for the whole Cloud project)       |   no attempt spent (deferred)    | open    |
| UNAVAILABLE + ErrorInfo DATABASE_UNAVAILABLE or    | ReleaseJob, delay = RetryInfo:   | success |
|   DATABASE_BUSY (SyncService's database blipped)   |   no attempt spent (deferred)    |         |
| INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION   | FailJob permanent                | success |
| RESOURCE_EXHAUSTED; UNAVAILABLE, DEADLINE_EXCEEDED | FailJob retryable, server delay  | success |
|   with a rich status (SyncService's own answer)    |                                  |         |
| UNAVAILABLE, DEADLINE_EXCEEDED without one         | FailJob retryable                | failure |
|   (transport, client deadline, SyncService's db)   |                                  |         |
| UNAUTHENTICATED, PERMISSION_DENIED (worker config) | FailJob retryable                | failure |
| SyncService not reachable before the call          | ReleaseJob: no attempt spent     | failure |
| breaker open, or worker shutting down              | ReleaseJob: no attempt spent     | -       |
| lease lost                                         | nothing: the job is not ours now | -       |

The three Google reasons count only in SyncService's domain (`gmbsync.sync.v1`), the two
database reasons only in the serving runtime's (`gmbsync.service.v1`), each with a rich status;
"held open" means the breaker is forced open for the delay, so this worker picks and calls
nothing until then (every job would meet the same answer). The breaker guards against
SyncService itself being down: a database blip, which SyncService reports in its own answer,
must not stop the worker for a cooldown.

Calls to QueueService (reports here, heartbeats, picks) that meet a passing failure are retried
with a short backoff (0.2 s doubling to 2 s, jittered, at least any RetryInfo delay) and never
count against the breaker.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import trace

from clients.errors import ClientError
from clients.queue import Job, JobResult, JobStatus, QueueClient, completed, failed, released
from clients.sync import SyncClient
from clients.worker.circuit_breaker import CircuitBreaker, Permit
from clients.worker.config import WorkerConfig
from clients.worker.lease import Heartbeats
from clients.worker.reporter import Answer, Fate, Reporter
from clients.worker.tracing import job_span
from gmbsync.queue.v1 import queue_service_pb2 as queue_pb
from service_runtime.errors import (
    SERVICE_ERROR_DOMAIN,
    SYNC_ERROR_DOMAIN,
    ErrorReason,
    ServiceReason,
)

log = logging.getLogger(__name__)

# FailJob keeps at most this much of an error message (and a hand-back of its reason): within
# what QueueService accepts, so that no result can spoil the batch it is sent in.
_MAX_ERROR_CHARS = 4000
_RETRYING = JobStatus.Value("JOB_STATUS_PENDING")
# QueueService refuses a ReleaseJob delay above a day; a server asking for more gets a day.
MAX_DEFER_SECONDS = 24 * 3600.0

_PERMANENT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}
# Without an answer of SyncService's own (no rich status), these mean the service is down,
# stuck or cut off: count them against the breaker.
_TRANSPORT_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}
# The worker's credentials are refused: every job would fail the same way, so stop picking.
_CREDENTIAL_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


class Outcome(enum.StrEnum):
    """What became of one picked job, from this worker's point of view."""

    SUCCEEDED = "succeeded"
    RETRYING = "retrying"  # a failed attempt; the queue runs it again after backoff
    FAILED = "failed"  # failed for good (permanent error, or attempts used up)
    RELEASED = "released"  # handed back unrun, its attempt given back
    DEFERRED = "deferred"  # SyncService said "come back later": handed back after a delay,
    # its attempt given back (QueueService counts it among the run's released jobs)
    LEASE_LOST = "lease_lost"  # the lease ran out or moved on; not reported
    UNREPORTED = "unreported"  # QueueService could not be told; the lease will expire


@dataclass(frozen=True, slots=True)
class Verdict:
    """How a SyncService error is reported to the queue and counted by the breaker."""

    permanent: bool
    infrastructure: bool
    retry_after: float | None


def classify(error: ClientError) -> Verdict:
    """The verdict for a failed SyncAccount call."""
    if error.code in _PERMANENT_CODES:
        return Verdict(permanent=True, infrastructure=False, retry_after=None)
    infrastructure = error.code in _CREDENTIAL_CODES or (
        error.code in _TRANSPORT_CODES and not error.server_details
    )
    return Verdict(permanent=False, infrastructure=infrastructure, retry_after=error.retry_delay)


@dataclass(frozen=True, slots=True)
class Deferral:
    """SyncService's "come back later": the job goes back to the queue for `delay` seconds
    without spending its attempt; with `hold_dispatch`, the whole worker waits as long."""

    reason: ErrorReason | ServiceReason
    delay: float
    hold_dispatch: bool


# (code, reason) -> (delay when the server sent no RetryInfo, hold dispatch)
_DEFERRALS: dict[tuple[grpc.StatusCode, ErrorReason], tuple[float, bool]] = {
    (grpc.StatusCode.RESOURCE_EXHAUSTED, ErrorReason.GOOGLE_QUOTA): (60.0, False),
    (grpc.StatusCode.ABORTED, ErrorReason.SYNC_INCOMPLETE): (1.0, False),
    (grpc.StatusCode.UNAVAILABLE, ErrorReason.GOOGLE_API_DISABLED): (300.0, True),
}
# The same for the serving runtime's answers about SyncService's own database.
_SERVICE_DEFERRALS: dict[tuple[grpc.StatusCode, ServiceReason], tuple[float, bool]] = {
    (grpc.StatusCode.UNAVAILABLE, ServiceReason.DATABASE_UNAVAILABLE): (1.0, False),
    (grpc.StatusCode.UNAVAILABLE, ServiceReason.DATABASE_BUSY): (1.0, False),
}


def deferral(error: ClientError) -> Deferral | None:
    """The deferral a SyncAccount error asks for, or None when it is an ordinary failure.

    Only SyncService's own rich answers count (server details, an ErrorInfo domain of ours, a
    reason that goes with the code): a bare UNAVAILABLE from the transport is never a deferral.
    """
    if not error.server_details or error.reason is None:
        return None
    reason: ErrorReason | ServiceReason
    known: tuple[float, bool] | None
    try:
        if error.error_domain == SYNC_ERROR_DOMAIN:
            reason = ErrorReason(error.reason)
            known = _DEFERRALS.get((error.code, reason))
        elif error.error_domain == SERVICE_ERROR_DOMAIN:
            reason = ServiceReason(error.reason)
            known = _SERVICE_DEFERRALS.get((error.code, reason))
        else:
            return None
    except ValueError:
        return None
    if known is None:
        return None
    default_delay, hold = known
    delay = default_delay if error.retry_delay is None else error.retry_delay
    return Deferral(
        reason=reason, delay=min(max(delay, 0.0), MAX_DEFER_SECONDS), hold_dispatch=hold
    )


def sync_result(response: Any) -> dict[str, Any]:
    """The counts of a SyncAccountResponse, as stored in the job's result."""
    return {
        "locations_synced": response.locations_synced,
        "locations_removed": response.locations_removed,
        "reviews_added": response.reviews_added,
        "reviews_updated": response.reviews_updated,
        "reviews_removed": response.reviews_removed,
        "api_calls": response.api_calls,
        "duration_seconds": round(response.duration.ToTimedelta().total_seconds(), 3),
        # A partial sync says so: locations whose reviews Google refused or does not serve.
        "locations_skipped": response.locations_skipped,
        "skipped_locations": [
            {"location_id": s.location_id, "reason": s.reason} for s in response.skipped_locations
        ],
        "locations_deletions_deferred": response.locations_deletions_deferred,
        "resumed": response.resumed,
    }


def sync_result_message(response: Any) -> queue_pb.SyncResult:
    """The counts of a SyncAccountResponse as the typed result QueueService stores: the same
    keys as `sync_result`, without building a Struct for them (12 % of a draining worker)."""
    return queue_pb.SyncResult(
        locations_synced=response.locations_synced,
        locations_removed=response.locations_removed,
        reviews_added=response.reviews_added,
        reviews_updated=response.reviews_updated,
        reviews_removed=response.reviews_removed,
        api_calls=response.api_calls,
        duration=response.duration,
        locations_skipped=response.locations_skipped,
        skipped_locations=[
            queue_pb.SkippedLocation(location_id=s.location_id, reason=s.reason)
            for s in response.skipped_locations
        ],
        locations_deletions_deferred=response.locations_deletions_deferred,
        resumed=response.resumed,
    )


@dataclass(frozen=True)
class JobDeps:
    """What every job of a worker shares."""

    queue: QueueClient
    sync: SyncClient
    breaker: CircuitBreaker
    config: WorkerConfig
    reporter: Reporter
    heartbeats: Heartbeats
    # Whether this process records spans (decided once, when the worker is made).
    tracing: bool = True


class JobExecution:
    """One leased job, from the first heartbeat to its report."""

    def __init__(
        self,
        job: Job,
        permit: Permit,
        deps: JobDeps,
        *,
        on_finished_work: Callable[[], None] | None = None,
    ) -> None:
        self.job = job
        self.permit = permit
        self._deps = deps
        # Called once, when the job no longer needs its slot: its result is queued (only the
        # ack is awaited), or it ended without one.
        self._on_finished_work = on_finished_work
        self._keeper = deps.heartbeats.keep(job.id, job.lease_token, on_lost=self._on_lease_lost)
        self._sync_task: asyncio.Task[Any] | None = None
        self.reported = False
        # Loop time of the pick (an execution is made as its job is picked): its duration
        # metric runs from here, through any wait for a slot.
        self.picked_at = asyncio.get_running_loop().time()

    def keep_lease(self) -> None:
        """Starts the heartbeats of the job's lease (at its pick, before it may wait for a slot);
        `run` starts them if this was not called."""
        self._keeper.start()

    def lease_at_risk(self) -> bool:
        """Whether the lease is gone, or may run out before the job could run (see LeaseKeeper)."""
        return self._keeper.at_risk()

    async def run(self, hand_back: str | None = None) -> Outcome:
        """Runs the job and reports it; with `hand_back`, only gives it back unrun for that
        reason. Cancelled (shutdown), it hands the job back before it ends."""
        with job_span(self.job, self._deps.config.worker_id, recording=self._deps.tracing) as span:
            self._keeper.start()
            try:
                if hand_back is not None:
                    self._deps.breaker.give_back(self.permit)
                    outcome = await self._release(hand_back)
                else:
                    outcome = await self._run(span)
            except asyncio.CancelledError:
                # The grace period ran out: give the job back with its attempt, so another
                # worker runs it at once instead of after the lease expires.
                if not self.reported and not self._keeper.lost:
                    self._deps.breaker.give_back(self.permit)
                    await self._release("worker shutting down before the job finished")
                span.set_attribute("gmbsync.job.outcome", Outcome.RELEASED)
                raise
            finally:
                self.finished_work()
                await self._keeper.stop()
            span.set_attribute("gmbsync.job.outcome", outcome)
            return outcome

    def finished_work(self) -> None:
        """Gives the job's slot back (once; later calls do nothing)."""
        callback, self._on_finished_work = self._on_finished_work, None
        if callback is not None:
            callback()

    def _on_lease_lost(self) -> None:
        if self._sync_task is not None and not self._sync_task.done():
            self._sync_task.cancel()

    async def _run(self, span: trace.Span) -> Outcome:
        deps, job = self._deps, self.job
        if not deps.breaker.allows(self.permit):
            deps.breaker.give_back(self.permit)
            why = deps.breaker.hold_reason or "SyncService is failing"
            return await self._release(f"circuit breaker open: {why}")

        try:
            await deps.sync.wait_ready(deps.config.connect_timeout.total_seconds())
        except ClientError as exc:
            # Nothing was sent, so the attempt is not spent: hand the job back.
            deps.breaker.record_failure(self.permit)
            span.set_status(trace.StatusCode.ERROR, "SyncService unreachable")
            log.warning("job %s: SyncService unreachable (%s); handing it back", job.id, exc)
            return await self._release(f"SyncService unreachable: {exc.message}")

        self._sync_task = asyncio.create_task(
            deps.sync.sync_account(
                job.account_id,
                job.sync_type,
                job_id=job.id,
                attempt=job.attempts,
                timeout=deps.config.job_timeout.total_seconds(),
            ),
            name=f"sync-{job.id}",
        )
        try:
            response = await self._sync_task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._keeper.lost and (current is None or not current.cancelling()):
                return Outcome.LEASE_LOST
            raise
        except ClientError as exc:
            return await self._failed(exc, span)

        deps.breaker.record_success(self.permit)
        if log.isEnabledFor(logging.INFO):  # the counts are built for this line alone
            log.info("job %s: account %s synced: %s", job.id, job.account_id, sync_result(response))
        answer = await self._report(
            "CompleteJob",
            completed(job.id, job.lease_token, sync_result=sync_result_message(response)),
        )
        return Outcome.SUCCEEDED if answer.recorded else self._unreported()

    async def _failed(self, error: ClientError, span: trace.Span) -> Outcome:
        deps, job = self._deps, self.job
        deferred = deferral(error)
        if deferred is not None:
            return await self._deferred(error, deferred, span)
        verdict = classify(error)
        if verdict.infrastructure:
            deps.breaker.record_failure(self.permit)
        else:
            deps.breaker.record_success(self.permit)
        span.record_exception(error)
        span.set_status(trace.StatusCode.ERROR, f"{error.code.name}: {error.message}")
        message = f"{error.code.name}: {error.message}"[:_MAX_ERROR_CHARS]
        log.warning(
            "job %s (attempt %d/%d): %s (%s)",
            job.id,
            job.attempts,
            job.max_attempts,
            message,
            "permanent" if verdict.permanent else "retryable",
        )
        answer = await self._report(
            "FailJob",
            failed(
                job.id,
                job.lease_token,
                message,
                permanent=verdict.permanent,
                retry_after=verdict.retry_after,
            ),
        )
        if not answer.recorded:
            return self._unreported()
        return Outcome.RETRYING if answer.status == _RETRYING else Outcome.FAILED

    async def _deferred(self, error: ClientError, deferred: Deferral, span: trace.Span) -> Outcome:
        deps, job = self._deps, self.job
        details = error.error_metadata
        if deferred.hold_dispatch:
            service = details.get("service") or "the Google API"
            url = details.get("activation_url") or "(no activation URL given)"
            if deps.breaker.force_open(deferred.delay, f"{service} disabled", self.permit):
                log.error(
                    "Google says %s is disabled for this Cloud project: every sync fails until "
                    "it is enabled at %s; this worker picks no jobs for %.0f s",
                    service,
                    url,
                    deferred.delay,
                )
        else:
            # SyncService answered for itself: it is healthy.
            deps.breaker.record_success(self.permit)
        span.add_event(
            "deferred",
            {
                "gmbsync.defer.reason": deferred.reason.value,
                "gmbsync.defer.seconds": deferred.delay,
            },
        )
        progress = ""
        if deferred.reason is ErrorReason.SYNC_INCOMPLETE:
            done, total = details.get("locations_done", "?"), details.get("locations_total", "?")
            progress = f" ({done} of {total} locations done)"
        log.warning(
            "job %s (attempt %d/%d): %s%s; handing it back for %.1f s, no attempt spent",
            job.id,
            job.attempts,
            job.max_attempts,
            deferred.reason.value,
            progress,
            deferred.delay,
        )
        why = f"deferred {deferred.delay:g} s by SyncService: {error.code.name} {deferred.reason}"
        why = f"{why}: {error.message}"[:_MAX_ERROR_CHARS]
        answer = await self._report(
            "ReleaseJob", released(job.id, job.lease_token, why, delay=deferred.delay)
        )
        return Outcome.DEFERRED if answer.recorded else self._unreported()

    async def _release(self, reason: str) -> Outcome:
        job = self.job
        answer = await self._report(
            "ReleaseJob", released(job.id, job.lease_token, reason[:_MAX_ERROR_CHARS])
        )
        return Outcome.RELEASED if answer.recorded else self._unreported()

    def _unreported(self) -> Outcome:
        return Outcome.LEASE_LOST if self._keeper.lost else Outcome.UNREPORTED

    async def _report(self, what: str, item: JobResult) -> Answer:
        """Hands the job's result to the reporter and waits for QueueService's answer.

        The reporter sends it again while QueueService is unreachable and the lease lasts. A
        retry that finds the lease gone may follow a first try that was in fact recorded (only
        its answer was lost); either way the job is no longer this worker's.
        """
        if self._keeper.lost:
            return Answer(Fate.LEASE_LOST)
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._deps.config.lease_duration.total_seconds()
        pending = self._deps.reporter.submit(self.job.id, what, item, give_up_at)
        self.finished_work()
        try:
            answer = await asyncio.shield(pending)
        except asyncio.CancelledError:
            # Shutdown's grace period ran out, but this result is on its way already: its
            # answer (due within the lease) says what became of the job, and a hand-back now
            # would contradict it. Wait for that answer instead of giving up on it.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            answer = await pending
        if answer.fate is Fate.RECORDED:
            self.reported = True
        elif answer.fate is Fate.LEASE_LOST:
            self._keeper.mark_lost(answer.message)
        return answer
