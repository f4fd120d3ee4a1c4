"""Tables owned by QueueService: the job queue, the record of worker runs, the pauses of
picking, and the schedule of periodic syncs."""

from __future__ import annotations

import uuid

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    Table,
    Text,
    Uuid,
    text,
    true,
)

from service_runtime.sqltypes import JsonDocument, UtcDateTime, metadata

JOB_STATUSES = ("pending", "processing", "succeeded", "failed", "cancelled")
ACTIVE_STATUSES = ("pending", "processing")
SYNC_TYPES = ("full", "incremental")
WORKER_RUN_STATUSES = ("running", "completed", "failed")
# Bounds of a per-account interval override, in seconds: one minute to thirty days.
SCHEDULE_INTERVAL_MIN, SCHEDULE_INTERVAL_MAX = 60, 30 * 24 * 3600

PRIORITY_MIN, PRIORITY_MAX = -100, 100
# The predicate of the one-active-job-per-account index, shared with ON CONFLICT inference.
ACTIVE_JOB_PREDICATE = text("status IN ('pending', 'processing')")
# The predicate of the pick's index on PostgreSQL: the same rows as `status = 'pending'`
# (status is never NULL), written so that only a statement saying exactly this implies it, and
# so that saying it implies no other partial index. With `status = 'pending'` the planner could
# read another index of the active jobs whole and sort them, and did so whenever it believed
# the pending jobs few (migration 0007).
PENDING_IN_PICK_ORDER = "(status = 'pending') IS TRUE"
MAX_ATTEMPTS_LIMIT = 25
# Storage settings of the queue table on PostgreSQL (migration 0005 says why): room on each page
# for updated rows, and autovacuum after a fixed number of changed rows, not a share.
QUEUE_TABLE_STORAGE = {
    "fillfactor": "80",
    "autovacuum_vacuum_scale_factor": "0.01",
    "autovacuum_vacuum_threshold": "1000",
    "autovacuum_vacuum_insert_scale_factor": "0.01",
    "autovacuum_vacuum_insert_threshold": "1000",
    "autovacuum_analyze_scale_factor": "0.02",
    "autovacuum_analyze_threshold": "1000",
}

