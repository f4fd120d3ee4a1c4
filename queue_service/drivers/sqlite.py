"""The queue on SQLite: one process, one writer at a time.

Every change is one transaction that starts with `BEGIN IMMEDIATE` (see
`service_runtime.database.configure_sqlite`), so writers are serialised up front and a
read-then-write inside a transaction cannot race another writer: row locks (`FOR UPDATE`) are
not needed and SQLAlchemy leaves them out. SQLite has no data-modifying CTEs, so a change that
PostgreSQL makes in one statement takes a few here, in one transaction. Leases are judged by
this process's clock. Ready jobs are announced by calling `on_jobs_available` after the commit
that made them ready; there is no other process to tell.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from queue_service.drivers.base import Moment, PickParams
from queue_service.drivers.shared import (
    JOB_COLUMNS,
    LEASE_CLEARED,
    MAX_ERROR_LENGTH,
    RunTally,
    SharedDriver,
    enqueue_results,
    error_entry,
    fair_key_next,
    is_ready,
    job_from_row,
    job_values,
    leased_of,
    lost_worker_error,
    merge_by_account,
    not_paused,
    pick_order,
    q,
    ref_of,
    status,
)
from queue_service.errors import AccountInactive, AccountNotFound, QueueError
from queue_service.lifecycle import decide_failure
from queue_service.models import (
    Caller,
    Completion,
    EnqueueRequest,
    EnqueueResult,
    Failure,
    Job,
    JobRef,
    JobStatus,
    LeasedJob,
    Release,
    ResultAck,
    SyncType,
)
from queue_service.tables import ACTIVE_JOB_PREDICATE, ACTIVE_STATUSES
from service_runtime.sqltypes import JsonDocument, UtcDateTime
from sync_service.tables import gmb_accounts

_ACK_COLUMNS = (q.c.id, q.c.worker_run_id, q.c.scheduled_at)


class _ProcessLeadership:
    """Leadership within this process: SQLite serves one process, which leads while one of its
    sessions holds it."""

    def __init__(self, driver: SqliteDriver) -> None:
        self._driver = driver

    async def attempt_elect(self) -> bool:
        """True when no other session of this driver leads."""
        if self._driver._leader in (None, self):
            self._driver._leader = self
            return True
        return False

    async def confirm(self) -> None:
        """Nothing to lose: the process itself is the session."""


class SqliteDriver(SharedDriver):
    """`QueueDriver` on SQLite (see the module docstring)."""

    name = "sqlite"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._leader: _ProcessLeadership | None = None

    async def queue_analyze_if_stale(self, *, moment: Moment) -> bool:
        """See `QueueDriver.queue_analyze_if_stale`: SQLite's planner keeps no statistics
        unless asked, and plans each statement from its indexes alone."""
        return False

    # -- connections, clock, notifications, leadership -----------------------------------------

    def _lease_clock(self) -> sa.ColumnElement[datetime]:
        return sa.bindparam("p_lease_now", type_=UtcDateTime())

    def _lease_params(self, moment: Moment) -> dict[str, Any]:
        return {"p_lease_now": moment.lease_now or moment.now}

    def insert(self, table: sa.Table) -> Any:
        """SQLite's INSERT, with ON CONFLICT."""
        return sqlite.insert(table)

    async def _announce(self, conn: AsyncConnection, count: int) -> None:
        self._announce_after_commit(conn, count)

    @contextlib.asynccontextmanager
    async def leader_session(self) -> AsyncIterator[_ProcessLeadership]:
        """A session of this process's leadership; it ends when the session does."""
        session = _ProcessLeadership(self)
        try:
            yield session
        finally:
            if self._leader is session:
                self._leader = None

    # -- enqueue ------------------------------------------------------------------------------

    async def job_insert_many(
        self,
        requests: Sequence[EnqueueRequest],
        *,
        caller: Caller,
        moment: Moment,
        conn: AsyncConnection | None = None,
    ) -> list[EnqueueResult[Job]]:
        """See `QueueDriver.job_insert_many`: one multi-row INSERT for the accounts without an
        active job, then an upgrade (or a read) for each account that has one."""
        if not requests:
            return []
        merged = merge_by_account(requests)
        async with self._within(conn) as tx:
            owners = await self._check_accounts(tx, requests, caller)
            keys = await self._fair_keys(tx, merged, owners, moment.now)
            rows = (
                (
                    await tx.execute(
                        self._insert_jobs,
                        [
                            job_values(r, owners[a], moment.now) | {"fair_key": keys[a]}
                            for a, r in merged.items()
                        ],
                    )
                )
                .mappings()
                .all()
            )
            inserted = {row["account_id"]: job_from_row(row) for row in rows}
            active: dict[uuid.UUID, Job] = {}
            ready = sum(is_ready(job, moment.now) for job in inserted.values())
            for account, request in merged.items():
                if account not in inserted:
                    # Writers are serialised, so the job the INSERT met is still there.
                    job, made_due = await self._upgrade_active(
                        tx, request, moment.now, keys[account]
                    )
                    active[account] = job
                    ready += made_due
            if ready:
                await self._announce(tx, ready)
        return enqueue_results(requests, inserted, active)

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

    async def _fair_keys(
        self,
        conn: AsyncConnection,
        merged: dict[uuid.UUID, EnqueueRequest],
        owners: dict[uuid.UUID, uuid.UUID],
        now: datetime,
    ) -> dict[uuid.UUID, int]:
        """Each account's fair key: its user's line at its priority goes on from the later of
        the queue's head and one step behind the user's last queued key, one step a request."""
        following: dict[tuple[uuid.UUID, int], int] = {}
        keys: dict[uuid.UUID, int] = {}
        for account, request in merged.items():
            lane = (owners[account], request.priority)
            if lane not in following:
                first = fair_key_next(sa.literal(lane[0], sa.Uuid()), lane[1], now)
                following[lane] = (await conn.execute(sa.select(first))).scalar_one()
            keys[account] = following[lane]
            following[lane] += 1
        return keys

    @property
    def _insert_jobs(self) -> sa.Insert:
        """INSERT of one or many jobs that skips accounts with an active job."""
        return (
            sqlite.insert(q)
            .on_conflict_do_nothing(
                index_elements=[q.c.account_id], index_where=ACTIVE_JOB_PREDICATE
            )
            .returning(*JOB_COLUMNS)
        )

    async def _upgrade_active(
        self, conn: AsyncConnection, request: EnqueueRequest, now: datetime, fair_key: int
    ) -> tuple[Job, bool]:
        """Upgrades the account's pending job to a full sync, a higher priority or an earlier
        schedule if asked (a job moved to a higher priority takes `fair_key`, its place there);
        returns the account's active job, and whether the upgrade made it due now (it waited
        for a later time)."""
        # Unset means now; a job scheduled later than the request asks is moved up.
        earlier = q.c.scheduled_at > (request.scheduled_at or now)
        made_due = False
        if request.scheduled_at is None or request.scheduled_at <= now:
            # A pending job waiting for a later time is about to be due: announce it.
            waits_until = (
                await conn.execute(
                    sa.select(q.c.scheduled_at).where(
                        q.c.account_id == request.account_id,
                        q.c.status == status(JobStatus.PENDING),
                    )
                )
            ).scalar_one_or_none()
            made_due = waits_until is not None and waits_until > now
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
            earlier,
        )
        row = (
            (
                await conn.execute(
                    sa.update(q)
                    .where(
                        q.c.account_id == request.account_id,
                        q.c.status == status(JobStatus.PENDING),
                        needs_upgrade,
                    )
                    .values(
                        sync_type=upgraded_type,
                        priority=upgraded_priority,
                        scheduled_at=sa.case(
                            (earlier, sa.literal(request.scheduled_at, q.c.scheduled_at.type)),
                            else_=q.c.scheduled_at,
                        ),
                        fair_key=sa.case(
                            (q.c.priority < request.priority, fair_key), else_=q.c.fair_key
                        ),
                        updated_at=now,
                    )
                    .returning(*JOB_COLUMNS)
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            row = (
                (
                    await conn.execute(
                        sa.select(*JOB_COLUMNS).where(
                            q.c.account_id == request.account_id,
                            q.c.status.in_(ACTIVE_STATUSES),
                        )
                    )
                )
                .mappings()
                .one()
            )
        return job_from_row(row), made_due

    async def job_insert_many_refs(
        self, requests: Sequence[EnqueueRequest], *, caller: Caller, moment: Moment
    ) -> list[EnqueueResult[JobRef]]:
        """See `QueueDriver.job_insert_many_refs`: `job_insert_many`'s results, each job by
        its reference (SQLite reads rows in-process: nothing to save by reading fewer)."""
        results = await self.job_insert_many(requests, caller=caller, moment=moment)
        return [EnqueueResult(ref_of(r.job), r.duplicate) for r in results]

    # -- pick ---------------------------------------------------------------------------------

    async def job_pick(self, params: PickParams, *, moment: Moment) -> list[Job]:
        """See `QueueDriver.job_pick`: expired leases are dealt with first, then the jobs to
        take over and the due ones are leased in one UPDATE, all in one transaction."""
        now = moment.now
        lease_now = moment.lease_now or now
        tally = RunTally()
        async with self.transaction() as conn:
            expired = (
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
                        )
                        .where(
                            q.c.status == status(JobStatus.PROCESSING),
                            q.c.lease_expires_at <= lease_now,
                            not_paused(),
                        )
                        .order_by(q.c.lease_expires_at)
                        .limit(params.max_jobs)
                    )
                )
                .mappings()
                .all()
            )
            takeover: list[uuid.UUID] = []
            for row in expired:
                error = lost_worker_error(row["lease_expires_at"], row["worker_id"])
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
                }
                if row["attempts"] >= row["max_attempts"]:
                    values |= {
                        "status": JobStatus.FAILED.value,
                        "completed_at": now,
                        **LEASE_CLEARED,
                    }
                else:
                    takeover.append(row["id"])
                await conn.execute(sa.update(q).where(q.c.id == row["id"]).values(**values))
                tally.add(row["worker_run_id"], RunTally.FAILED)
            ready = (
                sa.select(q.c.id)
                .where(
                    q.c.status == status(JobStatus.PENDING),
                    sa.or_(q.c.scheduled_at.is_(None), q.c.scheduled_at <= now),
                    q.c.attempts < q.c.max_attempts,
                    not_paused(),
                )
                .order_by(q.c.priority.desc(), q.c.fair_key, q.c.created_at, q.c.id)
                .limit(max(params.max_jobs - len(takeover), 0))
            )
            rows = (
                (
                    await conn.execute(
                        sa.update(q)
                        .where(sa.or_(q.c.id.in_(takeover), q.c.id.in_(ready.scalar_subquery())))
                        .values(
                            status=JobStatus.PROCESSING.value,
                            attempts=q.c.attempts + 1,
                            # The lease's own start: `lease_expires_at - started_at` is the lease.
                            started_at=lease_now,
                            updated_at=now,
                            lease_token=sa.func.lower(sa.func.hex(sa.func.randomblob(16))),
                            lease_expires_at=lease_now + params.lease,
                            worker_id=params.worker_id,
                            worker_run_id=params.worker_run_id,
                        )
                        .returning(*JOB_COLUMNS)
                    )
                )
                .mappings()
                .all()
            )
            for row in rows:
                tally.add(row["worker_run_id"], RunTally.PICKED)
            await tally.apply(conn)
        jobs = [job_from_row(r) for r in rows]
        # RETURNING gives no order; hand the jobs out in pick order.
        jobs.sort(key=pick_order)
        return jobs

    async def job_pick_leased(self, params: PickParams, *, moment: Moment) -> list[LeasedJob]:
        """See `QueueDriver.job_pick_leased`: `job_pick`'s jobs, viewed as leased jobs. SQLite
        reads rows in-process, so there is no wire or decoding to save by reading fewer."""
        return [leased_of(job) for job in await self.job_pick(params, moment=moment)]

    # -- leases and results -------------------------------------------------------------------

    def _lease_held(self, job_id: Any, lease_token: Any) -> tuple[sa.ColumnElement[bool], ...]:
        """`lease_token` holds the job's lease right now (bound by `_lease_params`)."""
        return (
            q.c.id == job_id,
            q.c.lease_token == lease_token,
            q.c.status == status(JobStatus.PROCESSING),
            q.c.lease_expires_at > self._lease_clock(),
        )

    async def job_lease_extend(
        self, job_id: uuid.UUID, lease_token: uuid.UUID, lease: timedelta, *, moment: Moment
    ) -> datetime:
        """See `QueueDriver.job_lease_extend`."""
        lease_now = moment.lease_now or moment.now
        async with self.transaction() as conn:
            expires = (
                await conn.execute(
                    sa.update(q)
                    .where(*self._lease_held(job_id, lease_token))
                    .values(lease_expires_at=lease_now + lease, updated_at=moment.now)
                    .returning(q.c.lease_expires_at),
                    self._lease_params(moment),
                )
            ).scalar_one_or_none()
            if expires is None:
                raise await self._lease_problem(conn, job_id, lease_token, moment)
        return expires

    async def job_report_many(
        self,
        results: Sequence[Completion | Failure],
        *,
        moment: Moment,
        with_jobs: bool = True,
    ) -> list[ResultAck]:
        """See `QueueDriver.job_report_many`: result by result in one transaction, run counts
        last."""
        now = moment.now
        columns = JOB_COLUMNS if with_jobs else _ACK_COLUMNS
        tally = RunTally()
        acks: list[ResultAck] = []
        ready = 0
        async with self.transaction() as conn:
            for result in results:
                if isinstance(result, Completion):
                    row = await self._complete(conn, result, moment, columns)
                    retry = False
                else:
                    row, retry = await self._fail(conn, result, moment, columns)
                if row is None:
                    error: QueueError = await self._lease_problem(
                        conn, result.job_id, result.lease_token, moment
                    )
                    acks.append(ResultAck(job_id=result.job_id, error=error))
                    continue
                tally.add(
                    row["worker_run_id"],
                    RunTally.FAILED if isinstance(result, Failure) else RunTally.SUCCEEDED,
                )
                ready += retry and (row["scheduled_at"] is None or row["scheduled_at"] <= now)
                acks.append(
                    ResultAck(
                        job_id=result.job_id,
                        job=job_from_row(row) if with_jobs else None,
                        will_retry=retry,
                    )
                )
            await tally.apply(conn)
            if ready:
                await self._announce(conn, ready)
        return acks

    async def _complete(
        self, conn: AsyncConnection, completion: Completion, moment: Moment, columns: Any
    ) -> Any:
        now = moment.now
        return (
            (
                await conn.execute(
                    sa.update(q)
                    .where(*self._lease_held(completion.job_id, completion.lease_token))
                    .values(
                        status=JobStatus.SUCCEEDED.value,
                        completed_at=now,
                        updated_at=now,
                        last_error=None,
                        result=sa.bindparam("p_result", type_=JsonDocument),
                        **LEASE_CLEARED,
                    )
                    .returning(*columns),
                    {"p_result": completion.result, **self._lease_params(moment)},
                )
            )
            .mappings()
            .first()
        )

    async def _fail(
        self, conn: AsyncConnection, failure: Failure, moment: Moment, columns: Any
    ) -> tuple[Any, bool]:
        """Reads the attempt, decides with the retry policy, writes: the decision needs
        attempts and the error list."""
        current = (
            (
                await conn.execute(
                    sa.select(q.c.attempts, q.c.max_attempts, q.c.errors, q.c.worker_id).where(
                        *self._lease_held(failure.job_id, failure.lease_token)
                    ),
                    self._lease_params(moment),
                )
            )
            .mappings()
            .first()
        )
        if current is None:
            return None, False
        now = moment.now
        decision = decide_failure(
            attempts=current["attempts"],
            max_attempts=current["max_attempts"],
            permanent=failure.permanent,
            now=now,
            policy=self.retry_policy,
            retry_after=failure.retry_after,
        )
        values: dict[str, Any] = {
            "last_error": failure.error[:MAX_ERROR_LENGTH],
            "errors": [
                *(current["errors"] or []),
                error_entry(
                    attempt=current["attempts"],
                    error=failure.error,
                    at=now,
                    worker_id=current["worker_id"],
                    permanent=failure.permanent,
                ),
            ],
            "updated_at": now,
            **LEASE_CLEARED,
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
                    .returning(*columns)
                )
            )
            .mappings()
            .one()
        )
        return row, decision.retry

    async def job_release(self, release: Release, *, moment: Moment) -> Job:
        """See `QueueDriver.job_release`."""
        now = moment.now
        noted = {"last_error": release.reason[:MAX_ERROR_LENGTH]} if release.reason else {}
        scheduled_at = (now + release.delay) if release.delay else None
        async with self.transaction() as conn:
            row = (
                (
                    await conn.execute(
                        sa.update(q)
                        .where(*self._lease_held(release.job_id, release.lease_token))
                        .values(
                            status=JobStatus.PENDING.value,
                            attempts=sa.case((q.c.attempts > 0, q.c.attempts - 1), else_=0),
                            scheduled_at=scheduled_at,
                            updated_at=now,
                            **noted,
                            **LEASE_CLEARED,
                        )
                        .returning(*JOB_COLUMNS),
                        self._lease_params(moment),
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                raise await self._lease_problem(conn, release.job_id, release.lease_token, moment)
            tally = RunTally()
            tally.add(row["worker_run_id"], RunTally.RELEASED)
            await tally.apply(conn)
            if scheduled_at is None or scheduled_at <= now:
                await self._announce(conn, 1)
        return job_from_row(row)
