"""What the queue shows, apart from how it changes: jobs one by one and by page, counts by status,
recent worker runs, and the raw figures of GetDiagnostics.

Reads only, and the same SQL on PostgreSQL and SQLite; the driver is asked only for a
connection whose reads share one snapshot (`QueueDriver.snapshot`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from queue_service.drivers.base import QueueDriver
from queue_service.drivers.shared import (
    JOB_COLUMNS,
    job_from_row,
    job_get_visible,
    pause_from_row,
    visible_to,
    worker_run_from_row,
)
from queue_service.models import (
    ApiDisabled,
    Caller,
    Job,
    JobFilter,
    JobStatus,
    PageCursor,
    QueueGauges,
    QueuePause,
    QueueStats,
    VacuumHealth,
    WorkerRun,
    WorkerRunFigures,
    WorkerRunStatus,
)
from queue_service.reconnect import retried_on_disconnect
from queue_service.tables import WHOLE_QUEUE, sync_queue, sync_queue_pauses, sync_worker_runs
from sync_service.tables import error_logs

# Durations for the average and p95 come from at most this many recent jobs.
DURATION_SAMPLE = 10_000
# Worker-run figures come from at most this many of the most recently started runs.
WORKER_RUN_SAMPLE = 10_000

# Ids per statement of `jobs_by_id`: well within SQLite's limit of bound parameters.
JOBS_BY_ID_CHUNK = 500

q = sync_queue
runs = sync_worker_runs
pauses = sync_queue_pauses


class QueueReader:
    """The queue's read model over one driver's database."""

    def __init__(self, driver: QueueDriver) -> None:
        self._driver = driver
        # One-statement reads run in autocommit (no BEGIN and ROLLBACK round trips around
        # them); reads that must agree with each other use `driver.snapshot()`.
        self._engine = driver.reads

    @retried_on_disconnect
    async def job_get(self, job_id: uuid.UUID, caller: Caller) -> Job:
        """One job; JobNotFound when missing or not the caller's."""
        async with self._engine.connect() as conn:
            return await job_get_visible(conn, job_id, caller)

    @retried_on_disconnect
    async def jobs_by_id(self, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Job]:
        """The jobs of `job_ids` that exist, by id, whoever's they are: for callers that
        checked who may see each one before (a job never changes hands)."""
        found: dict[uuid.UUID, Job] = {}
        async with self._engine.connect() as conn:
            for start in range(0, len(job_ids), JOBS_BY_ID_CHUNK):
                chunk = job_ids[start : start + JOBS_BY_ID_CHUNK]
                result = await conn.execute(sa.select(*JOB_COLUMNS).where(q.c.id.in_(chunk)))
                for row in result.mappings():
                    job = job_from_row(row)
                    found[job.id] = job
        return found

    @retried_on_disconnect
    async def job_list(
        self,
        caller: Caller,
        job_filter: JobFilter,
        *,
        limit: int,
        after: PageCursor | None = None,
    ) -> list[Job]:
        """Jobs newest first; `after` continues from the last job of the previous page."""
        async with self._engine.connect() as conn:
            return await _job_list(conn, caller, job_filter, limit=limit, after=after)

    @retried_on_disconnect
    async def job_stats(self, caller: Caller) -> QueueStats:
        """The caller's jobs counted by status."""
        async with self._engine.connect() as conn:
            return await _stats(conn, caller)

    @retried_on_disconnect
    async def queue_status(self, caller: Caller, *, limit: int) -> tuple[QueueStats, list[Job]]:
        """GetQueueStatus: the counts and the `limit` newest jobs, from one snapshot."""
        async with self._driver.snapshot() as conn:
            stats = await _stats(conn, caller)
            recent = await _job_list(conn, caller, JobFilter(), limit=limit)
        return stats, recent

    @retried_on_disconnect
    async def pause_list(self, caller: Caller) -> list[QueuePause]:
        """Active pauses of picking the caller may see: the whole queue's and the caller's own
        (every one for a caller who sees everything), oldest first."""
        async with self._engine.connect() as conn:
            return await _pauses(conn, caller)

    @retried_on_disconnect
    async def worker_run_list(self, *, limit: int) -> list[WorkerRun]:
        """The `limit` most recently started worker runs."""
        async with self._engine.connect() as conn:
            return await _recent_runs(conn, limit)

    @retried_on_disconnect
    async def diagnostics_snapshot(
        self,
        *,
        now: datetime,
        stale_after: timedelta,
        recent_limit: int,
        api_disabled_window: timedelta = timedelta(minutes=15),
    ) -> dict[str, Any]:
        """The raw figures of GetDiagnostics, read in one snapshot of the database."""
        hour_ago, week_ago, day_ago = (
            now - timedelta(hours=1),
            now - timedelta(days=7),
            now - timedelta(days=1),
        )
        finished_in = sa.and_(
            q.c.status.in_((JobStatus.SUCCEEDED.value, JobStatus.FAILED.value)),
            q.c.completed_at.is_not(None),
        )
        async with self._driver.snapshot() as conn:
            stats = await _stats(conn, Caller.everyone())
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
                        sa.select(*JOB_COLUMNS)
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
                        sa.select(*JOB_COLUMNS)
                        .where(q.c.status == JobStatus.FAILED.value)
                        .order_by(q.c.completed_at.desc())
                        .limit(recent_limit)
                    )
                )
                .mappings()
                .all()
            )
            recent_runs = await _recent_runs(conn, recent_limit)
            failed_runs = (
                await conn.execute(
                    sa.select(sa.func.count()).where(
                        runs.c.status == WorkerRunStatus.FAILED.value, runs.c.started_at >= day_ago
                    )
                )
            ).scalar_one()
            api_disabled = await _api_disabled(conn, since=now - api_disabled_window)
            vacuum = await _vacuum_health(conn)
            run_figures = await _worker_run_figures(conn, since=day_ago)
            active_pauses = await _pauses(conn, Caller.everyone())
        return {
            "now": now,
            "stats": stats,
            "oldest_ready_at": oldest_ready,
            "last_hour": last_hour,
            "last_week": last_week,
            "durations": durations,
            "stale_jobs": [job_from_row(r) for r in stale_rows],
            "recent_failures": [job_from_row(r) for r in failure_rows],
            "recent_worker_runs": recent_runs,
            "failed_worker_runs_24h": failed_runs,
            "api_disabled": api_disabled,
            "vacuum": vacuum,
            "worker_run_figures_24h": run_figures,
            "pauses": active_pauses,
        }

    @retried_on_disconnect
    async def gauges(self, *, now: datetime) -> QueueGauges:
        """What the metrics show of the queue's state: active jobs by status and priority,
        the oldest ready pending job, the longest-running job, and the last day's worker runs.

        One aggregate over pending and processing jobs (both served by partial indexes, so
        finished jobs piling up cost nothing) and one over the last day's runs.
        """
        ready = sa.and_(
            q.c.status == JobStatus.PENDING.value,
            sa.or_(q.c.scheduled_at.is_(None), q.c.scheduled_at <= now),
        )
        async with self._driver.snapshot() as conn:
            rows = await conn.execute(
                sa.select(
                    q.c.status,
                    q.c.priority,
                    sa.func.count(),
                    sa.func.min(sa.func.coalesce(q.c.scheduled_at, q.c.created_at)).filter(ready),
                    sa.func.min(q.c.started_at),
                )
                .where(q.c.status.in_((JobStatus.PENDING.value, JobStatus.PROCESSING.value)))
                .group_by(q.c.status, q.c.priority)
            )
            depth: dict[tuple[str, int], int] = {}
            oldest_ready: datetime | None = None
            oldest_started: datetime | None = None
            for status, priority, count, ready_since, started in rows:
                depth[(status, priority)] = count
                if status == JobStatus.PENDING.value and ready_since is not None:
                    oldest_ready = min(oldest_ready or ready_since, ready_since)
                if status == JobStatus.PROCESSING.value and started is not None:
                    oldest_started = min(oldest_started or started, started)
            figures = await _worker_run_figures(conn, since=now - timedelta(days=1))
        return QueueGauges(
            depth=depth,
            oldest_ready_age=_age(now, oldest_ready),
            longest_processing=_age(now, oldest_started),
            worker_run_figures_24h=figures,
        )


