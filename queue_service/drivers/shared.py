"""What both drivers run unchanged: row mapping, error texts, and the statements that read the
same on PostgreSQL and SQLite (SQLAlchemy Core), in `SharedDriver`.

A driver subclasses `SharedDriver` and supplies its lease clock (`_lease_clock`,
`_lease_params`), how it announces ready jobs (`_announce`), its INSERT construct and its
leadership; it writes its own statements for the hot path (enqueue, pick, extend, results,
release).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from queue_service.drivers.base import JobsAvailable, LeaderSession, Moment, SignalTarget
from queue_service.errors import (
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
    LEASED_FIELDS,
    Caller,
    EnqueueRequest,
    EnqueueResult,
    J,
    Job,
    JobRef,
    JobStatus,
    LeasedJob,
    QueuePause,
    RecoveredJobs,
    SyncType,
    WorkerRun,
    WorkerRunStatus,
)
from queue_service.tables import WHOLE_QUEUE, sync_queue, sync_queue_pauses, sync_worker_runs
from service_runtime.database import read_engine

# Error texts are kept whole in logs but bounded in the row.
MAX_ERROR_LENGTH = 4000
# How many expired leases one reaper pass recovers; the next pass takes the rest.
RECOVER_BATCH = 500

q = sync_queue
runs = sync_worker_runs
pauses = sync_queue_pauses
# At most this many ready jobs are counted to wake pickers when a pause ends.
RESUME_WAKE_LIMIT = 1000

LEASE_CLEARED: dict[str, Any] = {"lease_token": None, "lease_expires_at": None}


def status(value: JobStatus) -> sa.ColumnElement[str]:
    """A job status written into the SQL text, never bound: a plan cached for a prepared
    statement can then use the partial indexes whose predicates name a status."""
    return sa.literal_column(f"'{value.value}'", sa.Text())


def lost_worker_error(expired_at: datetime, worker_id: str | None) -> str:
    """The error recorded when a job's lease ran out: its worker is taken to be lost.

    Microseconds are always written, so the text is the same as the one PostgreSQL builds.
    """
    return (
        f"worker lost: lease expired at {expired_at.isoformat(timespec='microseconds')} "
        f"(worker {worker_id})"
    )


def error_entry(
    *, attempt: int, error: str, at: datetime, worker_id: str | None, permanent: bool
) -> dict[str, Any]:
    """One entry of a job's `errors`: a failed attempt."""
    return {
        "attempt": attempt,
        "error": error[:MAX_ERROR_LENGTH],
        "failed_at": at.isoformat(),
        "worker_id": worker_id,
        "permanent": permanent,
    }


# Written out, not built: SQLAlchemy leaves columns unqualified in SQLite's RETURNING, where a
# built correlated subquery would then compare gmb_accounts.id with itself.
ACCOUNT_NAME = sa.literal_column(
    "(SELECT gmb_accounts.account_name FROM gmb_accounts"
    " WHERE gmb_accounts.id = sync_queue.account_id)",
    sa.Text(),
).label("account_name")
JOB_COLUMNS = (*q.c, ACCOUNT_NAME)


def job_from_row(row: Any) -> Job:
    """A `Job` from a row (mapping) holding every column of `sync_queue` and `account_name`."""
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
        fair_key=row["fair_key"],
    )


# The fields of a `LeasedJob` that come from the row as stored; the rest are converted.
_LEASED_AS_STORED = tuple(
    name
    for name in LEASED_FIELDS
    if name not in {"account_name", "sync_type", "status", "trace_context"}
)


def leased_from_row(row: Any) -> LeasedJob:
    """A `LeasedJob` from a row (mapping) holding its fields (`LEASED_FIELDS`)."""
    return LeasedJob(
        **{name: row[name] for name in _LEASED_AS_STORED},
        account_name=row["account_name"] or "",
        sync_type=SyncType(row["sync_type"]),
        status=JobStatus(row["status"]),
        trace_context=row["trace_context"] or {},
    )