sync_queue = Table(
    "sync_queue",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("user_id", Uuid, nullable=False),
    Column(
        "account_id",
        Uuid,
        ForeignKey("gmb_accounts.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("sync_type", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False, server_default="3"),
    # NULL means "as soon as possible", as in the seed.
    Column("scheduled_at", UtcDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("metadata", JsonDocument, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("started_at", UtcDateTime, nullable=True),
    Column("completed_at", UtcDateTime, nullable=True),
    # The lease: only the holder of `lease_token` may extend, complete or fail the job.
    Column("lease_token", Uuid, nullable=True),
    Column("lease_expires_at", UtcDateTime, nullable=True),
    Column("worker_id", Text, nullable=True),
    Column("worker_run_id", Uuid, nullable=True),
    # W3C trace context of the enqueue request, so the worker's span can link to it.
    Column("trace_context", JsonDocument, nullable=False),
    # One entry per failed attempt: {attempt, error, failed_at, worker_id, permanent}.
    Column("errors", JsonDocument, nullable=False),
    # What the successful sync reported (counts).
    Column("result", JsonDocument, nullable=True),
    # A pending job's place among the jobs of its priority (virtual-time fair queuing): set at
    # enqueue to the later of the head of the queue (the first due pending job's key) and one
    # step behind the user's last queued job, so each user's queued jobs are spread one step
    # apart and a newcomer's first job sorts at the head. Compared only within one priority.
    Column("fair_key", BigInteger, nullable=False, server_default="0"),
    CheckConstraint(f"status IN {JOB_STATUSES!r}", name="status"),
    CheckConstraint(f"sync_type IN {SYNC_TYPES!r}", name="sync_type"),
    CheckConstraint(f"priority BETWEEN {PRIORITY_MIN} AND {PRIORITY_MAX}", name="priority"),
    CheckConstraint(f"max_attempts BETWEEN 1 AND {MAX_ATTEMPTS_LIMIT}", name="max_attempts"),
    CheckConstraint("attempts >= 0", name="attempts"),
    CheckConstraint(
        "(status = 'processing') = (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL)",
        name="lease_iff_processing",
    ),
    # One pending or processing job per account, enforced by the database itself.
    Index(
        "uq_sync_queue_active_account",
        "account_id",
        unique=True,
        postgresql_where=ACTIVE_JOB_PREDICATE,
        sqlite_where=ACTIVE_JOB_PREDICATE,
    ),
    # The pick path: pending jobs in pick order, so the cost stays flat as finished jobs pile up.
    # On PostgreSQL its predicate is one that only the statements meant to read it imply (see
    # `PENDING_IN_PICK_ORDER`).
    Index(
        "ix_sync_queue_pick",
        text("priority DESC"),
        "fair_key",
        "created_at",
        "id",
        postgresql_where=text(PENDING_IN_PICK_ORDER),
        sqlite_where=text("status = 'pending'"),
    ),
    # The enqueue's path to a user's last queued key at a priority (the tail of its line).
    Index(
        "ix_sync_queue_fair_user",
        "user_id",
        "priority",
        "fair_key",
        postgresql_where=text("status = 'pending'"),
        sqlite_where=text("status = 'pending'"),
    ),
    # The reaper's path: leases by expiry.
    Index(
        "ix_sync_queue_lease_expiry",
        "lease_expires_at",
        postgresql_where=text("status = 'processing'"),
        sqlite_where=text("status = 'processing'"),
    ),
    Index("ix_sync_queue_user_created", "user_id", "created_at"),
    Index("ix_sync_queue_created", "created_at"),
    Index(
        "ix_sync_queue_completed",
        "completed_at",
        postgresql_where=text("completed_at IS NOT NULL"),
        sqlite_where=text("completed_at IS NOT NULL"),
    ),
    postgresql_with=QUEUE_TABLE_STORAGE,
)

sync_worker_runs = Table(
    "sync_worker_runs",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("worker_id", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="running"),
    Column("jobs_picked", Integer, nullable=False, server_default="0"),
    Column("jobs_processed", Integer, nullable=False, server_default="0"),
    Column("jobs_succeeded", Integer, nullable=False, server_default="0"),
    Column("jobs_failed", Integer, nullable=False, server_default="0"),
    Column("jobs_released", Integer, nullable=False, server_default="0"),
    Column("notes", Text, nullable=True),
    Column("metadata", JsonDocument, nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime, nullable=True),
    CheckConstraint(f"status IN {WORKER_RUN_STATUSES!r}", name="status"),
    Index("ix_sync_worker_runs_started", "started_at"),
)

# The user_id of a pause of the whole queue: no user has the nil UUID.
WHOLE_QUEUE = uuid.UUID(int=0)

sync_queue_pauses = Table(
    "sync_queue_pauses",
    metadata,
    # The paused user, or WHOLE_QUEUE. A row exists while the pause lasts; resuming deletes it.
    Column("user_id", Uuid, primary_key=True),
    Column("reason", Text, nullable=False),
    # Who paused it: the caller's user id, or its role for a service.
    Column("paused_by", Text, nullable=True),
    Column("paused_at", UtcDateTime, nullable=False),
)

sync_schedules = Table(
    "sync_schedules",
    metadata,
    Column(
        "account_id",
        Uuid,
        ForeignKey("gmb_accounts.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    # Per-account overrides of the service's intervals; NULL follows the service default.
    Column("incremental_interval_seconds", Integer, nullable=True),
    Column("full_interval_seconds", Integer, nullable=True),
    # False opts the account out of scheduled syncs (enqueueing by hand still works).
    Column("enabled", Boolean, nullable=False, server_default=true()),
    # The next slot of each kind of sync. NULL until the scheduler lays the account out.
    Column("next_incremental_at", UtcDateTime, nullable=True),
    Column("next_full_at", UtcDateTime, nullable=True),
    # When the scheduler looks at the row next, through its index: the earlier slot, or the
    # last try of a full slot that waits for a processing job to finish.
    Column("next_due_at", UtcDateTime, nullable=True),
    # The spacing the next slots were laid out with: the interval after quota stretching. When
    # the plan changes, slots are rescaled from these, so a crash halfway through a rescale
    # leaves every row either old or new, never scaled twice.
    Column("incremental_period_seconds", Integer, nullable=True),
    Column("full_period_seconds", Integer, nullable=True),
    Column("last_enqueued_at", UtcDateTime, nullable=True),
    # No foreign key: finished jobs are pruned, the record of what was enqueued stays.
    Column("last_job_id", Uuid, nullable=True),
    Column("last_sync_type", Text, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    CheckConstraint(
        "incremental_interval_seconds IS NULL OR incremental_interval_seconds BETWEEN "
        f"{SCHEDULE_INTERVAL_MIN} AND {SCHEDULE_INTERVAL_MAX}",
        name="incremental_interval",
    ),
    CheckConstraint(
        "full_interval_seconds IS NULL OR full_interval_seconds BETWEEN "
        f"{SCHEDULE_INTERVAL_MIN} AND {SCHEDULE_INTERVAL_MAX}",
        name="full_interval",
    ),
    CheckConstraint(
        "(incremental_period_seconds IS NULL OR incremental_period_seconds > 0)"
        " AND (full_period_seconds IS NULL OR full_period_seconds > 0)",
        name="periods",
    ),
    CheckConstraint(
        "last_sync_type IS NULL OR last_sync_type IN ('full', 'incremental')",
        name="last_sync_type",
    ),
    Index("ix_sync_schedules_next_due_at", "next_due_at"),
)