def _age(now: datetime, since: datetime | None) -> timedelta:
    return max(now - since, timedelta(0)) if since is not None else timedelta(0)


async def _worker_run_figures(conn: AsyncConnection, *, since: datetime) -> list[WorkerRunFigures]:
    """Runs started since `since`, by status: counts and averages (durations over the
    finished ones), from the WORKER_RUN_SAMPLE most recent. Averaged here, not in SQL, so
    the same query serves PostgreSQL and SQLite, whose date arithmetic differs."""
    rows = await conn.execute(
        sa.select(
            runs.c.status,
            runs.c.jobs_processed,
            runs.c.jobs_succeeded,
            runs.c.started_at,
            runs.c.finished_at,
        )
        .where(runs.c.started_at >= since)
        .order_by(runs.c.started_at.desc())
        .limit(WORKER_RUN_SAMPLE)
    )
    grouped: dict[str, list[tuple[int, int, float | None]]] = {}
    for status, processed, succeeded, started, finished in rows:
        took = (finished - started).total_seconds() if finished is not None else None
        grouped.setdefault(status, []).append((processed, succeeded, took))
    figures = []
    for status in WorkerRunStatus:
        entries = grouped.get(status.value)
        if not entries:
            continue
        durations = [took for _, _, took in entries if took is not None]
        figures.append(
            WorkerRunFigures(
                status=status,
                runs=len(entries),
                avg_jobs_processed=sum(e[0] for e in entries) / len(entries),
                avg_jobs_succeeded=sum(e[1] for e in entries) / len(entries),
                avg_duration=timedelta(seconds=sum(durations) / len(durations))
                if durations
                else timedelta(0),
            )
        )
    return figures


