"""The queue's database seam: the only module of QueueService that issues SQL.

Every state change is one statement or one transaction. The same code runs on PostgreSQL and
SQLite; where they differ it is said here:
- picking is one `WITH candidates AS (SELECT ... FOR UPDATE SKIP LOCKED) UPDATE ... RETURNING`
  statement; SQLite ignores the row lock and relies on `BEGIN IMMEDIATE` serialising writers;
- a new ready job is announced with `pg_notify` inside the enqueue transaction (so it is sent
  only if the transaction commits), or by an in-process callback after commit on SQLite;
- one pending or processing job per account is the partial unique index
  `uq_sync_queue_active_account`, never a check-then-insert;
- a lease ends at `lease_expires_at` by the database's clock on PostgreSQL
  (`statement_timestamp()`), by this process's clock on SQLite. Every statement that checks a
  lease token also checks that the lease has not expired, in the same statement, and a pick
  takes over jobs whose lease ran out without waiting for the reaper.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import statistics
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, NoReturn

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from queue_service.errors import (
    AccountInactive,
    AccountNotFound,
    ActiveJobExists,
    IllegalTransition,
    JobNotFound,
    LeaseExpired,
    LeaseLost,
    QueueError,
    WorkerRunNotFound,
)
from queue_service.lifecycle import RetryPolicy, decide_failure
from queue_service.models import (
    DEFAULT_INTERVAL,
    ApiDisabled,
    Caller,
    Completion,
    DueBatch,
    EnqueueRequest,
    EnqueueResult,
    FailOutcome,
    Failure,
    Job,
    JobFilter,
    JobStatus,
    PageCursor,
    QueueStats,
    RecoveredJobs,
    ResultAck,
    ScheduleChange,
    ScheduleDefaults,
    SyncSchedule,
    SyncType,
    WorkerRun,
    WorkerRunStatus,
)
from queue_service.slots import (
    Demand,
    Slots,
    catch_up,
    period_seconds,
    place,
    rescale,
    serve,
)
from queue_service.tables import (
    ACTIVE_JOB_PREDICATE,
    ACTIVE_STATUSES,
    sync_queue,
    sync_schedules,
    sync_worker_runs,
)
from service_runtime.sqltypes import JsonDocument, UtcDateTime
from sync_service.tables import error_logs, gmb_accounts

NOTIFY_CHANNEL = "gmbsync_jobs"
# Error texts are kept whole in logs but bounded in the row.
MAX_ERROR_LENGTH = 4000
# How many expired leases one reaper pass recovers; the next pass takes the rest.
RECOVER_BATCH = 500
# Durations for the average and p95 come from at most this many recent jobs.
DURATION_SAMPLE = 10_000

# A laid-out account's period is rewritten only when the plan is off by more than this share.
REGRID_TOLERANCE = 0.02

q = sync_queue
runs = sync_worker_runs
sched = sync_schedules


def utcnow() -> datetime:
    return datetime.now(UTC)


def lost_worker_error(expired_at: datetime, worker_id: str | None) -> str:
    """The error recorded when a job's lease ran out: its worker is taken to be lost.

    Microseconds are always written, so the text is the same as `_LOST_WORKER_ERROR_SQL`'s.
    """
    return (
        f"worker lost: lease expired at {expired_at.isoformat(timespec='microseconds')} "
        f"(worker {worker_id})"
    )


def _text(value: str) -> sa.ColumnElement[str]:
    """A string constant in SQL, typed: variadic functions such as jsonb_build_object cannot
    infer the type of an untyped parameter."""
    return sa.cast(sa.literal(value), sa.Text())


# `lost_worker_error` computed by PostgreSQL from the row being updated.
_LOST_WORKER_ERROR_SQL = (
    _text("worker lost: lease expired at ")
    + sa.func.to_char(
        sa.func.timezone("UTC", q.c.lease_expires_at),
        _text('YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
        type_=sa.Text(),
    )
    + _text(" (worker ")
    + sa.func.coalesce(q.c.worker_id, _text("None"))
    + _text(")")
)


class random_uuid(FunctionElement[uuid.UUID]):
    """A new random UUID per row, computed by the database."""

    type = sa.Uuid()
    inherit_cache = True


@compiles(random_uuid, "postgresql")
def _random_uuid_postgresql(element: Any, compiler: Any, **kw: Any) -> str:
    return "gen_random_uuid()"


@compiles(random_uuid, "sqlite")
def _random_uuid_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    # SQLAlchemy stores a UUID on SQLite as 32 hex characters.
    return "lower(hex(randomblob(16)))"


# Written out, not built: SQLAlchemy leaves columns unqualified in SQLite's RETURNING, where a
# built correlated subquery would then compare gmb_accounts.id with itself.
_ACCOUNT_NAME = sa.literal_column(
    "(SELECT gmb_accounts.account_name FROM gmb_accounts"
    " WHERE gmb_accounts.id = sync_queue.account_id)",
    sa.Text(),
).label("account_name")
_JOB_COLUMNS = (*q.c, _ACCOUNT_NAME)


def _job(row: sa.RowMapping) -> Job:
    return Job(
        id=row["id"],
        user_id=row["user_id"],
        account_id=row["account_id"],
        account_name=row["account_name"] or "",
        sync_type=SyncType(row["sync_type"]),
        status=JobStatus(row["status"]),
        priority=row["priority"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        scheduled_at=row["scheduled_at"],
        last_error=row["last_error"],
        metadata=row["metadata"] or {},
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        lease_token=row["lease_token"],
        lease_expires_at=row["lease_expires_at"],
        worker_id=row["worker_id"],
        worker_run_id=row["worker_run_id"],
        trace_context=row["trace_context"] or {},
        errors=list(row["errors"] or []),
        result=row["result"],
    )


def _worker_run(row: sa.RowMapping) -> WorkerRun:
    return WorkerRun(
        id=row["id"],
        worker_id=row["worker_id"],
        status=WorkerRunStatus(row["status"]),
        jobs_picked=row["jobs_picked"],
        jobs_processed=row["jobs_processed"],
        jobs_succeeded=row["jobs_succeeded"],
        jobs_failed=row["jobs_failed"],
        jobs_released=row["jobs_released"],
        notes=row["notes"],
        metadata=row["metadata"] or {},
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


_SCHEDULE_COLUMNS = tuple(c for c in sched.c if c.name != "account_id")


def _seconds(value: int | None, default: timedelta) -> timedelta:
    return default if value is None else timedelta(seconds=value)


def _optional_seconds(value: int | None) -> timedelta | None:
    return None if value is None else timedelta(seconds=value)


def _schedule(account_id: uuid.UUID, row: sa.RowMapping) -> SyncSchedule:
    """An account's schedule; an account without a row follows the defaults, unplaced."""
    enabled = row["enabled"]
    return SyncSchedule(
        account_id=account_id,
        account_active=bool(row["is_active"]),
        enabled=True if enabled is None else bool(enabled),
        incremental_interval=_optional_seconds(row["incremental_interval_seconds"]),
        full_interval=_optional_seconds(row["full_interval_seconds"]),
        incremental_period=_optional_seconds(row["incremental_period_seconds"]),
        full_period=_optional_seconds(row["full_period_seconds"]),
        next_incremental_at=row["next_incremental_at"],
        next_full_at=row["next_full_at"],
        last_enqueued_at=row["last_enqueued_at"],
        last_job_id=row["last_job_id"],
        last_sync_type=SyncType(row["last_sync_type"]) if row["last_sync_type"] else None,
    )


def _next_due(
    current: datetime | None, incremental: datetime, full: datetime, now: datetime
) -> datetime:
    """When the scheduler should look at a row whose slots were moved: the earlier slot, unless
    that one is already due and the row records a later try (a full slot waiting for a
    processing job), which must not start looking missed."""
    due = min(incremental, full)
    if due <= now and current is not None and current > due:
        return current
    return due


