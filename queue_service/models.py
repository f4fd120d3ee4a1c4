"""The queue's domain values: jobs, worker runs and the requests that change them."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class SyncType(enum.StrEnum):
    FULL = "full"
    INCREMENTAL = "incremental"


class WorkerRunStatus(enum.StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class AlertSeverity(enum.StrEnum):
    WARNING = "warning"  # degraded but working
    CRITICAL = "critical"  # syncs fail until someone acts


@dataclass(frozen=True, slots=True)
class Job:
    """One row of `sync_queue`, with the account's name."""

    id: uuid.UUID
    user_id: uuid.UUID
    account_id: uuid.UUID
    account_name: str
    sync_type: SyncType
    status: JobStatus
    priority: int
    attempts: int
    max_attempts: int
    scheduled_at: datetime | None
    last_error: str | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    lease_token: uuid.UUID | None
    lease_expires_at: datetime | None
    worker_id: str | None
    worker_run_id: uuid.UUID | None
    trace_context: dict[str, str]
    errors: list[dict[str, Any]]
    result: dict[str, Any] | None
    # Its place among pending jobs of its priority (see `sync_queue.fair_key`).
    fair_key: int = 0


@dataclass(frozen=True, slots=True)
class LeasedJob:
    """A picked job as a worker gets it (`JOB_VIEW_WORKER`): what it needs to run the job and
    keep its lease, and the times the pick's metrics read. `Job` has each of these fields;
    the rest (errors, metadata, result...) a pick for a worker never reads back."""

    id: uuid.UUID
    account_id: uuid.UUID
    account_name: str
    sync_type: SyncType
    status: JobStatus
    priority: int
    attempts: int
    max_attempts: int
    scheduled_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    lease_token: uuid.UUID | None
    lease_expires_at: datetime | None
    trace_context: dict[str, str]
    fair_key: int = 0


LEASED_FIELDS = tuple(f.name for f in fields(LeasedJob))


@dataclass(frozen=True, slots=True)
class WorkerRun:
    """One row of `sync_worker_runs`."""

    id: uuid.UUID
    worker_id: str
    status: WorkerRunStatus
    jobs_picked: int
    jobs_processed: int
    jobs_succeeded: int
    jobs_failed: int
    jobs_released: int
    notes: str | None
    metadata: dict[str, Any]
    started_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class Caller:
    """Whose view of the queue an operation takes: one user's, or everyone's."""

    user_id: uuid.UUID | None
    sees_everything: bool

    @classmethod
    def everyone(cls) -> Caller:
        return cls(user_id=None, sees_everything=True)

    @classmethod
    def user(cls, user_id: uuid.UUID) -> Caller:
        return cls(user_id=user_id, sees_everything=False)


@dataclass(frozen=True, slots=True)
class EnqueueRequest:
    account_id: uuid.UUID
    sync_type: SyncType
    priority: int = 0
    scheduled_at: datetime | None = None
    max_attempts: int = 3
    metadata: dict[str, Any] = field(default_factory=dict)
    trace_context: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class JobRef:
    """A job as `JOB_VIEW_ID` shows it: what a caller that enqueued it follows it by."""

    id: uuid.UUID
    account_id: uuid.UUID
    status: JobStatus


# What an enqueue answers each request with: the full job, or (JOB_VIEW_ID) its reference.
J = TypeVar("J", Job, JobRef)


@dataclass(frozen=True, slots=True)
class EnqueueResult(Generic[J]):
    job: J
    duplicate: bool


@dataclass(frozen=True, slots=True)
class JobFilter:
    status: JobStatus | None = None
    account_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class PageCursor:
    """Keyset position: the last job of the previous page (newest first)."""

    created_at: datetime
    job_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Completion:
    job_id: uuid.UUID
    lease_token: uuid.UUID
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Failure:
    job_id: uuid.UUID
    lease_token: uuid.UUID
    error: str
    permanent: bool = False
    retry_after: timedelta | None = None


@dataclass(frozen=True, slots=True)
class Release:
    """A leased job handed back unrun: `reason` is kept in `last_error`, `delay` holds it back."""

    job_id: uuid.UUID
    lease_token: uuid.UUID
    reason: str = ""
    delay: timedelta | None = None


@dataclass(frozen=True, slots=True)
class FailOutcome:
    job: Job
    will_retry: bool


@dataclass(frozen=True, slots=True)
class ResultAck:
    """The answer to one result of a batch: the job after it (unless only acks were asked for),
    or the error that refused it."""

    job_id: uuid.UUID
    job: Job | None = None
    error: Exception | None = None
    # An accepted failure: True when the job will be retried.
    will_retry: bool = False


