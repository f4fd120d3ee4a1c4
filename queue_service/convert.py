"""Domain values of the queue as protobuf messages."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from gmbsync.queue.v1 import queue_service_pb2 as pb
from queue_service.models import (
    Alert,
    AlertSeverity,
    Diagnostics,
    Job,
    JobRef,
    JobStatus,
    LeasedJob,
    QueuePause,
    QueueStats,
    SyncSchedule,
    SyncType,
    WorkerRun,
    WorkerRunFigures,
    WorkerRunStatus,
)
from service_runtime.protoconv import to_duration, to_struct, to_timestamp

SYNC_TYPE_TO_PB = {SyncType.FULL: pb.SYNC_TYPE_FULL, SyncType.INCREMENTAL: pb.SYNC_TYPE_INCREMENTAL}
JOB_STATUS_TO_PB = {
    JobStatus.PENDING: pb.JOB_STATUS_PENDING,
    JobStatus.PROCESSING: pb.JOB_STATUS_PROCESSING,
    JobStatus.SUCCEEDED: pb.JOB_STATUS_SUCCEEDED,
    JobStatus.FAILED: pb.JOB_STATUS_FAILED,
    JobStatus.CANCELLED: pb.JOB_STATUS_CANCELLED,
}
RUN_STATUS_TO_PB = {
    WorkerRunStatus.RUNNING: pb.WORKER_RUN_STATUS_RUNNING,
    WorkerRunStatus.COMPLETED: pb.WORKER_RUN_STATUS_COMPLETED,
    WorkerRunStatus.FAILED: pb.WORKER_RUN_STATUS_FAILED,
}


def job_to_pb(job: Job, *, with_lease_token: bool = False) -> pb.Job:
    """The job as a message. The lease token is a capability: only its holder is given it."""
    message = pb.Job(
        id=str(job.id),
        user_id=str(job.user_id),
        account_id=str(job.account_id),
        account_name=job.account_name,
        sync_type=SYNC_TYPE_TO_PB[job.sync_type],
        status=JOB_STATUS_TO_PB[job.status],
        priority=job.priority,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        last_error=job.last_error or "",
        metadata=to_struct(job.metadata),
        created_at=to_timestamp(job.created_at),
        updated_at=to_timestamp(job.updated_at),
        worker_id=job.worker_id or "",
        worker_run_id=str(job.worker_run_id) if job.worker_run_id else "",
        trace_context=job.trace_context,
        lease_token=str(job.lease_token) if (with_lease_token and job.lease_token) else "",
    )
    for field, value in (
        ("scheduled_at", job.scheduled_at),
        ("started_at", job.started_at),
        ("completed_at", job.completed_at),
        ("lease_expires_at", job.lease_expires_at),
    ):
        if value is not None:
            getattr(message, field).CopyFrom(to_timestamp(value))
    if job.result is not None:
        message.result.CopyFrom(to_struct(job.result))
        typed = sync_result_to_pb(job.result)
        if typed is not None:
            message.sync_result.CopyFrom(typed)
    for entry in job.errors:
        error = message.errors.add(
            attempt=int(entry.get("attempt", 0)),
            error=str(entry.get("error", "")),
            worker_id=entry.get("worker_id") or "",
            permanent=bool(entry.get("permanent", False)),
        )
        if entry.get("failed_at"):
            error.failed_at.CopyFrom(to_timestamp(datetime.fromisoformat(entry["failed_at"])))
    return message


# The integer counts a worker stores in a job's result (clients/worker/job.py `sync_result`).
SYNC_RESULT_COUNTS = (
    "locations_synced",
    "locations_removed",
    "reviews_added",
    "reviews_updated",
    "reviews_removed",
    "api_calls",
    "locations_skipped",
    "locations_deletions_deferred",
)


_INT64_MAX = 2**63 - 1
# A sync's duration longer than this is not a duration a worker measured.
_DURATION_MAX_SECONDS = 10**9


def _whole(value: Any) -> int | None:
    """A count as an integer: a JSON result gives every number back as a float (3.0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return None
    return int(value) if -_INT64_MAX <= value <= _INT64_MAX else None


def sync_result_to_pb(result: dict[str, Any]) -> pb.SyncResult | None:
    """The typed view of a job's result: the keys it knows, each of the right type; None when
    the result has none of them (a result some other producer wrote). A value of the wrong
    type is left out rather than failing the whole reply: the Struct still carries it."""
    message = pb.SyncResult()
    known = False
    for name in SYNC_RESULT_COUNTS:
        count = _whole(result.get(name))
        if count is not None:
            setattr(message, name, count)
            known = True
    seconds = result.get("duration_seconds")
    if (
        isinstance(seconds, int | float)
        and not isinstance(seconds, bool)
        and 0 <= seconds < _DURATION_MAX_SECONDS
    ):
        message.duration.CopyFrom(to_duration(timedelta(seconds=seconds)))
        known = True
    if isinstance(result.get("resumed"), bool):
        message.resumed = result["resumed"]
        known = True
    skipped = result.get("skipped_locations")
    if isinstance(skipped, list):
        for entry in skipped:
            if isinstance(entry, dict):
                message.skipped_locations.add(
                    location_id=str(entry.get("location_id", "")),
                    reason=str(entry.get("reason", "")),
                )
        known = True
    return message if known else None


def job_to_worker_pb(job: Job | LeasedJob) -> pb.Job:
    """JOB_VIEW_WORKER: only what a worker reads to run a leased job, lease token included.

    The full view costs a worker nothing it uses (errors, metadata, result, six timestamps)
    and the server most of its per-job reply time on a busy queue.
    """
    message = pb.Job(
        id=str(job.id),
        account_id=str(job.account_id),
        account_name=job.account_name,
        sync_type=SYNC_TYPE_TO_PB[job.sync_type],
        status=JOB_STATUS_TO_PB[job.status],
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        trace_context=job.trace_context,
        lease_token=str(job.lease_token) if job.lease_token else "",
    )
    if job.lease_expires_at is not None:
        message.lease_expires_at.CopyFrom(to_timestamp(job.lease_expires_at))
    return message


def job_to_id_pb(job: Job | JobRef) -> pb.Job:
    """JOB_VIEW_ID: what a caller that enqueued the job follows it by (EnqueueSyncBatch)."""
    return pb.Job(
        id=str(job.id), account_id=str(job.account_id), status=JOB_STATUS_TO_PB[job.status]
    )


def stats_to_pb(stats: QueueStats) -> pb.QueueStats:
    return pb.QueueStats(
        total=stats.total,
        pending=stats.pending,
        processing=stats.processing,
        succeeded=stats.succeeded,
        failed=stats.failed,
        cancelled=stats.cancelled,
    )


def worker_run_to_pb(run: WorkerRun) -> pb.WorkerRun:
    message = pb.WorkerRun(
        id=str(run.id),
        worker_id=run.worker_id,
        status=RUN_STATUS_TO_PB[run.status],
        jobs_picked=run.jobs_picked,
        jobs_processed=run.jobs_processed,
        jobs_succeeded=run.jobs_succeeded,
        jobs_failed=run.jobs_failed,
        jobs_released=run.jobs_released,
        notes=run.notes or "",
        metadata=to_struct(run.metadata),
        started_at=to_timestamp(run.started_at),
    )
    if run.finished_at is not None:
        message.finished_at.CopyFrom(to_timestamp(run.finished_at))
    return message


ALERT_SEVERITY_TO_PB = {
    AlertSeverity.WARNING: pb.ALERT_SEVERITY_WARNING,
    AlertSeverity.CRITICAL: pb.ALERT_SEVERITY_CRITICAL,
}


def alert_to_pb(alert: Alert) -> pb.Alert:
    return pb.Alert(
        name=alert.name,
        message=alert.message,
        value=alert.value,
        threshold=alert.threshold,
        severity=ALERT_SEVERITY_TO_PB[alert.severity],
    )


def pause_to_pb(pause: QueuePause) -> pb.QueuePause:
    return pb.QueuePause(
        user_id="" if pause.user_id is None else str(pause.user_id),
        reason=pause.reason,
        paused_by=pause.paused_by or "",
        paused_at=to_timestamp(pause.paused_at),
    )


def diagnostics_to_pb(diag: Diagnostics) -> pb.GetDiagnosticsResponse:
    return pb.GetDiagnosticsResponse(
        stats=stats_to_pb(diag.stats),
        oldest_pending_age=to_duration(diag.oldest_pending_age),
        stale_jobs=[job_to_pb(j) for j in diag.stale_jobs],
        failure_rate_last_hour=diag.failure_rate_last_hour,
        finished_last_hour=diag.finished_last_hour,
        success_rate_7d=diag.success_rate_7d,
        avg_duration=to_duration(diag.avg_duration),
        p95_duration=to_duration(diag.p95_duration),
        recent_failures=[job_to_pb(j) for j in diag.recent_failures],
        recent_worker_runs=[worker_run_to_pb(r) for r in diag.recent_worker_runs],
        alerts=[alert_to_pb(a) for a in diag.alerts],
        generated_at=to_timestamp(diag.generated_at),
        queue_dead_tuples=diag.vacuum.queue_dead_tuples,
        oldest_transaction_age=to_duration(diag.vacuum.oldest_transaction_age),
        oldest_transaction_state=diag.vacuum.oldest_transaction_state,
        oldest_transaction_application=diag.vacuum.oldest_transaction_application,
        worker_run_figures_24h=[worker_run_figures_to_pb(f) for f in diag.worker_run_figures_24h],
        pauses=[pause_to_pb(p) for p in diag.pauses],
    )


def worker_run_figures_to_pb(figures: WorkerRunFigures) -> pb.WorkerRunFigures:
    return pb.WorkerRunFigures(
        status=RUN_STATUS_TO_PB[figures.status],
        runs=figures.runs,
        avg_jobs_processed=figures.avg_jobs_processed,
        avg_jobs_succeeded=figures.avg_jobs_succeeded,
        avg_duration=to_duration(figures.avg_duration),
    )


def schedule_to_pb(schedule: SyncSchedule) -> pb.SyncSchedule:
    message = pb.SyncSchedule(
        account_id=str(schedule.account_id),
        account_active=schedule.account_active,
        enabled=schedule.enabled,
        last_job_id=str(schedule.last_job_id) if schedule.last_job_id else "",
        last_sync_type=SYNC_TYPE_TO_PB[schedule.last_sync_type]
        if schedule.last_sync_type
        else pb.SYNC_TYPE_UNSPECIFIED,
    )
    for field, span in (
        ("incremental_interval", schedule.incremental_interval),
        ("full_interval", schedule.full_interval),
        ("incremental_period", schedule.incremental_period),
        ("full_period", schedule.full_period),
    ):
        if span is not None:
            getattr(message, field).CopyFrom(to_duration(span))
    for field, moment in (
        ("next_incremental_at", schedule.next_incremental_at),
        ("next_full_at", schedule.next_full_at),
        ("last_enqueued_at", schedule.last_enqueued_at),
    ):
        if moment is not None:
            getattr(message, field).CopyFrom(to_timestamp(moment))
    return message