def _call_count(value: Any) -> int | None:
    """`result.api_calls` as a count, or None: results are free-form JSON that clients write."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 <= value < 10**9:  # also rejects NaN
        return None
    return max(1, round(value))


def _visible_to(caller: Caller) -> sa.ColumnElement[bool]:
    if caller.sees_everything:
        return sa.true()
    return q.c.user_id == caller.user_id


def _error_entry(
    *, attempt: int, error: str, at: datetime, worker_id: str | None, permanent: bool
) -> dict[str, Any]:
    return {
        "attempt": attempt,
        "error": error[:MAX_ERROR_LENGTH],
        "failed_at": at.isoformat(),
        "worker_id": worker_id,
        "permanent": permanent,
    }


_LEASE_CLEARED = {"lease_token": None, "lease_expires_at": None}


class RunTally:
    """Job counts owed to worker runs, written in one pass at the end of a transaction.

    Writing them last, in run-id order, means every transaction locks job rows before run
    rows, so two transactions never wait on each other in a cycle.
    """

    PICKED: ClassVar[dict[str, int]] = {"jobs_picked": 1}
    SUCCEEDED: ClassVar[dict[str, int]] = {"jobs_processed": 1, "jobs_succeeded": 1}
    FAILED: ClassVar[dict[str, int]] = {"jobs_processed": 1, "jobs_failed": 1}
    RELEASED: ClassVar[dict[str, int]] = {"jobs_released": 1}

    def __init__(self) -> None:
        self._owed: dict[uuid.UUID, collections.Counter[str]] = {}

    def add(self, run_id: uuid.UUID | None, increments: dict[str, int]) -> None:
        if run_id is not None:
            self._owed.setdefault(run_id, collections.Counter()).update(increments)

    async def apply(self, conn: AsyncConnection) -> None:
        for run_id in sorted(self._owed):
            owed = self._owed[run_id]
            await conn.execute(
                sa.update(runs)
                .where(runs.c.id == run_id)
                .values({runs.c[name]: runs.c[name] + n for name, n in owed.items()})
            )
        self._owed.clear()


class JobStore:
    """Jobs and worker runs in `sync_queue` and `sync_worker_runs`.

    `on_jobs_available` is called after a commit that made jobs ready; on PostgreSQL the
    transaction itself also sends `NOTIFY gmbsync_jobs`, which reaches every replica.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        retry_policy: RetryPolicy | None = None,
        clock: Callable[[], datetime] = utcnow,
        on_jobs_available: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.retry_policy = retry_policy or RetryPolicy()
        self.clock = clock
        self.is_postgres = engine.dialect.name == "postgresql"
        self._on_jobs_available = on_jobs_available or (lambda: None)

    # -- connectivity -------------------------------------------------------------------------

    async def ping(self) -> bool:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
        return True

    async def _announce(self, conn: AsyncConnection) -> None:
        if self.is_postgres:
            await conn.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, "")))

    # -- the lease clock ----------------------------------------------------------------------

    @functools.cached_property
    def _lease_clock(self) -> sa.ColumnElement[datetime]:
        """The "now" of leases, in SQL: when a lease starts, and whether it has run out.

        On PostgreSQL the database's clock, so that every replica, the reaper and every pick
        agree on when a lease ends however far their hosts' clocks drift; the start of the
        statement (stable within it, so the expiry index can be used). A clock injected into
        the store (tests) is passed as `p_lease_now` and wins. SQLite has only this process.
        """
        given = sa.bindparam("p_lease_now", type_=UtcDateTime())
        if self.is_postgres:
            return sa.func.coalesce(given, sa.func.statement_timestamp(), type_=UtcDateTime())
        return given

    @functools.cached_property
    def _lease_end(self) -> sa.ColumnElement[datetime]:
        """When a lease granted or extended now ends: `_lease_clock` plus `p_lease`."""
        if self.is_postgres:
            return self._lease_clock + sa.bindparam("p_lease", type_=sa.Interval())
        return sa.bindparam("p_expires", type_=UtcDateTime())

    def _lease_params(
        self, lease: timedelta | None = None, *, now: datetime | None = None
    ) -> dict[str, Any]:
        """The parameters of `_lease_clock` (and of `_lease_end` for a `lease`); `now` is this
        process's clock if already read."""
        injected = not self.is_postgres or self.clock is not utcnow
        lease_now = (now or self.clock()) if injected else None
        params: dict[str, Any] = {"p_lease_now": lease_now}
        if lease is not None:
            if self.is_postgres:
                params["p_lease"] = lease
            else:
                assert lease_now is not None
                params["p_expires"] = lease_now + lease
        return params

    def _lease_held(self, job_id: Any, lease_token: Any) -> tuple[sa.ColumnElement[bool], ...]:
        """The conditions under which `lease_token` holds the job's lease right now.

        Put in the same statement as the change they guard: a lease that runs out between a
        check and a write would otherwise still be honoured.
        """
        return (
            q.c.id == job_id,
            q.c.lease_token == lease_token,
            q.c.status == JobStatus.PROCESSING.value,
            q.c.lease_expires_at > self._lease_clock,
        )

    # -- enqueue ------------------------------------------------------------------------------

    async def job_enqueue(self, request: EnqueueRequest, caller: Caller) -> EnqueueResult:
        """Enqueues one sync, or returns (and maybe upgrades) the account's active job."""
        results = await self.job_enqueue_many([request], caller)
        return results[0]

    async def job_enqueue_many(
        self, requests: Sequence[EnqueueRequest], caller: Caller
    ) -> list[EnqueueResult]:
        """Enqueues many syncs in one transaction; any error rolls all of them back.

        Set-based, which is where batches get their speed: one query checks every account, one
        multi-row INSERT ... ON CONFLICT DO NOTHING creates every job it can, and only the
        requests that met an active job take the one-by-one duplicate path.
        """
        now = self.clock()
        async with self.engine.begin() as conn:
            owners = await self._check_accounts(conn, requests, caller)
            results, created = await self._enqueue_in(conn, requests, owners, now)
        if created:
            self._on_jobs_available()
        return results

    async def _enqueue_in(
        self,
        conn: AsyncConnection,
        requests: Sequence[EnqueueRequest],
        owners: dict[uuid.UUID, uuid.UUID],
        now: datetime,
    ) -> tuple[list[EnqueueResult], bool]:
        """The enqueue of checked accounts inside the caller's transaction; True if any job was
        created (announced to pickers on commit; the caller calls `_on_jobs_available` after).
        """
        if not requests:
            return [], False
        first_of_account: dict[uuid.UUID, int] = {}
        for index, request in enumerate(requests):
            first_of_account.setdefault(request.account_id, index)
        candidates = [requests[i] for i in sorted(first_of_account.values())]
        rows = (
            (
                await conn.execute(
                    self._insert_jobs,
                    [self._job_values(r, owners[r.account_id], now) for r in candidates],
                )
            )
            .mappings()
            .all()
        )
        inserted = {row["account_id"]: _job(row) for row in rows}
        results: list[EnqueueResult] = []
        for index, request in enumerate(requests):
            job = inserted.get(request.account_id)
            if job is not None and first_of_account[request.account_id] == index:
                results.append(EnqueueResult(job=job, duplicate=False))
                continue
            result = await self._enqueue_one(conn, request, owners[request.account_id], now)
            results.append(result)
            if not result.duplicate:
                inserted[request.account_id] = result.job
        if inserted:
            await self._announce(conn)
        return results, bool(inserted)

    async def _check_accounts(
        self, conn: AsyncConnection, requests: Sequence[EnqueueRequest], caller: Caller
    ) -> dict[uuid.UUID, uuid.UUID]:
        """The owner of each requested account; NOT_FOUND or inactive stop the whole batch."""
        wanted = {r.account_id for r in requests}
        rows = await conn.execute(
            sa.select(gmb_accounts.c.id, gmb_accounts.c.user_id, gmb_accounts.c.is_active).where(
                gmb_accounts.c.id.in_(wanted)
            )
        )
        found = {account_id: (owner, active) for account_id, owner, active in rows}
        for request in requests:
            owner, active = found.get(request.account_id, (None, False))
            # Someone else's account is reported exactly like a missing one: no hint it exists.
            if owner is None or not (caller.sees_everything or owner == caller.user_id):
                raise AccountNotFound(f"account {request.account_id} not found")
            if not active:
                raise AccountInactive(
                    f"account {request.account_id} is deactivated: reconnect it before syncing"
                )
        return {account_id: owner for account_id, (owner, _) in found.items()}

    @staticmethod
    def _job_values(request: EnqueueRequest, owner: uuid.UUID, now: datetime) -> dict[str, Any]:
        return {
            "id": uuid.uuid4(),
            "user_id": owner,
            "account_id": request.account_id,
            "sync_type": request.sync_type.value,
            "status": JobStatus.PENDING.value,
            "priority": request.priority,
            "attempts": 0,
            "max_attempts": request.max_attempts,
            "scheduled_at": request.scheduled_at,
            "metadata": request.metadata,
            "created_at": now,
            "updated_at": now,
            "trace_context": request.trace_context,
            "errors": [],
        }

    @functools.cached_property
    def _insert_jobs(self) -> sa.Insert:
        """INSERT of one or many jobs that skips accounts with an active job.

        One statement object executed with a list of rows: SQLAlchemy batches it into
        multi-row VALUES ("insertmanyvalues") and compiles it once, where `.values(rows)`
        would be compiled anew for every batch.
        """
        insert = postgresql.insert(q) if self.is_postgres else sqlite.insert(q)
        return insert.on_conflict_do_nothing(
            index_elements=[q.c.account_id],
            # Literal, not bound: PostgreSQL infers the partial index from the predicate
            # text, and cannot once a prepared statement turns the values into parameters.
            index_where=ACTIVE_JOB_PREDICATE,
        ).returning(*_JOB_COLUMNS)

    async def _enqueue_one(
        self, conn: AsyncConnection, request: EnqueueRequest, owner: uuid.UUID, now: datetime
    ) -> EnqueueResult:
        """Enqueue for an account that has (or just had) an active job: upgrade or return it."""
        values = self._job_values(request, owner, now)
        # The active job may finish between our look and our insert; then the insert can
        # succeed on the next try. Three tries cover any realistic interleaving.
        for _ in range(3):
            existing = await self._upgrade_active(conn, request, now)
            if existing is not None:
                return EnqueueResult(job=existing, duplicate=True)
            row = (await conn.execute(self._insert_jobs, [values])).mappings().first()
            if row is not None:
                return EnqueueResult(job=_job(row), duplicate=False)
        raise ActiveJobExists(
            f"account {request.account_id} has a job changing state right now; retry"
        )

    async def _upgrade_active(
        self, conn: AsyncConnection, request: EnqueueRequest, now: datetime
    ) -> Job | None:
        """Upgrades a pending duplicate to a full sync or a higher priority; returns the job."""
        upgraded_type = (
            sa.literal(SyncType.FULL.value) if request.sync_type is SyncType.FULL else q.c.sync_type
        )
        upgraded_priority = sa.case(
            (q.c.priority < request.priority, request.priority), else_=q.c.priority
        )
        needs_upgrade = sa.or_(
            q.c.priority < request.priority,
            sa.and_(
                sa.literal(request.sync_type.value) == SyncType.FULL.value,
                q.c.sync_type != SyncType.FULL.value,
            ),
        )
        row = (
            (
                await conn.execute(
                    sa.update(q)
                    .where(
                        q.c.account_id == request.account_id,
                        q.c.status == JobStatus.PENDING.value,
                        needs_upgrade,
                    )
                    .values(sync_type=upgraded_type, priority=upgraded_priority, updated_at=now)
                    .returning(*_JOB_COLUMNS)
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            row = (
                (
                    await conn.execute(
                        sa.select(*_JOB_COLUMNS).where(
                            q.c.account_id == request.account_id,
                            q.c.status.in_(ACTIVE_STATUSES),
                        )
                    )
                )
                .mappings()
                .first()
            )
        return None if row is None else _job(row)

    # -- reading ------------------------------------------------------------------------------

    async def job_get(self, job_id: uuid.UUID, caller: Caller) -> Job:
        async with self.engine.connect() as conn:
            return await self._job_get(conn, job_id, caller)

    async def _job_get(self, conn: AsyncConnection, job_id: uuid.UUID, caller: Caller) -> Job:
        row = (
            (
                await conn.execute(
                    sa.select(*_JOB_COLUMNS).where(q.c.id == job_id, _visible_to(caller))
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise JobNotFound(f"job {job_id} not found")
        return _job(row)

    async def job_list(
        self,
        caller: Caller,
        job_filter: JobFilter,
        *,
        limit: int,
        after: PageCursor | None = None,
    ) -> list[Job]:
        """Jobs newest first; `after` continues from the last job of the previous page."""
        conditions: list[sa.ColumnElement[bool]] = [_visible_to(caller)]
        if job_filter.status is not None:
            conditions.append(q.c.status == job_filter.status.value)
        if job_filter.account_id is not None:
            conditions.append(q.c.account_id == job_filter.account_id)
        if job_filter.user_id is not None:
            conditions.append(q.c.user_id == job_filter.user_id)
        if after is not None:
            conditions.append(
                sa.or_(
                    q.c.created_at < after.created_at,
                    sa.and_(q.c.created_at == after.created_at, q.c.id < after.job_id),
                )
            )
        statement = (
            sa.select(*_JOB_COLUMNS)
            .where(*conditions)
            .order_by(q.c.created_at.desc(), q.c.id.desc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(statement)).mappings().all()
        return [_job(r) for r in rows]

    async def job_stats(self, caller: Caller) -> QueueStats:
        async with self.engine.connect() as conn:
            return await self._stats(conn, caller)

    async def _stats(self, conn: AsyncConnection, caller: Caller) -> QueueStats:
        rows = await conn.execute(
            sa.select(q.c.status, sa.func.count()).where(_visible_to(caller)).group_by(q.c.status)
        )
        counts = {status: count for status, count in rows}
        return QueueStats(**{s.value: counts.get(s.value, 0) for s in JobStatus})

    # -- user operations ----------------------------------------------------------------------

    async def job_cancel(self, job_id: uuid.UUID, caller: Caller) -> Job:
        now = self.clock()
        async with self.engine.begin() as conn:
            row = (
                (
                    await conn.execute(
                        sa.update(q)
                        .where(
                            q.c.id == job_id,
                            q.c.status == JobStatus.PENDING.value,
                            _visible_to(caller),
                        )
                        .values(status=JobStatus.CANCELLED.value, completed_at=now, updated_at=now)
                        .returning(*_JOB_COLUMNS)
                    )
                )
                .mappings()
                .first()
            )
            if row is not None:
                return _job(row)
            job = await self._job_get(conn, job_id, caller)
        raise IllegalTransition(
            f"job {job_id} is {job.status.value}: only a pending job can be cancelled"
        )

    async def job_retry(self, job_id: uuid.UUID, caller: Caller) -> Job:
        """Puts a failed or cancelled job back to pending with its attempts reset."""
        now = self.clock()
        statement = (
            sa.update(q)
            .where(
                q.c.id == job_id,
                q.c.status.in_((JobStatus.FAILED.value, JobStatus.CANCELLED.value)),
                _visible_to(caller),
            )
            .values(
                status=JobStatus.PENDING.value,
                attempts=0,
                scheduled_at=None,
                started_at=None,
                completed_at=None,
                worker_id=None,
                worker_run_id=None,
                updated_at=now,
            )
            .returning(*_JOB_COLUMNS)
        )
        try:
            async with self.engine.begin() as conn:
                row = (await conn.execute(statement)).mappings().first()
                if row is None:
                    job = await self._job_get(conn, job_id, caller)
                    raise IllegalTransition(
                        f"job {job_id} is {job.status.value}: only a failed or cancelled job "
                        "can be retried"
                    )
                await self._announce(conn)
        except IntegrityError:
            raise ActiveJobExists(
                f"job {job_id} cannot be retried: its account already has a pending or "
                "processing job"
            ) from None
        self._on_jobs_available()
        return _job(row)

    # -- worker operations --------------------------------------------------------------------

    def _ready_candidates(self, limit: Any) -> sa.Select[Any]:
        """Pending jobs that are due, in pick order, locked; rows other pickers hold are
        skipped. Reads the partial index `ix_sync_queue_pick`."""
        now = sa.bindparam("p_now", type_=UtcDateTime())
        return (
            sa.select(q.c.id)
            .where(
                q.c.status == JobStatus.PENDING.value,
                sa.or_(q.c.scheduled_at.is_(None), q.c.scheduled_at <= now),
                q.c.attempts < q.c.max_attempts,
            )
            .order_by(q.c.priority.desc(), q.c.created_at, q.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )

    def _expired_leases(self, *columns: sa.ColumnElement[Any]) -> sa.Select[Any]:
        """Processing jobs whose lease has run out, oldest expiry first, locked; rows another
        transaction holds (a holder reporting, the reaper, another picker) are skipped.
        Reads the partial index `ix_sync_queue_lease_expiry`."""
        return (
            sa.select(*columns)
            .where(
                q.c.status == JobStatus.PROCESSING.value,
                q.c.lease_expires_at <= self._lease_clock,
            )
            .order_by(q.c.lease_expires_at)
            .limit(sa.bindparam("p_max_jobs", type_=sa.Integer()))
            .with_for_update(skip_locked=True)
        )

    def _lease_grant(self) -> dict[str, Any]:
        """The values that lease a job to the picking worker."""
        now = sa.bindparam("p_now", type_=UtcDateTime())  # this process's clock
        return {
            "status": JobStatus.PROCESSING.value,
            "attempts": q.c.attempts + 1,
            # The lease's own start: `lease_expires_at - started_at` is the lease granted.
            "started_at": self._lease_clock,
            "updated_at": now,
            "lease_token": random_uuid(),
            "lease_expires_at": self._lease_end,
            "worker_id": sa.bindparam("p_worker_id", type_=sa.Text()),
            "worker_run_id": sa.bindparam("p_worker_run_id", type_=sa.Uuid()),
        }

    @functools.cached_property
    def _pick_sql(self) -> sa.Executable:
        """PickJobs' statement, built once and run with `pick_statement`'s parameters.

        On PostgreSQL one statement does the whole pick:
        - `expired`: up to `max_jobs` jobs whose lease ran out, locked (SKIP LOCKED);
        - `lost`: those of them whose attempts are used up fail, with the error the reaper
          writes ("worker lost: ...");
        - `ready`: due pending jobs in pick order, locked, as many as the expired jobs with
          attempts left leave room for;
        - `changed`: the expired jobs with attempts left, then the ready ones, are leased to
          this worker; a taken-over job records its lost attempt like the reaper does;
        - `counted`: the runs' counts, in one update after locking the run rows in id order
          (two picks touching the same two runs never wait on each other in a cycle): the
          picking run's `jobs_picked`, and a processed and failed job on each run that lost one.
        A job is acted on by whoever locks its row first: a reaper pass or another pick that
        comes second skips the row, or re-reads it after the first commits and finds it no
        longer processing. Expired jobs go first: they were at the head of the queue when
        first picked.

        On SQLite (no data-modifying CTEs) `_pick_sqlite` handles the expired jobs first in
        the same transaction and passes the ones to take over as `p_takeover`.

        Parameter names start with `p_`: executed with a dict, an UPDATE turns keys that are
        column names of its table into extra SET clauses.
        """
        now = sa.bindparam("p_now", type_=UtcDateTime())
        max_jobs = sa.bindparam("p_max_jobs", type_=sa.Integer())
        if not self.is_postgres:
            takeover = sa.bindparam("p_takeover", expanding=True, type_=sa.Uuid())
            ready = self._ready_candidates(sa.bindparam("p_room", type_=sa.Integer())).cte("ready")
            return (
                sa.update(q)
                .where(sa.or_(q.c.id.in_(takeover), q.c.id.in_(sa.select(ready.c.id))))
                .values(**self._lease_grant())
                .returning(*_JOB_COLUMNS)
            )

        expired = self._expired_leases(
            q.c.id, q.c.attempts, q.c.max_attempts, q.c.worker_run_id
        ).cte("expired")
        takeover = sa.select(expired.c.id).where(expired.c.attempts < expired.c.max_attempts)
        taken_count = sa.select(sa.func.count()).select_from(takeover.subquery()).scalar_subquery()
        ready = self._ready_candidates(sa.func.greatest(max_jobs - taken_count, 0)).cte("ready")
        lost_entry = q.c.errors.op("||", return_type=postgresql.JSONB())(
            sa.func.jsonb_build_array(
                sa.func.jsonb_build_object(
                    _text("attempt"),
                    q.c.attempts,
                    _text("error"),
                    _LOST_WORKER_ERROR_SQL,
                    _text("failed_at"),
                    sa.cast(sa.bindparam("p_failed_at", type_=sa.Text()), sa.Text()),
                    _text("worker_id"),
                    q.c.worker_id,
                    _text("permanent"),
                    sa.false(),
                )
            )
        )
        lost = (
            sa.update(q)
            .where(
                q.c.id.in_(
                    sa.select(expired.c.id).where(expired.c.attempts >= expired.c.max_attempts)
                )
            )
            .values(
                status=JobStatus.FAILED.value,
                completed_at=now,
                updated_at=now,
                last_error=_LOST_WORKER_ERROR_SQL,
                errors=lost_entry,
                **_LEASE_CLEARED,
            )
            .returning(q.c.id)
            .cte("lost")
        )
        # In SET, columns are the row before the update: `processing` marks a takeover.
        taken_over = q.c.status == JobStatus.PROCESSING.value
        changed = (
            sa.update(q)
            .where(q.c.id.in_(sa.union_all(takeover, sa.select(ready.c.id))))
            .values(
                **self._lease_grant(),
                last_error=sa.case((taken_over, _LOST_WORKER_ERROR_SQL), else_=q.c.last_error),
                errors=sa.case((taken_over, lost_entry), else_=q.c.errors),
            )
            .returning(*_JOB_COLUMNS)
            .cte("changed")
        )
        one, zero = sa.literal_column("1"), sa.literal_column("0")
        owed = sa.union_all(
            sa.select(
                changed.c.worker_run_id.label("run_id"), one.label("picked"), zero.label("lost")
            ),
            sa.select(expired.c.worker_run_id, zero, one),
        ).subquery("owed")
        per_run = (
            sa.select(
                owed.c.run_id,
                sa.func.sum(owed.c.picked).label("picked"),
                sa.func.sum(owed.c.lost).label("lost"),
            )
            .where(owed.c.run_id.is_not(None))
            .group_by(owed.c.run_id)
            .cte("per_run")
        )
        locked_runs = (
            sa.select(runs.c.id)
            .where(runs.c.id.in_(sa.select(per_run.c.run_id)))
            .order_by(runs.c.id)
            .with_for_update()
            .cte("locked_runs")
        )
        counted = (
            sa.update(runs)
            .where(
                runs.c.id == per_run.c.run_id,
                runs.c.id.in_(sa.select(locked_runs.c.id)),
            )
            .values(
                jobs_picked=runs.c.jobs_picked + per_run.c.picked,
                jobs_processed=runs.c.jobs_processed + per_run.c.lost,
                jobs_failed=runs.c.jobs_failed + per_run.c.lost,
            )
            .cte("counted")
        )
        return sa.select(changed).add_cte(lost).add_cte(counted)

    def pick_statement(
        self,
        *,
        now: datetime,
        max_jobs: int,
        lease: timedelta,
        worker_id: str,
        worker_run_id: uuid.UUID | None,
    ) -> tuple[sa.Executable, dict[str, Any]]:
        """The one statement that leases up to `max_jobs` jobs, and its parameters.

        On SQLite it leases due pending jobs only: `_pick_sqlite` deals with expired ones.
        """
        params = {
            "p_now": now,
            "p_max_jobs": max_jobs,
            "p_worker_id": worker_id,
            "p_worker_run_id": worker_run_id,
            **self._lease_params(lease, now=now),
        }
        if self.is_postgres:
            params["p_failed_at"] = now.isoformat()
        else:
            params |= {"p_takeover": [], "p_room": max_jobs}
        return self._pick_sql, params

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
        statement, params = self.pick_statement(
            now=self.clock(),
            max_jobs=max_jobs,
            lease=lease,
            worker_id=worker_id,
            worker_run_id=worker_run_id,
        )
        if self.is_postgres:
            async with self._single_change() as conn:
                rows = (await conn.execute(statement, params)).mappings().all()
        else:
            rows = await self._pick_sqlite(statement, params)
        jobs = [_job(r) for r in rows]
        # RETURNING gives no order; hand the jobs out in pick order.
        jobs.sort(key=lambda j: (-j.priority, j.created_at, j.id))
        return jobs

    async def _pick_sqlite(
        self, statement: sa.Executable, params: dict[str, Any]
    ) -> Sequence[sa.RowMapping]:
        """SQLite's pick, in one `BEGIN IMMEDIATE` transaction: expired jobs are failed or
        marked as lost attempts first, then leased with the ready ones."""
        now: datetime = params["p_now"]
        tally = RunTally()
        async with self.engine.begin() as conn:
            expired = (
                (
                    await conn.execute(
                        self._expired_leases(
                            q.c.id,
                            q.c.attempts,
                            q.c.max_attempts,
                            q.c.errors,
                            q.c.worker_id,
                            q.c.worker_run_id,
                            q.c.lease_expires_at,
                        ),
                        params,
                    )
                )
                .mappings()
                .all()
            )
            takeover: list[uuid.UUID] = []
            for row in expired:
                values = self._lost_values(row, now)
                if row["attempts"] >= row["max_attempts"]:
                    values |= {
                        "status": JobStatus.FAILED.value,
                        "completed_at": now,
                        **_LEASE_CLEARED,
                    }
                else:
                    takeover.append(row["id"])
                await conn.execute(sa.update(q).where(q.c.id == row["id"]).values(**values))
                tally.add(row["worker_run_id"], RunTally.FAILED)
            params = params | {
                "p_takeover": takeover,
                "p_room": max(params["p_max_jobs"] - len(takeover), 0),
            }
            rows = (await conn.execute(statement, params)).mappings().all()
            for row in rows:
                tally.add(row["worker_run_id"], RunTally.PICKED)
            await tally.apply(conn)
        return rows

    def _lost_values(self, row: sa.RowMapping, now: datetime) -> dict[str, Any]:
        """The error a job whose lease ran out records: its worker is taken to be lost."""
        error = lost_worker_error(row["lease_expires_at"], row["worker_id"])
        return {
            "last_error": error,
            "errors": [
                *(row["errors"] or []),
                _error_entry(
                    attempt=row["attempts"],
                    error=error,
                    at=now,
                    worker_id=row["worker_id"],
                    permanent=False,
                ),
            ],
            "updated_at": now,
        }

    @functools.cached_property
    def _extend_sql(self) -> sa.Update:
        """ExtendLease: a lease that has run out cannot be revived, only a held one moved."""
        return (
            sa.update(q)
            .where(
                *self._lease_held(
                    sa.bindparam("p_job_id", type_=sa.Uuid()),
                    sa.bindparam("p_lease_token", type_=sa.Uuid()),
                )
            )
            .values(
                lease_expires_at=self._lease_end,
                updated_at=sa.bindparam("p_now", type_=UtcDateTime()),
            )
            .returning(q.c.lease_expires_at)
        )

    async def lease_extend(
        self, job_id: uuid.UUID, lease_token: uuid.UUID, lease: timedelta
    ) -> datetime:
        params = {
            "p_job_id": job_id,
            "p_lease_token": lease_token,
            "p_now": self.clock(),
            **self._lease_params(lease),
        }
        async with self._single_change() as conn:
            expires = (await conn.execute(self._extend_sql, params)).scalar_one_or_none()
            if expires is None:
                await self._raise_lease_problem(conn, job_id, lease_token)
        return expires

    @functools.cached_property
    def _complete_plain_sql(self) -> sa.Update:
        """CompleteJob's update, built once and run with `_complete_params`."""
        now = sa.bindparam("p_now", type_=UtcDateTime())
        return (
            sa.update(q)
            .where(
                *self._lease_held(
                    sa.bindparam("p_job_id", type_=sa.Uuid()),
                    sa.bindparam("p_lease_token", type_=sa.Uuid()),
                )
            )
            .values(
                status=JobStatus.SUCCEEDED.value,
                completed_at=now,
                updated_at=now,
                last_error=None,
                result=sa.bindparam("p_result", type_=JsonDocument),
                **_LEASE_CLEARED,
            )
            .returning(*_JOB_COLUMNS)
        )

    @functools.cached_property
    def _complete_counted_sql(self) -> sa.Executable:
        return self._counted(self._complete_plain_sql, RunTally.SUCCEEDED)

    def _complete_params(self, completion: Completion) -> dict[str, Any]:
        return {
            "p_job_id": completion.job_id,
            "p_lease_token": completion.lease_token,
            "p_now": self.clock(),
            "p_result": completion.result,
            **self._lease_params(),
        }

    async def job_complete(self, completion: Completion) -> Job:
        async with self._single_change() as conn:
            rows = await self._change_jobs(
                conn,
                self._complete_counted_sql,
                self._complete_params(completion),
                RunTally.SUCCEEDED,
            )
            if not rows:
                await self._raise_lease_problem(conn, completion.job_id, completion.lease_token)
        return _job(rows[0])

    async def job_fail(self, failure: Failure) -> FailOutcome:
        tally = RunTally()
        async with self.engine.begin() as conn:
            outcome = await self._fail(conn, failure, tally)
            await tally.apply(conn)
        if outcome.will_retry:
            self._on_jobs_available()
        return outcome

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
        now = self.clock()
        noted = {"last_error": reason[:MAX_ERROR_LENGTH]} if reason else {}
        statement = (
            sa.update(q)
            .where(*self._lease_held(job_id, lease_token))
            .values(
                status=JobStatus.PENDING.value,
                attempts=sa.case((q.c.attempts > 0, q.c.attempts - 1), else_=0),
                scheduled_at=(now + delay) if delay else None,
                updated_at=now,
                **noted,
                **_LEASE_CLEARED,
            )
            .returning(*_JOB_COLUMNS)
        )
        async with self.engine.begin() as conn:
            rows = await self._change_jobs(
                conn,
                self._counted(statement, RunTally.RELEASED),
                self._lease_params(),
                RunTally.RELEASED,
            )
            if not rows:
                await self._raise_lease_problem(conn, job_id, lease_token)
            await self._announce(conn)
        self._on_jobs_available()
        return _job(rows[0])

    async def results_report(self, results: Sequence[Completion | Failure]) -> list[ResultAck]:
        """Applies many results in one transaction; a refused result does not stop the others.

        Run counts are added up and written last, in run order, so that this transaction, like
        every other, takes its job locks before its run locks: no deadlock with the reaper.
        """
        acks: list[ResultAck] = []
        retried = False
        tally = RunTally()
        async with self.engine.begin() as conn:
            completed = await self._complete_many(conn, results)
            for result in results:
                try:
                    if isinstance(result, Completion) and completed is not None:
                        job = completed.get(result.job_id) or await self._no_lease(conn, result)
                        tally.add(job.worker_run_id, RunTally.SUCCEEDED)
                    elif isinstance(result, Completion):
                        job = await self._complete(conn, result, tally)
                    else:
                        outcome = await self._fail(conn, result, tally)
                        job = outcome.job
                        retried = retried or outcome.will_retry
                except QueueError as exc:
                    acks.append(ResultAck(job_id=result.job_id, error=exc))
                else:
                    acks.append(ResultAck(job_id=result.job_id, job=job))
            await tally.apply(conn)
        if retried:
            self._on_jobs_available()
        return acks

    @functools.cached_property
    def _complete_many_sql(self) -> sa.Update:
        """Every completion of a report in one UPDATE ... FROM unnest(ids, tokens, results)."""
        now = sa.bindparam("p_now", type_=UtcDateTime())
        reported = (
            sa.func.unnest(
                sa.bindparam("p_job_ids", type_=postgresql.ARRAY(sa.Uuid())),
                sa.bindparam("p_lease_tokens", type_=postgresql.ARRAY(sa.Uuid())),
                sa.bindparam("p_results", type_=postgresql.ARRAY(sa.Text())),
            )
            .table_valued(
                sa.column("job_id", sa.Uuid()),
                sa.column("lease_token", sa.Uuid()),
                sa.column("result", sa.Text()),
            )
            .render_derived(name="reported")
        )
        return (
            sa.update(q)
            .where(*self._lease_held(reported.c.job_id, reported.c.lease_token))
            .values(
                status=JobStatus.SUCCEEDED.value,
                completed_at=now,
                updated_at=now,
                last_error=None,
                result=sa.cast(reported.c.result, postgresql.JSONB()),
                **_LEASE_CLEARED,
            )
            .returning(*_JOB_COLUMNS)
        )

    async def _complete_many(
        self, conn: AsyncConnection, results: Sequence[Completion | Failure]
    ) -> dict[uuid.UUID, Job] | None:
        """On PostgreSQL, applies every completion at once; the jobs it changed, by id.

        None elsewhere: SQLite completes them one by one (`_complete`).
        """
        if not self.is_postgres:
            return None
        completions = [r for r in results if isinstance(r, Completion)]
        if not completions:
            return {}
        params = {
            "p_now": self.clock(),
            "p_job_ids": [c.job_id for c in completions],
            "p_lease_tokens": [c.lease_token for c in completions],
            "p_results": [json.dumps(c.result) for c in completions],
            **self._lease_params(),
        }
        rows = (await conn.execute(self._complete_many_sql, params)).mappings().all()
        return {row["id"]: _job(row) for row in rows}

    async def _no_lease(self, conn: AsyncConnection, completion: Completion) -> Job:
        """For a completion the batch update refused: raises why (no job, or no lease)."""
        await self._raise_lease_problem(conn, completion.job_id, completion.lease_token)

    async def _complete(
        self, conn: AsyncConnection, completion: Completion, tally: RunTally
    ) -> Job:
        row = (
            (await conn.execute(self._complete_plain_sql, self._complete_params(completion)))
            .mappings()
            .first()
        )
        if row is None:
            await self._raise_lease_problem(conn, completion.job_id, completion.lease_token)
        job = _job(row)
        tally.add(job.worker_run_id, RunTally.SUCCEEDED)
        return job

    @contextlib.asynccontextmanager
    async def _single_change(self) -> AsyncIterator[AsyncConnection]:
        """A connection for a change that is one statement on PostgreSQL.

        Autocommit spares the BEGIN and COMMIT round trips, a third of the hot path's cost;
        one statement is atomic by itself. SQLite takes more than one statement for the same
        change (no data-modifying CTEs), so it gets a transaction.
        """
        if self.is_postgres:
            async with self.engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                yield conn
        else:
            async with self.engine.begin() as conn:
                yield conn

    def _counted(self, update: sa.Update, increments: dict[str, int]) -> sa.Executable:
        """On PostgreSQL, `update` (a job UPDATE ... RETURNING) and the worker-run counts it
        owes as one statement: the update is a data-modifying CTE and the runs are updated from
        its RETURNING rows. Elsewhere `update` itself; `_change_jobs` then counts separately.
        """
        if not self.is_postgres:
            return update
        changed = update.cte("changed")
        per_run = (
            sa.select(changed.c.worker_run_id, sa.func.count().label("jobs"))
            .where(changed.c.worker_run_id.is_not(None))
            .group_by(changed.c.worker_run_id)
            .subquery("per_run")
        )
        counted = (
            sa.update(runs)
            .where(runs.c.id == per_run.c.worker_run_id)
            .values(
                {runs.c[name]: runs.c[name] + per_run.c.jobs * n for name, n in increments.items()}
            )
            .cte("counted")
        )
        return sa.select(changed).add_cte(counted)

    async def _change_jobs(
        self,
        conn: AsyncConnection,
        statement: sa.Executable,
        params: dict[str, Any],
        increments: dict[str, int],
    ) -> Sequence[sa.RowMapping]:
        """Runs a statement made by `_counted` and makes sure the run counts are written."""
        rows = (await conn.execute(statement, params)).mappings().all()
        if not self.is_postgres:
            tally = RunTally()
            for row in rows:
                tally.add(row["worker_run_id"], increments)
            await tally.apply(conn)
        return rows

    async def _fail(self, conn: AsyncConnection, failure: Failure, tally: RunTally) -> FailOutcome:
        # Lock the row, decide in Python, write: the decision needs attempts and the error list.
        current = (
            (
                await conn.execute(
                    sa.select(q.c.attempts, q.c.max_attempts, q.c.errors, q.c.worker_id)
                    .where(*self._lease_held(failure.job_id, failure.lease_token))
                    .with_for_update(),
                    self._lease_params(),
                )
            )
            .mappings()
            .first()
        )
        if current is None:
            await self._raise_lease_problem(conn, failure.job_id, failure.lease_token)
        now = self.clock()
        decision = decide_failure(
            attempts=current["attempts"],
            max_attempts=current["max_attempts"],
            permanent=failure.permanent,
            now=now,
            policy=self.retry_policy,
            retry_after=failure.retry_after,
        )
        errors = [
            *(current["errors"] or []),
            _error_entry(
                attempt=current["attempts"],
                error=failure.error,
                at=now,
                worker_id=current["worker_id"],
                permanent=failure.permanent,
            ),
        ]
        values: dict[str, Any] = {
            "last_error": failure.error[:MAX_ERROR_LENGTH],
            "errors": errors,
            "updated_at": now,
            **_LEASE_CLEARED,
        }
        if decision.retry:
            values |= {"status": JobStatus.PENDING.value, "scheduled_at": decision.retry_at}
        else:
            values |= {"status": JobStatus.FAILED.value, "completed_at": now}
        row = (
            (
                await conn.execute(
                    sa.update(q)
                    .where(q.c.id == failure.job_id)
                    .values(**values)
                    .returning(*_JOB_COLUMNS)
                )
            )
            .mappings()
            .one()
        )
        job = _job(row)
        tally.add(job.worker_run_id, RunTally.FAILED)
        if decision.retry:
            await self._announce(conn)
        return FailOutcome(job=job, will_retry=decision.retry)

    async def _raise_lease_problem(
        self, conn: AsyncConnection, job_id: uuid.UUID, lease_token: uuid.UUID
    ) -> NoReturn:
        """Says why a lease-guarded change matched no row: no job, a lease that ran out, or a
        token that is not the job's current one."""
        row = (
            (
                await conn.execute(
                    sa.select(
                        q.c.status,
                        q.c.lease_token,
                        q.c.lease_expires_at,
                        self._lease_clock.label("lease_now"),
                    ).where(q.c.id == job_id),
                    self._lease_params(),
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise JobNotFound(f"job {job_id} not found")
        if row["status"] == JobStatus.PROCESSING.value and row["lease_token"] == lease_token:
            # The token still matches, so the guard refused the change for the expiry alone.
            raise LeaseExpired(
                f"job {job_id}: the lease expired at {row['lease_expires_at'].isoformat()} "
                f"(database time {row['lease_now'].isoformat()}) and is no longer held, so "
                "this worker must not extend it or report on the job"
            )
        raise LeaseLost(
            f"job {job_id} is {row['status']} and the lease token does not match: this lease "
            "is no longer held (it expired and the job was recovered or taken over by another "
            "worker), so this worker must not report on it"
        )

    # -- recovery -----------------------------------------------------------------------------

    async def jobs_recover(self, *, started_before: datetime | None = None) -> RecoveredJobs:
        """Recovers processing jobs whose lease expired (or that started before a threshold).

        They go back to pending after backoff while attempts remain, else to failed with an
        error saying the worker was lost. Rows another transaction holds are skipped; the next
        pass gets them. Expiry is judged by the lease clock, as every lease check is.
        """
        now = self.clock()
        stuck = q.c.lease_expires_at <= self._lease_clock
        if started_before is not None:
            stuck = sa.or_(stuck, q.c.started_at < started_before)
        requeued: list[uuid.UUID] = []
        failed: list[uuid.UUID] = []
        tally = RunTally()
        async with self.engine.begin() as conn:
            rows = (
                (
                    await conn.execute(
                        sa.select(
                            q.c.id,
                            q.c.attempts,
                            q.c.max_attempts,
                            q.c.errors,
                            q.c.worker_id,
                            q.c.worker_run_id,
                            q.c.lease_expires_at,
                            q.c.started_at,
                            self._lease_clock.label("lease_now"),
                        )
                        .where(q.c.status == JobStatus.PROCESSING.value, stuck)
                        .order_by(q.c.lease_expires_at)
                        .limit(RECOVER_BATCH)
                        .with_for_update(skip_locked=True),
                        self._lease_params(),
                    )
                )
                .mappings()
                .all()
            )
            for row in rows:
                if row["lease_expires_at"] <= row["lease_now"]:
                    error = lost_worker_error(row["lease_expires_at"], row["worker_id"])
                else:
                    error = (
                        f"worker lost: processing since {row['started_at'].isoformat()}, past "
                        f"the stale threshold (worker {row['worker_id']})"
                    )
                decision = decide_failure(
                    attempts=row["attempts"],
                    max_attempts=row["max_attempts"],
                    permanent=False,
                    now=now,
                    policy=self.retry_policy,
                )
                values: dict[str, Any] = {
                    "last_error": error,
                    "errors": [
                        *(row["errors"] or []),
                        _error_entry(
                            attempt=row["attempts"],
                            error=error,
                            at=now,
                            worker_id=row["worker_id"],
                            permanent=False,
                        ),
                    ],
                    "updated_at": now,
                    **_LEASE_CLEARED,
                }
                if decision.retry:
                    values |= {"status": JobStatus.PENDING.value, "scheduled_at": decision.retry_at}
                    requeued.append(row["id"])
                else:
                    values |= {"status": JobStatus.FAILED.value, "completed_at": now}
                    failed.append(row["id"])
                await conn.execute(sa.update(q).where(q.c.id == row["id"]).values(**values))
                tally.add(row["worker_run_id"], RunTally.FAILED)
            await tally.apply(conn)
            if requeued:
                await self._announce(conn)
        if requeued:
            self._on_jobs_available()
        return RecoveredJobs(requeued=requeued, failed=failed)

    async def jobs_prune(self, *, finished_before: datetime, limit: int = 5000) -> int:
        """Deletes finished jobs older than the retention period, a bounded batch at a time."""
        finished = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value)
        victims = (
            sa.select(q.c.id)
            .where(q.c.status.in_(finished), q.c.completed_at < finished_before)
            .limit(limit)
            .scalar_subquery()
        )
        async with self.engine.begin() as conn:
            result = await conn.execute(sa.delete(q).where(q.c.id.in_(victims)))
        return result.rowcount or 0

    # -- worker runs --------------------------------------------------------------------------

    async def worker_run_start(self, worker_id: str, metadata: dict[str, Any]) -> WorkerRun:
        now = self.clock()
        async with self.engine.begin() as conn:
            row = (
                (
                    await conn.execute(
                        sa.insert(runs)
                        .values(
                            id=uuid.uuid4(),
                            worker_id=worker_id,
                            status=WorkerRunStatus.RUNNING.value,
                            metadata=metadata,
                            started_at=now,
                        )
                        .returning(*runs.c)
                    )
                )
                .mappings()
                .one()
            )
        return _worker_run(row)

    async def worker_run_finish(
        self,
        run_id: uuid.UUID,
        status: WorkerRunStatus,
        notes: str | None,
        metadata: dict[str, Any],
    ) -> WorkerRun:
        now = self.clock()
        async with self.engine.begin() as conn:
            current = (
                (
                    await conn.execute(
                        sa.select(runs.c.status, runs.c.metadata)
                        .where(runs.c.id == run_id)
                        .with_for_update()
                    )
                )
                .mappings()
                .first()
            )
            if current is None:
                raise WorkerRunNotFound(f"worker run {run_id} not found")
            if current["status"] != WorkerRunStatus.RUNNING.value:
                raise IllegalTransition(
                    f"worker run {run_id} already finished ({current['status']})"
                )
            row = (
                (
                    await conn.execute(
                        sa.update(runs)
                        .where(runs.c.id == run_id)
                        .values(
                            status=status.value,
                            notes=notes,
                            metadata={**(current["metadata"] or {}), **metadata},
                            finished_at=now,
                        )
                        .returning(*runs.c)
                    )
                )
                .mappings()
                .one()
            )
        return _worker_run(row)

    # -- schedules ----------------------------------------------------------------------------
    #
    # The scheduler's state, one row per account in `sync_schedules`. Each batch is one
    # transaction that locks the rows it changes (`FOR UPDATE SKIP LOCKED` on PostgreSQL), so
    # even two schedulers running at once, as during a leader change, never serve a slot twice:
    # a row the other one holds is skipped, and a row it has just advanced is no longer due.

    async def schedule_get(self, account_id: uuid.UUID) -> SyncSchedule:
        async with self.engine.connect() as conn:
            return await self._schedule_get(conn, account_id)

    async def _schedule_get(self, conn: AsyncConnection, account_id: uuid.UUID) -> SyncSchedule:
        row = (
            (
                await conn.execute(
                    sa.select(gmb_accounts.c.is_active, *_SCHEDULE_COLUMNS)
                    .select_from(
                        gmb_accounts.outerjoin(sched, sched.c.account_id == gmb_accounts.c.id)
                    )
                    .where(gmb_accounts.c.id == account_id)
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise AccountNotFound(f"account {account_id} not found")
        return _schedule(account_id, row)

    async def schedule_set(
        self, account_id: uuid.UUID, change: ScheduleChange, defaults: ScheduleDefaults
    ) -> SyncSchedule:
        """Changes an account's overrides or opt-out; its future slots follow a new interval.

        A slot laid out with period P under the old interval moves so that its distance from now
        scales by new/old, as the leader's rescale does, so the change shows at once.
        """
        now = self.clock()
        async with self.engine.begin() as conn:
            exists = (
                await conn.execute(
                    sa.select(gmb_accounts.c.id).where(gmb_accounts.c.id == account_id)
                )
            ).first()
            if exists is None:
                raise AccountNotFound(f"account {account_id} not found")
            await conn.execute(
                self._insert_schedule_if_missing,
                [{"account_id": account_id, "created_at": now, "updated_at": now}],
            )
            row = (
                (
                    await conn.execute(
                        sa.select(sched).where(sched.c.account_id == account_id).with_for_update()
                    )
                )
                .mappings()
                .one()
            )
            values: dict[str, Any] = {"updated_at": now}
            if change.enabled is not None:
                values["enabled"] = change.enabled
            slots: dict[str, datetime | None] = {
                "incremental": row["next_incremental_at"],
                "full": row["next_full_at"],
            }
            for kind, interval, default in (
                ("incremental", change.incremental_interval, defaults.incremental_interval),
                ("full", change.full_interval, defaults.full_interval),
            ):
                if interval is None:
                    continue
                old = row[f"{kind}_interval_seconds"]
                new = None if interval == DEFAULT_INTERVAL else round(interval.total_seconds())
                values[f"{kind}_interval_seconds"] = new
                period = row[f"{kind}_period_seconds"]
                slot = slots[kind]
                if period is None or slot is None:
                    continue  # not laid out yet: the scheduler places it with the new interval
                old_base = old or round(default.total_seconds())
                new_base = new or round(default.total_seconds())
                new_period = max(1, round(period * new_base / old_base))
                slots[kind] = rescale(slot, now, period, new_period)
                values[f"{kind}_period_seconds"] = new_period
                values[f"next_{kind}_at"] = slots[kind]
            if slots["incremental"] is not None and slots["full"] is not None:
                values["next_due_at"] = _next_due(
                    row["next_due_at"], slots["incremental"], slots["full"], now
                )
            await conn.execute(
                sa.update(sched).where(sched.c.account_id == account_id).values(values)
            )
            return await self._schedule_get(conn, account_id)

    @functools.cached_property
    def _insert_schedule_if_missing(self) -> sa.Insert:
        insert = postgresql.insert(sched) if self.is_postgres else sqlite.insert(sched)
        return insert.on_conflict_do_nothing(index_elements=[sched.c.account_id])

    async def schedule_demand(self, defaults: ScheduleDefaults, *, since: datetime) -> list[Demand]:
        """Every scheduled account's intervals and the Google calls its syncs are expected to make.

        The calls are `result.api_calls` of the account's newest succeeded job of each sync type
        finished since `since`; None when there is none (or it holds no usable number).
        """
        calls_of = sa.func.row_number().over(
            partition_by=(q.c.account_id, q.c.sync_type),
            order_by=(q.c.completed_at.desc(), q.c.id.desc()),
        )
        ranked = (
            sa.select(
                q.c.account_id,
                q.c.sync_type,
                q.c.result["api_calls"].label("api_calls"),
                calls_of.label("newest"),
            )
            .where(q.c.status == JobStatus.SUCCEEDED.value, q.c.completed_at >= since)
            .subquery()
        )
        async with self.engine.connect() as conn:
            calls: dict[tuple[uuid.UUID, str], int] = {}
            for account_id, sync_type, api_calls in await conn.execute(
                sa.select(ranked.c.account_id, ranked.c.sync_type, ranked.c.api_calls).where(
                    ranked.c.newest == 1
                )
            ):
                count = _call_count(api_calls)
                if count is not None:
                    calls[(account_id, sync_type)] = count
            accounts = await conn.execute(
                sa.select(
                    gmb_accounts.c.id,
                    sched.c.incremental_interval_seconds,
                    sched.c.full_interval_seconds,
                )
                .select_from(gmb_accounts.outerjoin(sched, sched.c.account_id == gmb_accounts.c.id))
                .where(
                    gmb_accounts.c.is_active.is_(True),
                    sa.or_(sched.c.enabled.is_(None), sched.c.enabled.is_(True)),
                )
            )
            return [
                Demand(
                    incremental_interval=_seconds(incremental, defaults.incremental_interval),
                    full_interval=_seconds(full, defaults.full_interval),
                    incremental_calls=calls.get((account_id, SyncType.INCREMENTAL.value)),
                    full_calls=calls.get((account_id, SyncType.FULL.value)),
                )
                for account_id, incremental, full in accounts
            ]

    @staticmethod
    def _unplaced() -> sa.Select[Any]:
        """Active accounts the scheduler has not laid out yet, and has not been told to skip."""
        return (
            sa.select(
                gmb_accounts.c.id,
                sched.c.incremental_interval_seconds,
                sched.c.full_interval_seconds,
            )
            .select_from(gmb_accounts.outerjoin(sched, sched.c.account_id == gmb_accounts.c.id))
            .where(
                gmb_accounts.c.is_active.is_(True),
                sa.or_(
                    sched.c.account_id.is_(None),
                    sa.and_(sched.c.enabled.is_(True), sched.c.next_incremental_at.is_(None)),
                ),
            )
        )

    async def schedule_unplaced_count(self) -> int:
        unplaced = self._unplaced().subquery()
        async with self.engine.connect() as conn:
            return (
                await conn.execute(sa.select(sa.func.count()).select_from(unplaced))
            ).scalar_one()

    async def schedule_place(
        self,
        *,
        start: datetime,
        count: int,
        position: int,
        after: uuid.UUID | None,
        limit: int,
        defaults: ScheduleDefaults,
        stretch: float,
    ) -> tuple[int, uuid.UUID | None]:
        """Lays out the next `limit` unplaced accounts (in account id order, after `after`) as
        positions `position`, `position + 1`... of a round of `count` starting at `start`.

        Returns how many accounts were read and the last one's id (None when there were none).
        A row the scheduler already placed, or a concurrent SetSyncSchedule created and placed,
        is left alone.
        """
        statement = self._unplaced().order_by(gmb_accounts.c.id).limit(limit)
        if after is not None:
            statement = statement.where(gmb_accounts.c.id > after)
        now = self.clock()
        async with self.engine.begin() as conn:
            rows = (await conn.execute(statement)).all()
            values = []
            for index, (account_id, incremental, full) in enumerate(rows):
                incremental_period = period_seconds(
                    _seconds(incremental, defaults.incremental_interval), stretch
                )
                full_period = period_seconds(_seconds(full, defaults.full_interval), stretch)
                slots = place(
                    min(position + index, count - 1),
                    count,
                    start,
                    timedelta(seconds=incremental_period),
                    timedelta(seconds=full_period),
                )
                values.append(
                    {
                        "account_id": account_id,
                        "enabled": True,
                        "next_incremental_at": slots.incremental,
                        "next_full_at": slots.full,
                        "next_due_at": slots.due,
                        "incremental_period_seconds": incremental_period,
                        "full_period_seconds": full_period,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
            if values:
                await conn.execute(self._upsert_placement, values)
        return len(rows), (rows[-1][0] if rows else None)

    @functools.cached_property
    def _upsert_placement(self) -> sa.Insert:
        insert = postgresql.insert(sched) if self.is_postgres else sqlite.insert(sched)
        return insert.on_conflict_do_update(
            index_elements=[sched.c.account_id],
            set_={
                name: insert.excluded[name]
                for name in (
                    "next_incremental_at",
                    "next_full_at",
                    "next_due_at",
                    "incremental_period_seconds",
                    "full_period_seconds",
                    "updated_at",
                )
            },
            where=sa.and_(sched.c.enabled.is_(True), sched.c.next_incremental_at.is_(None)),
        )

    async def schedule_regrid(
        self,
        *,
        now: datetime,
        defaults: ScheduleDefaults,
        stretch: float,
        after: uuid.UUID | None,
        limit: int,
    ) -> tuple[int, int, uuid.UUID | None]:
        """Rescales the slots of laid-out accounts whose period no longer matches the plan.

        Reads `limit` rows in account id order after `after`; returns rows read, rows changed
        and the last id read. A row is changed only when its period is off by more than
        REGRID_TOLERANCE, so rounding never makes the leader rewrite every row.
        """
        statement = (
            sa.select(sched)
            .where(sched.c.next_incremental_at.is_not(None))
            .order_by(sched.c.account_id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        if after is not None:
            statement = statement.where(sched.c.account_id > after)
        async with self.engine.begin() as conn:
            rows = (await conn.execute(statement)).mappings().all()
            changes = []
            for row in rows:
                change: dict[str, Any] = {}
                for kind, default in (
                    ("incremental", defaults.incremental_interval),
                    ("full", defaults.full_interval),
                ):
                    period = row[f"{kind}_period_seconds"]
                    wanted = period_seconds(
                        _seconds(row[f"{kind}_interval_seconds"], default), stretch
                    )
                    if period is not None and abs(wanted - period) <= period * REGRID_TOLERANCE:
                        continue
                    slot = row[f"next_{kind}_at"]
                    change[f"b_{kind}_period"] = wanted
                    change[f"b_next_{kind}"] = rescale(slot, now, period or wanted, wanted)
                if change:
                    incremental = change.get("b_next_incremental", row["next_incremental_at"])
                    full = change.get("b_next_full", row["next_full_at"])
                    changes.append(
                        {
                            "b_account_id": row["account_id"],
                            "b_next_incremental": incremental,
                            "b_next_full": full,
                            "b_next_due": _next_due(row["next_due_at"], incremental, full, now),
                            "b_incremental_period": change.get(
                                "b_incremental_period", row["incremental_period_seconds"]
                            ),
                            "b_full_period": change.get(
                                "b_full_period", row["full_period_seconds"]
                            ),
                            "b_now": now,
                        }
                    )
            if changes:
                await conn.execute(self._regrid_sql, changes)
        return len(rows), len(changes), (rows[-1]["account_id"] if rows else None)

    @functools.cached_property
    def _regrid_sql(self) -> sa.Update:
        return (
            sa.update(sched)
            .where(sched.c.account_id == sa.bindparam("b_account_id", type_=sa.Uuid()))
            .values(
                next_incremental_at=sa.bindparam("b_next_incremental", type_=UtcDateTime()),
                next_full_at=sa.bindparam("b_next_full", type_=UtcDateTime()),
                next_due_at=sa.bindparam("b_next_due", type_=UtcDateTime()),
                incremental_period_seconds=sa.bindparam("b_incremental_period", type_=sa.Integer()),
                full_period_seconds=sa.bindparam("b_full_period", type_=sa.Integer()),
                updated_at=sa.bindparam("b_now", type_=UtcDateTime()),
            )
        )

    @staticmethod
    def _scheduled(statement: sa.Select[Any]) -> sa.Select[Any]:
        """Only rows of active accounts that have not opted out."""
        return statement.join(gmb_accounts, gmb_accounts.c.id == sched.c.account_id).where(
            sched.c.enabled.is_(True), gmb_accounts.c.is_active.is_(True)
        )

    @staticmethod
    def _after(cursor: tuple[datetime, uuid.UUID] | None) -> sa.ColumnElement[bool]:
        if cursor is None:
            return sa.true()
        due, account_id = cursor
        return sa.or_(
            sched.c.next_due_at > due,
            sa.and_(sched.c.next_due_at == due, sched.c.account_id > account_id),
        )

    async def schedule_catch_up(
        self,
        *,
        now: datetime,
        missed_before: datetime,
        cursor: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> tuple[int, tuple[datetime, uuid.UUID] | None]:
        """Moves slots missed before `missed_before` to the first point of their grid from now.

        A full slot waiting for a processing job (see `schedule_enqueue_due`) is not missed: its
        row's `next_due_at` says when it was last tried. Returns the rows moved and where the
        scan goes on.
        """
        statement = (
            self._scheduled(sa.select(sched))
            .where(sched.c.next_due_at < missed_before, self._after(cursor))
            .order_by(sched.c.next_due_at, sched.c.account_id)
            .limit(limit)
            .with_for_update(of=sched, skip_locked=True)
        )
        async with self.engine.begin() as conn:
            rows = (await conn.execute(statement)).mappings().all()
            changes = []
            for row in rows:
                moved = {}
                for kind in ("incremental", "full"):
                    slot = row[f"next_{kind}_at"]
                    period = timedelta(seconds=row[f"{kind}_period_seconds"])
                    moved[kind] = catch_up(slot, period, now) if slot < missed_before else slot
                changes.append(
                    {
                        "b_account_id": row["account_id"],
                        "b_next_incremental": moved["incremental"],
                        "b_next_full": moved["full"],
                        "b_next_due": min(moved.values()),
                        "b_incremental_period": row["incremental_period_seconds"],
                        "b_full_period": row["full_period_seconds"],
                        "b_now": now,
                    }
                )
            if changes:
                await conn.execute(self._regrid_sql, changes)
        last = (rows[-1]["next_due_at"], rows[-1]["account_id"]) if rows else None
        return len(rows), last

    async def schedule_enqueue_due(
        self,
        *,
        now: datetime,
        horizon: datetime,
        priority: int,
        max_attempts: int,
        cursor: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> DueBatch:
        """Enqueues the syncs of up to `limit` accounts with a slot at or before `horizon`.

        The jobs go through the enqueue path every client uses, so an account with a queued job
        gets no second one (a due full sync upgrades a pending incremental job), and the slot
        moves on in the same transaction as the enqueue: a crash loses or repeats neither. The
        one exception is a full slot that meets a processing incremental job, which cannot be
        upgraded: that account's slots stay where they are and its `next_due_at` becomes now, so
        the next tick tries again and the catch-up does not mistake the wait for a missed slot.
        """
        statement = (
            self._scheduled(sa.select(sched))
            .where(sched.c.next_due_at <= horizon, self._after(cursor))
            .order_by(sched.c.next_due_at, sched.c.account_id)
            .limit(limit)
            .with_for_update(of=sched, skip_locked=True)
        )
        enqueued = duplicates = deferred = 0
        created = False
        async with self.engine.begin() as conn:
            rows = (await conn.execute(statement)).mappings().all()
            if not rows:
                return DueBatch(rows=0, enqueued=0, duplicates=0, deferred=0, cursor=cursor)
            # Whoever deactivates an account waits for this share lock, and this transaction
            # sees a deactivation committed before it: no job for a deactivated account.
            owners = dict(
                (
                    await conn.execute(
                        sa.select(gmb_accounts.c.id, gmb_accounts.c.user_id)
                        .where(
                            gmb_accounts.c.id.in_([r["account_id"] for r in rows]),
                            gmb_accounts.c.is_active.is_(True),
                        )
                        .with_for_update(read=True)
                    )
                ).all()
            )
            services = {}
            requests = []
            for row in rows:
                if row["account_id"] not in owners:
                    continue
                service = serve(
                    Slots(incremental=row["next_incremental_at"], full=row["next_full_at"]),
                    timedelta(seconds=row["incremental_period_seconds"]),
                    timedelta(seconds=row["full_period_seconds"]),
                    horizon,
                )
                services[row["account_id"]] = service
                requests.append(
                    EnqueueRequest(
                        account_id=row["account_id"],
                        sync_type=service.sync_type,
                        priority=priority,
                        scheduled_at=service.scheduled_at,
                        max_attempts=max_attempts,
                        metadata={
                            "source": "scheduler",
                            "slot": service.scheduled_at.isoformat(),
                        },
                    )
                )
            results, created = await self._enqueue_in(conn, requests, owners, now)
            changes = []
            waiting = []
            for request, result in zip(requests, results, strict=True):
                service = services[request.account_id]
                if (
                    result.duplicate
                    and service.sync_type is SyncType.FULL
                    and result.job.sync_type is not SyncType.FULL
                ):
                    deferred += 1
                    waiting.append({"b_account_id": request.account_id, "b_now": now})
                    continue
                if result.duplicate:
                    duplicates += 1
                else:
                    enqueued += 1
                changes.append(
                    {
                        "b_account_id": request.account_id,
                        "b_next_incremental": service.following.incremental,
                        "b_next_full": service.following.full,
                        "b_next_due": service.following.due,
                        "b_job_id": result.job.id,
                        "b_sync_type": result.job.sync_type.value,
                        "b_now": now,
                    }
                )
            if changes:
                await conn.execute(self._advance_sql, changes)
            if waiting:
                await conn.execute(self._wait_sql, waiting)
        if created:
            self._on_jobs_available()
        return DueBatch(
            rows=len(rows),
            enqueued=enqueued,
            duplicates=duplicates,
            deferred=deferred,
            cursor=(rows[-1]["next_due_at"], rows[-1]["account_id"]),
        )

    @functools.cached_property
    def _wait_sql(self) -> sa.Update:
        now = sa.bindparam("b_now", type_=UtcDateTime())
        return (
            sa.update(sched)
            .where(sched.c.account_id == sa.bindparam("b_account_id", type_=sa.Uuid()))
            .values(next_due_at=now, updated_at=now)
        )

    @functools.cached_property
    def _advance_sql(self) -> sa.Update:
        now = sa.bindparam("b_now", type_=UtcDateTime())
        return (
            sa.update(sched)
            .where(sched.c.account_id == sa.bindparam("b_account_id", type_=sa.Uuid()))
            .values(
                next_incremental_at=sa.bindparam("b_next_incremental", type_=UtcDateTime()),
                next_full_at=sa.bindparam("b_next_full", type_=UtcDateTime()),
                next_due_at=sa.bindparam("b_next_due", type_=UtcDateTime()),
                last_enqueued_at=now,
                last_job_id=sa.bindparam("b_job_id", type_=sa.Uuid()),
                last_sync_type=sa.bindparam("b_sync_type", type_=sa.Text()),
                updated_at=now,
            )
        )

    # -- diagnostics --------------------------------------------------------------------------

    async def diagnostics_snapshot(
        self,
        *,
        stale_after: timedelta,
        recent_limit: int,
        api_disabled_window: timedelta = timedelta(minutes=15),
    ) -> dict[str, Any]:
        """The raw figures of GetDiagnostics, read in one snapshot of the database."""
        now = self.clock()
        hour_ago, week_ago, day_ago = (
            now - timedelta(hours=1),
            now - timedelta(days=7),
            now - timedelta(days=1),
        )
        finished_in = sa.and_(
            q.c.status.in_((JobStatus.SUCCEEDED.value, JobStatus.FAILED.value)),
            q.c.completed_at.is_not(None),
        )
        async with self.engine.connect() as conn:
            if self.is_postgres:
                await conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            stats = await self._stats(conn, Caller.everyone())
            oldest_ready = (
                await conn.execute(
                    sa.select(
                        sa.func.min(sa.func.coalesce(q.c.scheduled_at, q.c.created_at))
                    ).where(
                        q.c.status == JobStatus.PENDING.value,
                        sa.or_(q.c.scheduled_at.is_(None), q.c.scheduled_at <= now),
                    )
                )
            ).scalar_one_or_none()
            outcome_counts = await conn.execute(
                sa.select(
                    q.c.status,
                    sa.func.count().filter(q.c.completed_at >= hour_ago),
                    sa.func.count(),
                )
                .where(finished_in, q.c.completed_at >= week_ago)
                .group_by(q.c.status)
            )
            last_hour: dict[str, int] = {}
            last_week: dict[str, int] = {}
            for status, in_hour, in_week in outcome_counts:
                last_hour[status], last_week[status] = in_hour, in_week
            durations = [
                (completed - started).total_seconds()
                for started, completed in await conn.execute(
                    sa.select(q.c.started_at, q.c.completed_at)
                    .where(
                        q.c.status == JobStatus.SUCCEEDED.value,
                        q.c.completed_at >= week_ago,
                        q.c.started_at.is_not(None),
                    )
                    .order_by(q.c.completed_at.desc())
                    .limit(DURATION_SAMPLE)
                )
            ]
            stale_rows = (
                (
                    await conn.execute(
                        sa.select(*_JOB_COLUMNS)
                        .where(
                            q.c.status == JobStatus.PROCESSING.value,
                            q.c.started_at < now - stale_after,
                        )
                        .order_by(q.c.started_at)
                        .limit(max(recent_limit, 1) * 10)
                    )
                )
                .mappings()
                .all()
            )
            failure_rows = (
                (
                    await conn.execute(
                        sa.select(*_JOB_COLUMNS)
                        .where(q.c.status == JobStatus.FAILED.value)
                        .order_by(q.c.completed_at.desc())
                        .limit(recent_limit)
                    )
                )
                .mappings()
                .all()
            )
            run_rows = (
                (
                    await conn.execute(
                        sa.select(runs).order_by(runs.c.started_at.desc()).limit(recent_limit)
                    )
                )
                .mappings()
                .all()
            )
            failed_runs = (
                await conn.execute(
                    sa.select(sa.func.count()).where(
                        runs.c.status == WorkerRunStatus.FAILED.value, runs.c.started_at >= day_ago
                    )
                )
            ).scalar_one()
            api_disabled = await self._api_disabled(conn, since=now - api_disabled_window)
        return {
            "now": now,
            "stats": stats,
            "oldest_ready_at": oldest_ready,
            "last_hour": last_hour,
            "last_week": last_week,
            "durations": durations,
            "stale_jobs": [_job(r) for r in stale_rows],
            "recent_failures": [_job(r) for r in failure_rows],
            "recent_worker_runs": [_worker_run(r) for r in run_rows],
            "failed_worker_runs_24h": failed_runs,
            "api_disabled": api_disabled,
        }

    async def _api_disabled(self, conn: AsyncConnection, *, since: datetime) -> list[ApiDisabled]:
        """Google APIs SyncService found disabled since `since` (its `api_disabled` rows in
        error_logs), one entry per service, most accounts first."""
        # Grouped in an outer query: with server-side parameters, the JSON key repeated in
        # GROUP BY would be a second parameter, and PostgreSQL a different expression.
        recent = (
            sa.select(
                sa.func.coalesce(error_logs.c.details["service"].as_string(), "").label("service"),
                error_logs.c.details["activation_url"].as_string().label("activation_url"),
                error_logs.c.account_id,
                error_logs.c.created_at,
            )
            .where(error_logs.c.error_type == "api_disabled", error_logs.c.created_at >= since)
            .subquery("recent")
        )
        accounts = sa.func.count(sa.distinct(recent.c.account_id)).label("accounts")
        rows = await conn.execute(
            sa.select(
                recent.c.service,
                accounts,
                sa.func.count(),
                sa.func.max(recent.c.activation_url),
                sa.func.max(recent.c.created_at),
            )
            .group_by(recent.c.service)
            .order_by(accounts.desc(), recent.c.service)
        )
        return [
            ApiDisabled(
                service=name,
                accounts=n_accounts,
                errors=n_errors,
                activation_url=activation_url or "",
                last_seen=last_seen,
            )
            for name, n_accounts, n_errors, activation_url, last_seen in rows
        ]


def percentile(values: Iterable[float], fraction: float) -> float:
    """The `fraction` percentile (0..1) by linear interpolation; 0 for no values."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(fraction * 100) - 1]