@dataclass(frozen=True, slots=True)
class RecoveredJobs:
    requeued: list[uuid.UUID]
    failed: list[uuid.UUID]


@dataclass(frozen=True, slots=True)
class QueuePause:
    """An active pause of picking: for one user's jobs, or the whole queue (`user_id` None)."""

    user_id: uuid.UUID | None
    reason: str
    paused_by: str | None
    paused_at: datetime


@dataclass(frozen=True, slots=True)
class QueueStats:
    pending: int = 0
    processing: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        return self.pending + self.processing + self.succeeded + self.failed + self.cancelled


@dataclass(frozen=True, slots=True)
class Alert:
    name: str
    message: str
    value: float
    threshold: float
    severity: AlertSeverity = AlertSeverity.WARNING


@dataclass(frozen=True, slots=True)
class ApiDisabled:
    """A Google API that SyncService found disabled for the Cloud project, recently."""

    service: str  # e.g. mybusinessbusinessinformation.googleapis.com; "" if not recorded
    accounts: int  # distinct accounts whose syncs met it
    errors: int  # error_logs rows
    activation_url: str
    last_seen: datetime


@dataclass(frozen=True, slots=True)
class WorkerRunFigures:
    """Worker runs of one status over a period: how many, and their averages."""

    status: WorkerRunStatus
    runs: int
    avg_jobs_processed: float
    avg_jobs_succeeded: float
    # Over the runs that finished; zero when none has.
    avg_duration: timedelta


@dataclass(frozen=True, slots=True)
class QueueGauges:
    """The queue's state as metrics show it (QueueReader.gauges)."""

    # Pending and processing jobs by (status, priority).
    depth: dict[tuple[str, int], int]
    # Age of the oldest ready pending job; zero when none.
    oldest_ready_age: timedelta
    # How long the longest-running processing job has run; zero when none.
    longest_processing: timedelta
    worker_run_figures_24h: list[WorkerRunFigures]


@dataclass(frozen=True, slots=True)
class Diagnostics:
    stats: QueueStats
    oldest_pending_age: timedelta
    stale_jobs: list[Job]
    failure_rate_last_hour: float
    finished_last_hour: int
    success_rate_7d: float
    avg_duration: timedelta
    p95_duration: timedelta
    recent_failures: list[Job]
    recent_worker_runs: list[WorkerRun]
    alerts: list[Alert]
    generated_at: datetime
    worker_run_figures_24h: list[WorkerRunFigures] = field(default_factory=list)
    vacuum: VacuumHealth = field(default_factory=lambda: VacuumHealth())
    pauses: list[QueuePause] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class VacuumHealth:
    """What keeps vacuum from cleaning the queue table (PostgreSQL; zeros on SQLite)."""

    queue_dead_tuples: int = 0
    # The oldest open transaction of another session: its age, state and application name.
    oldest_transaction_age: timedelta = timedelta(0)
    oldest_transaction_state: str = ""
    oldest_transaction_application: str = ""


@dataclass(frozen=True, slots=True)
class SyncSchedule:
    """An account's periodic syncs: its overrides and where its next slots are.

    `*_period` is the spacing the next slots were laid out with (the interval after quota
    stretching); None, like the next slots, until the scheduler has laid the account out.
    """

    account_id: uuid.UUID
    account_active: bool
    enabled: bool
    incremental_interval: timedelta | None
    full_interval: timedelta | None
    incremental_period: timedelta | None
    full_period: timedelta | None
    next_incremental_at: datetime | None
    next_full_at: datetime | None
    last_enqueued_at: datetime | None
    last_job_id: uuid.UUID | None
    last_sync_type: SyncType | None


# Given for an interval in a ScheduleChange: back to the service default.
DEFAULT_INTERVAL = timedelta(0)


@dataclass(frozen=True, slots=True)
class ScheduleChange:
    """What SetSyncSchedule changes; None leaves a field as it is.

    An interval of DEFAULT_INTERVAL drops the account's override.
    """

    incremental_interval: timedelta | None = None
    full_interval: timedelta | None = None
    enabled: bool | None = None


@dataclass(frozen=True, slots=True)
class ScheduleDefaults:
    """The service's intervals, which accounts without an override follow."""

    incremental_interval: timedelta
    full_interval: timedelta


@dataclass(frozen=True, slots=True)
class DueBatch:
    """One batch of the scheduler's due scan: what it did and where the scan goes on."""

    rows: int
    enqueued: int
    duplicates: int
    deferred: int
    cursor: tuple[datetime, uuid.UUID] | None