def ref_from_row(row: Any) -> JobRef:
    """A `JobRef` from a row (mapping) holding `id`, `account_id` and `status`."""
    return JobRef(id=row["id"], account_id=row["account_id"], status=JobStatus(row["status"]))


def ref_of(job: Job) -> JobRef:
    """The `JobRef` of a full job."""
    return JobRef(id=job.id, account_id=job.account_id, status=job.status)


def leased_of(job: Job) -> LeasedJob:
    """The `LeasedJob` view of a full job."""
    return LeasedJob(**{name: getattr(job, name) for name in LEASED_FIELDS})


def pick_order(job: Job | LeasedJob) -> tuple[int, int, datetime, uuid.UUID]:
    """The pick's order as a sort key: priority DESC, fair_key, created_at, id."""
    return (-job.priority, job.fair_key, job.created_at, job.id)


def fair_key_next(user_id: Any, priority: Any, now: datetime) -> sa.ColumnElement[int]:
    """SQL: the fair key of a user's next job at `priority`: the later of the head of the queue
    there (the first due pending job's key) and one step behind the user's last queued key; 0
    when both are missing. `user_id` and `priority` may be columns of an outer statement (they
    correlate) or values."""
    peer = q.alias("fair_peer")
    pending = peer.c.status == status(JobStatus.PENDING)
    head = (
        sa.select(peer.c.fair_key)
        .where(
            pending,
            peer.c.priority == priority,
            sa.or_(peer.c.scheduled_at.is_(None), peer.c.scheduled_at <= now),
            peer.c.attempts < peer.c.max_attempts,
        )
        .order_by(peer.c.priority.desc(), peer.c.fair_key, peer.c.created_at, peer.c.id)
        .limit(1)
        .scalar_subquery()
    )
    tail = (
        sa.select(sa.func.max(peer.c.fair_key) + 1)
        .where(pending, peer.c.user_id == user_id, peer.c.priority == priority)
        .scalar_subquery()
    )
    head_key = sa.func.coalesce(head, 0)
    tail_key = sa.func.coalesce(tail, 0)
    return sa.case((head_key > tail_key, head_key), else_=tail_key)


def not_paused() -> sa.ColumnElement[bool]:
    """SQL: a job the pick may act on: neither the whole queue nor the job's user is paused."""
    return sa.and_(
        ~sa.exists().where(pauses.c.user_id == WHOLE_QUEUE),
        q.c.user_id.not_in(sa.select(pauses.c.user_id).scalar_subquery()),
    )


def pause_from_row(row: Any) -> QueuePause:
    """A `QueuePause` from a row of `sync_queue_pauses`."""
    return QueuePause(
        user_id=None if row["user_id"] == WHOLE_QUEUE else row["user_id"],
        reason=row["reason"],
        paused_by=row["paused_by"],
        paused_at=row["paused_at"],
    )


def worker_run_from_row(row: Any) -> WorkerRun:
    """A `WorkerRun` from a row of `sync_worker_runs`."""
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


def visible_to(caller: Caller) -> sa.ColumnElement[bool]:
    """Jobs `caller` may see: all of them, or the user's own."""
    if caller.sees_everything:
        return sa.true()
    return q.c.user_id == caller.user_id


async def job_get_visible(conn: AsyncConnection, job_id: uuid.UUID, caller: Caller) -> Job:
    """One job as `caller` sees it; JobNotFound when missing or someone else's."""
    row = (
        (await conn.execute(sa.select(*JOB_COLUMNS).where(q.c.id == job_id, visible_to(caller))))
        .mappings()
        .first()
    )
    if row is None:
        raise JobNotFound(f"job {job_id} not found")
    return job_from_row(row)