async def _job_list(
    conn: AsyncConnection,
    caller: Caller,
    job_filter: JobFilter,
    *,
    limit: int,
    after: PageCursor | None = None,
) -> list[Job]:
    conditions: list[sa.ColumnElement[bool]] = [visible_to(caller)]
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
        sa.select(*JOB_COLUMNS)
        .where(*conditions)
        .order_by(q.c.created_at.desc(), q.c.id.desc())
        .limit(limit)
    )
    rows = (await conn.execute(statement)).mappings().all()
    return [job_from_row(r) for r in rows]


async def _stats(conn: AsyncConnection, caller: Caller) -> QueueStats:
    rows = await conn.execute(
        sa.select(q.c.status, sa.func.count()).where(visible_to(caller)).group_by(q.c.status)
    )
    counts = {status: count for status, count in rows}
    return QueueStats(**{s.value: counts.get(s.value, 0) for s in JobStatus})


async def _pauses(conn: AsyncConnection, caller: Caller) -> list[QueuePause]:
    """Active pauses visible to `caller`, oldest first."""
    visible = (
        sa.true() if caller.sees_everything else pauses.c.user_id.in_([WHOLE_QUEUE, caller.user_id])
    )
    rows = await conn.execute(
        sa.select(*pauses.c).where(visible).order_by(pauses.c.paused_at, pauses.c.user_id)
    )
    return [pause_from_row(row) for row in rows.mappings()]


async def _recent_runs(conn: AsyncConnection, limit: int) -> list[WorkerRun]:
    rows = (
        (await conn.execute(sa.select(runs).order_by(runs.c.started_at.desc()).limit(limit)))
        .mappings()
        .all()
    )
    return [worker_run_from_row(r) for r in rows]


async def _api_disabled(conn: AsyncConnection, *, since: datetime) -> list[ApiDisabled]:
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


# The oldest open transaction of another session on this database. `clock_timestamp()`, not
# `now()`: the diagnostics snapshot itself began a moment ago, and age is measured to the present.
_OLDEST_TRANSACTION = sa.text(
    "SELECT clock_timestamp() - xact_start AS age, coalesce(state, '') AS state,"
    " coalesce(application_name, '') AS application"
    " FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    " AND xact_start IS NOT NULL"
    " ORDER BY xact_start LIMIT 1"
)
_QUEUE_DEAD_TUPLES = sa.text(
    "SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables WHERE relid = 'sync_queue'::regclass"
)


async def _vacuum_health(conn: AsyncConnection) -> VacuumHealth:
    """Dead tuples of the queue table and the oldest open transaction (PostgreSQL's statistics
    views; SQLite has no vacuum to hold back, so zeros). Sessions of other database users show
    their transaction start only to a superuser or a member of pg_read_all_stats."""
    if conn.dialect.name != "postgresql":
        return VacuumHealth()
    dead = (await conn.execute(_QUEUE_DEAD_TUPLES)).scalar_one()
    oldest = (await conn.execute(_OLDEST_TRANSACTION)).one_or_none()
    if oldest is None:
        return VacuumHealth(queue_dead_tuples=int(dead))
    return VacuumHealth(
        queue_dead_tuples=int(dead),
        oldest_transaction_age=max(oldest.age, timedelta(0)),
        oldest_transaction_state=oldest.state,
        oldest_transaction_application=oldest.application,
    )
