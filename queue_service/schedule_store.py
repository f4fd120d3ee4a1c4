"""The scheduler's state: one row per account in `sync_schedules`, and the enqueue of due slots.

Each batch is one transaction that locks the rows it changes (`FOR UPDATE SKIP LOCKED` on
PostgreSQL; SQLite's `BEGIN IMMEDIATE` serialises writers), so even two schedulers running at
once, as during a leader change, never serve a slot twice: a row the other one holds is skipped,
and a row it has just advanced is no longer due. The SQL is the same on both databases; the
driver gives its transaction, its INSERT construct and the enqueue, which a due slot goes
through like any client's request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from queue_service.drivers.base import Moment, QueueDriver
from queue_service.errors import AccountNotFound
from queue_service.models import (
    DEFAULT_INTERVAL,
    Caller,
    DueBatch,
    EnqueueRequest,
    JobStatus,
    ScheduleChange,
    ScheduleDefaults,
    SyncSchedule,
    SyncType,
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
from queue_service.tables import sync_queue, sync_schedules
from service_runtime.sqltypes import UtcDateTime
from sync_service.tables import gmb_accounts

# A laid-out account's period is rewritten only when the plan is off by more than this share.
REGRID_TOLERANCE = 0.02

q = sync_queue
sched = sync_schedules

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


# Session advisory lock of a scheduler's layout pass (see `schedule_placement_turn`).
_PLACEMENT_LOCK_KEY = 0x676D6273636864  # "gmbschd"


class ScheduleStore:
    """Per-account schedules and the scheduler's batches, over one driver's database."""

    def __init__(self, driver: QueueDriver, clock: Callable[[], datetime]) -> None:
        self._driver = driver
        self.engine = driver.engine
        # Reads in autocommit: a ROLLBACK would drop the statements psycopg prepared on the
        # connection (the queue's hot path's among them).
        self._reads = driver.reads
        self._clock = clock
        self._placement_lock = asyncio.Lock()

    def clock(self) -> datetime:
        """Now, by the store's clock (tests move it)."""
        return self._clock()

    async def schedule_get(self, account_id: uuid.UUID) -> SyncSchedule:
        """An account's schedule; AccountNotFound when there is no such account."""
        async with self._reads.connect() as conn:
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
        async with self._driver.transaction() as conn:
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
        insert = self._driver.insert(sched)
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

    @contextlib.asynccontextmanager
    async def schedule_placement_turn(self) -> AsyncIterator[bool]:
        """Whether this scheduler may lay out unplaced accounts now. A layout pass numbers the
        accounts it places over several batches; two passes at once (a new leader while the
        old one has not yet noticed it lost the lock) would give accounts the same positions.
        So passes take turns: on PostgreSQL by a session advisory lock (a pass that does not get
        it skips the layout this tick), in one process by a lock."""
        if self.engine.dialect.name != "postgresql":
            async with self._placement_lock:
                yield True
            return
        async with self.engine.connect() as conn:
            taken = (
                await conn.execute(sa.select(sa.func.pg_try_advisory_lock(_PLACEMENT_LOCK_KEY)))
            ).scalar_one()
            await conn.commit()
            try:
                yield bool(taken)
            finally:
                if taken:
                    await conn.execute(sa.select(sa.func.pg_advisory_unlock(_PLACEMENT_LOCK_KEY)))
                    await conn.commit()

    async def schedule_unplaced_count(self) -> int:
        """How many active accounts the scheduler has yet to lay out."""
        unplaced = self._unplaced().subquery()
        async with self._reads.connect() as conn:
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
        async with self._driver.transaction() as conn:
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
        insert = self._driver.insert(sched)
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
        async with self._driver.transaction() as conn:
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
        async with self._driver.transaction() as conn:
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
        async with self._driver.transaction() as conn:
            rows = (await conn.execute(statement)).mappings().all()
            if not rows:
                return DueBatch(rows=0, enqueued=0, duplicates=0, deferred=0, cursor=cursor)
            # Whoever deactivates an account waits for this share lock, and this transaction
            # sees a deactivation committed before it: no job for a deactivated account.
            active = set(
                (
                    await conn.execute(
                        sa.select(gmb_accounts.c.id)
                        .where(
                            gmb_accounts.c.id.in_([r["account_id"] for r in rows]),
                            gmb_accounts.c.is_active.is_(True),
                        )
                        .with_for_update(read=True)
                    )
                ).scalars()
            )
            services = {}
            requests = []
            for row in rows:
                if row["account_id"] not in active:
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
            results = await self._driver.job_insert_many(
                requests, caller=Caller.everyone(), moment=Moment(now=now), conn=conn
            )
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