def merge_by_account(requests: Sequence[EnqueueRequest]) -> dict[uuid.UUID, EnqueueRequest]:
    """Each account's requests as one, in order of first appearance: the first request, upgraded
    as its successors would upgrade a pending job (to a full sync, to the highest priority, to
    the earliest `scheduled_at`, where unset means now and so wins)."""
    merged: dict[uuid.UUID, EnqueueRequest] = {}
    for request in requests:
        first = merged.get(request.account_id)
        if first is None:
            merged[request.account_id] = request
            continue
        merged[request.account_id] = dataclasses.replace(
            first,
            sync_type=SyncType.FULL
            if SyncType.FULL in (first.sync_type, request.sync_type)
            else first.sync_type,
            priority=max(first.priority, request.priority),
            scheduled_at=None
            if first.scheduled_at is None or request.scheduled_at is None
            else min(first.scheduled_at, request.scheduled_at),
        )
    return merged


def enqueue_results(
    requests: Sequence[EnqueueRequest], inserted: dict[uuid.UUID, J], active: dict[uuid.UUID, J]
) -> list[EnqueueResult[J]]:
    """One result per request: the first request of an account whose job was `inserted` made
    it; every other request is a duplicate of its account's job (inserted or `active`)."""
    results: list[EnqueueResult[J]] = []
    answered: set[uuid.UUID] = set()
    for request in requests:
        account = request.account_id
        job = inserted.get(account)
        if job is not None and account not in answered:
            results.append(EnqueueResult(job=job, duplicate=False))
        else:
            results.append(EnqueueResult(job=job or active[account], duplicate=True))
        answered.add(account)
    return results


def job_values(request: EnqueueRequest, owner: uuid.UUID, now: datetime) -> dict[str, Any]:
    """The row of a new pending job for `request`, owned by the account's owner."""
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


def is_ready(job: Job, now: datetime) -> bool:
    """Whether a pending job may be picked at `now`."""
    return job.scheduled_at is None or job.scheduled_at <= now


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
        """Owes `increments` to run `run_id` (nothing when the job has no run)."""
        if run_id is not None:
            self._owed.setdefault(run_id, collections.Counter()).update(increments)

    async def apply(self, conn: AsyncConnection) -> None:
        """Writes what is owed, run by run in id order."""
        for run_id in sorted(self._owed):
            owed = self._owed[run_id]
            await conn.execute(
                sa.update(runs)
                .where(runs.c.id == run_id)
                .values({runs.c[name]: runs.c[name] + n for name, n in owed.items()})
            )
        self._owed.clear()


class SharedDriver:
    """The statements both databases run as written; a driver subclasses it (see module doc)."""

    name: ClassVar[str]

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        retry_policy: RetryPolicy | None = None,
        on_jobs_available: JobsAvailable | None = None,
    ) -> None:
        self.engine = engine
        # Reads run in autocommit (every reader of this database uses this one). Besides the
        # BEGIN and ROLLBACK round trips, a ROLLBACK makes psycopg drop every statement prepared
        # on the connection, the hot path's included, so each health check would send them
        # back to being planned anew.
        self.reads = read_engine(engine)
        self.retry_policy = retry_policy or RetryPolicy()
        self._on_jobs_available: JobsAvailable = on_jobs_available or (lambda count: None)
        # Ready jobs announced inside each open transaction, by id of its connection.
        self._announced: dict[int, int] = {}

    # -- what a driver supplies ---------------------------------------------------------------

    def _lease_clock(self) -> sa.ColumnElement[datetime]:
        """The lease clock in a Core statement, bound by `_lease_params`."""
        raise NotImplementedError

    def _lease_params(self, moment: Moment) -> dict[str, Any]:
        """The parameters of `_lease_clock`."""
        raise NotImplementedError

    async def _announce(self, conn: AsyncConnection, count: int) -> None:
        """Tells pickers that `count` jobs became ready, once `conn`'s transaction commits."""
        raise NotImplementedError

    def insert(self, table: sa.Table) -> Any:
        """This database's INSERT construct for `table`, with its ON CONFLICT clauses."""
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """See `QueueDriver.transaction`: jobs announced inside (`_announce_after_commit`) are
        told to `on_jobs_available` once it commits."""
        key = None
        try:
            async with self.engine.begin() as conn:
                key = id(conn)
                self._announced[key] = 0
                yield conn
        finally:
            ready = self._announced.pop(key, 0) if key is not None else 0
        if ready:
            self._on_jobs_available(ready)

    def _announce_after_commit(self, conn: AsyncConnection, count: int) -> None:
        """Calls `on_jobs_available(count)` when `conn`'s transaction (from `transaction()`)
        commits."""
        if count:
            self._announced[id(conn)] = self._announced.get(id(conn), 0) + count

    @contextlib.asynccontextmanager
    async def _within(self, conn: AsyncConnection | None) -> AsyncIterator[AsyncConnection]:
        """The caller's transaction, or a new one."""
        if conn is not None:
            yield conn
            return
        async with self.transaction() as own:
            yield own

    def leader_session(self) -> AbstractAsyncContextManager[LeaderSession]:
        """See `QueueDriver.leader_session`."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------

    def snapshot(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """See `QueueDriver.snapshot`: one transaction, which on SQLite is one snapshot."""
        return self.engine.connect()

    def listener(self, signal: SignalTarget) -> Any:
        """See `QueueDriver.listener`: none unless the driver says otherwise."""
        return None

    async def ping(self) -> None:
        """See `QueueDriver.ping`."""
        async with self.reads.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def lease_clock_now(self) -> datetime:
        """See `QueueDriver.lease_clock_now`."""
        async with self.reads.connect() as conn:
            now = (
                await conn.execute(
                    sa.select(self._lease_clock()),
                    self._lease_params(Moment(now=datetime.now(UTC))),
                )
            ).scalar_one()
        return now

    async def job_cancel(self, job_id: uuid.UUID, caller: Caller, *, moment: Moment) -> Job:
        """See `QueueDriver.job_cancel`."""
        now = moment.now
        async with self.transaction() as conn:
            row = (
                (
                    await conn.execute(
                        sa.update(q)
                        .where(
                            q.c.id == job_id,
                            q.c.status == status(JobStatus.PENDING),
                            visible_to(caller),
                        )
                        .values(status=JobStatus.CANCELLED.value, completed_at=now, updated_at=now)
                        .returning(*JOB_COLUMNS)
                    )
                )
                .mappings()
                .first()
            )
            if row is not None:
                return job_from_row(row)
            job = await job_get_visible(conn, job_id, caller)
        raise IllegalTransition(
            f"job {job_id} is {job.status.value}: only a pending job can be cancelled"
        )

    async def job_retry(self, job_id: uuid.UUID, caller: Caller, *, moment: Moment) -> Job:
        """See `QueueDriver.job_retry`."""
        statement = (
            sa.update(q)
            .where(
                q.c.id == job_id,
                q.c.status.in_((JobStatus.FAILED.value, JobStatus.CANCELLED.value)),
                visible_to(caller),
            )
            .values(
                status=JobStatus.PENDING.value,
                attempts=0,
                scheduled_at=None,
                started_at=None,
                completed_at=None,
                worker_id=None,
                worker_run_id=None,
                updated_at=moment.now,
                # Back in line as a new job would be: behind the user's queued jobs.
                fair_key=fair_key_next(q.c.user_id, q.c.priority, moment.now),
            )
            .returning(*JOB_COLUMNS)
        )
        try:
            async with self.transaction() as conn:
                row = (await conn.execute(statement)).mappings().first()
                if row is None:
                    job = await job_get_visible(conn, job_id, caller)
                    raise IllegalTransition(
                        f"job {job_id} is {job.status.value}: only a failed or cancelled job "
                        "can be retried"
                    )
                await self._announce(conn, 1)
        except IntegrityError:
            raise ActiveJobExists(
                f"job {job_id} cannot be retried: its account already has a pending or "
                "processing job"
            ) from None
        return job_from_row(row)

    async def job_rescue_stuck(
        self, *, moment: Moment, started_before: datetime | None = None
    ) -> RecoveredJobs:
        """See `QueueDriver.job_rescue_stuck`. Not on the hot path: rows are read, decided in
        Python with the retry policy, and written one by one in one transaction."""
        now = moment.now
        stuck = q.c.lease_expires_at <= self._lease_clock()
        if started_before is not None:
            stuck = sa.or_(stuck, q.c.started_at < started_before)
        requeued: list[uuid.UUID] = []
        failed: list[uuid.UUID] = []
        ready = 0
        tally = RunTally()
        async with self.transaction() as conn:
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
                            self._lease_clock().label("lease_now"),
                        )
                        .where(q.c.status == status(JobStatus.PROCESSING), stuck)
                        .order_by(q.c.lease_expires_at)
                        .limit(RECOVER_BATCH)
                        .with_for_update(skip_locked=True),
                        self._lease_params(moment),
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
                        error_entry(
                            attempt=row["attempts"],
                            error=error,
                            at=now,
                            worker_id=row["worker_id"],
                            permanent=False,
                        ),
                    ],
                    "updated_at": now,
                    **LEASE_CLEARED,
                }
                if decision.retry:
                    assert decision.retry_at is not None
                    values |= {"status": JobStatus.PENDING.value, "scheduled_at": decision.retry_at}
                    requeued.append(row["id"])
                    ready += decision.retry_at <= now
                else:
                    values |= {"status": JobStatus.FAILED.value, "completed_at": now}
                    failed.append(row["id"])
                await conn.execute(sa.update(q).where(q.c.id == row["id"]).values(**values))
                tally.add(row["worker_run_id"], RunTally.FAILED)
            await tally.apply(conn)
            if ready:
                await self._announce(conn, ready)
        return RecoveredJobs(requeued=requeued, failed=failed)

    async def job_delete_finished(self, *, finished_before: datetime, limit: int) -> int:
        """See `QueueDriver.job_delete_finished`."""
        finished = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value)
        victims = (
            sa.select(q.c.id)
            .where(q.c.status.in_(finished), q.c.completed_at < finished_before)
            .limit(limit)
            .scalar_subquery()
        )
        async with self.transaction() as conn:
            result = await conn.execute(sa.delete(q).where(q.c.id.in_(victims)))
        return result.rowcount or 0

    async def worker_run_delete_finished(self, *, finished_before: datetime, limit: int) -> int:
        """See `QueueDriver.worker_run_delete_finished`."""
        victims = (
            sa.select(runs.c.id)
            .where(
                runs.c.status != WorkerRunStatus.RUNNING.value,
                runs.c.finished_at < finished_before,
                # Implied by the line above (a run finishes after it starts); it lets the
                # database walk the started_at index instead of the whole table.
                runs.c.started_at < finished_before,
            )
            .limit(limit)
            .scalar_subquery()
        )
        async with self.transaction() as conn:
            result = await conn.execute(sa.delete(runs).where(runs.c.id.in_(victims)))
        return result.rowcount or 0

    async def queue_pause(
        self, user_id: uuid.UUID | None, reason: str, paused_by: str | None, *, moment: Moment
    ) -> QueuePause:
        """See `QueueDriver.queue_pause`."""
        key = WHOLE_QUEUE if user_id is None else user_id
        statement = (
            self.insert(pauses)
            .values(user_id=key, reason=reason, paused_by=paused_by, paused_at=moment.now)
            # Pausing again keeps when the pause began and takes the new reason.
            .on_conflict_do_update(
                index_elements=[pauses.c.user_id],
                set_={"reason": reason, "paused_by": paused_by},
            )
            .returning(*pauses.c)
        )
        async with self.transaction() as conn:
            row = (await conn.execute(statement)).mappings().one()
        return pause_from_row(row)

    async def queue_resume(self, user_id: uuid.UUID | None, *, moment: Moment) -> bool:
        """See `QueueDriver.queue_resume`."""
        key = WHOLE_QUEUE if user_id is None else user_id
        async with self.transaction() as conn:
            deleted = (
                await conn.execute(
                    sa.delete(pauses).where(pauses.c.user_id == key).returning(pauses.c.user_id)
                )
            ).first()
            if deleted is None:
                return False
            due = [
                q.c.status == status(JobStatus.PENDING),
                sa.or_(q.c.scheduled_at.is_(None), q.c.scheduled_at <= moment.now),
                q.c.attempts < q.c.max_attempts,
            ]
            if user_id is not None:
                due.append(q.c.user_id == user_id)
            ready = (
                await conn.execute(
                    sa.select(sa.func.count()).select_from(
                        sa.select(q.c.id).where(*due).limit(RESUME_WAKE_LIMIT).subquery()
                    )
                )
            ).scalar_one()
            if ready:
                await self._announce(conn, ready)
        return True

    async def worker_run_insert(
        self, worker_id: str, metadata: dict[str, Any], *, moment: Moment
    ) -> WorkerRun:
        """See `QueueDriver.worker_run_insert`."""
        async with self.transaction() as conn:
            row = (
                (
                    await conn.execute(
                        sa.insert(runs)
                        .values(
                            id=uuid.uuid4(),
                            worker_id=worker_id,
                            status=WorkerRunStatus.RUNNING.value,
                            metadata=metadata,
                            started_at=moment.now,
                        )
                        .returning(*runs.c)
                    )
                )
                .mappings()
                .one()
            )
        return worker_run_from_row(row)

    async def worker_run_finish(
        self,
        run_id: uuid.UUID,
        status: WorkerRunStatus,
        notes: str | None,
        metadata: dict[str, Any],
        *,
        moment: Moment,
    ) -> WorkerRun:
        """See `QueueDriver.worker_run_finish`."""
        async with self.transaction() as conn:
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
                            finished_at=moment.now,
                        )
                        .returning(*runs.c)
                    )
                )
                .mappings()
                .one()
            )
        return worker_run_from_row(row)

    # -- helpers for the drivers --------------------------------------------------------------

    async def _lease_problems(
        self, conn: AsyncConnection, refused: Iterable[tuple[uuid.UUID, uuid.UUID]], moment: Moment
    ) -> dict[uuid.UUID, QueueError]:
        """Why each lease-guarded change in `refused` (job id, token) matched no row: no job, a
        lease that ran out, or a token that is not the job's current one. One query for all."""
        tokens = dict(refused)
        if not tokens:
            return {}
        rows = (
            (
                await conn.execute(
                    sa.select(
                        q.c.id,
                        q.c.status,
                        q.c.lease_token,
                        q.c.lease_expires_at,
                        self._lease_clock().label("lease_now"),
                    ).where(q.c.id.in_(list(tokens))),
                    self._lease_params(moment),
                )
            )
            .mappings()
            .all()
        )
        found = {row["id"]: row for row in rows}
        problems: dict[uuid.UUID, QueueError] = {}
        for job_id, token in tokens.items():
            row = found.get(job_id)
            if row is None:
                problems[job_id] = JobNotFound(f"job {job_id} not found")
            elif row["status"] == JobStatus.PROCESSING.value and row["lease_token"] == token:
                # The token still matches, so the guard refused the change for the expiry alone.
                problems[job_id] = LeaseExpired(
                    f"job {job_id}: the lease expired at {row['lease_expires_at'].isoformat()} "
                    f"(database time {row['lease_now'].isoformat()}) and is no longer held, so "
                    "this worker must not extend it or report on the job"
                )
            else:
                problems[job_id] = LeaseLost(
                    f"job {job_id} is {row['status']} and the lease token does not match: this "
                    "lease is no longer held (it expired and the job was recovered or taken "
                    "over by another worker), so this worker must not report on it"
                )
        return problems

    async def _lease_problem(
        self, conn: AsyncConnection, job_id: uuid.UUID, lease_token: uuid.UUID, moment: Moment
    ) -> QueueError:
        """`_lease_problems` of one job."""
        return (await self._lease_problems(conn, [(job_id, lease_token)], moment))[job_id]
