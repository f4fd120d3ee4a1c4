"""The pick stays cheap as the table grows: it reads the partial index of pending jobs.

Plan checks, not timings: with 50,000 finished jobs and a handful pending, PostgreSQL must
choose `ix_sync_queue_pick` (pending jobs only, in pick order) and
`ix_sync_queue_lease_expiry` (processing jobs by expiry) rather than scan the table; both for
the plan made for one execution's values and for the generic plan a prepared statement caches
(psycopg prepares a statement after a few executions). The generic plan can use the partial
indexes only if the statuses they name are literals in the SQL, not parameters.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from queue_service.drivers import Moment, PickParams
from queue_service.drivers.postgres import PICK_LEASED_SQL, PICK_SQL
from queue_service.tables import sync_queue
from sync_service.tables import gmb_accounts

FINISHED = 50_000
# The full pick (PickJobs' default view) and a worker's (JOB_VIEW_WORKER): they differ only
# in what they return, and each must keep the plan.
PICKS = pytest.mark.parametrize("pick_sql", [PICK_SQL, PICK_LEASED_SQL], ids=["full", "leased"])


async def _seed(engine: AsyncEngine, now: datetime) -> None:
    """50,000 succeeded jobs and 5 pending ones, analysed."""
    accounts = [uuid.uuid4() for _ in range(100)]
    async with engine.begin() as conn:
        await conn.execute(
            sa.insert(gmb_accounts),
            [
                {
                    "id": a,
                    "user_id": uuid.uuid4(),
                    "account_name": f"Shop {i}",
                    "google_account_id": f"accounts/{i + 1}",
                    "is_active": True,
                    "created_at": now,
                    "updated_at": now,
                }
                for i, a in enumerate(accounts)
            ],
        )
        rows = [
            {
                "id": uuid.uuid4(),
                "user_id": uuid.uuid4(),
                "account_id": accounts[i % 100],
                "sync_type": "full",
                "status": "succeeded",
                "attempts": 1,
                "max_attempts": 3,
                "metadata": {},
                "trace_context": {},
                "errors": [],
                "created_at": now - timedelta(seconds=i),
                "updated_at": now,
                "started_at": now - timedelta(seconds=i),
                "completed_at": now,
            }
            for i in range(FINISHED)
        ]
        await conn.execute(sa.insert(sync_queue), rows)
        await conn.execute(
            sa.insert(sync_queue),
            [
                {
                    **row,
                    "id": uuid.uuid4(),
                    "status": "pending",
                    "attempts": 0,
                    "started_at": None,
                    "completed_at": None,
                    "account_id": accounts[i],
                }
                for i, row in enumerate(rows[:5])
            ],
        )
    async with engine.connect() as conn:
        await conn.execute(sa.text("ANALYZE sync_queue"))
        await conn.commit()


def _pick(store: Any, now: datetime, sql: str) -> tuple[str, dict[str, Any]]:
    """The pick's SQL, as psycopg sends it (`%(name)s` placeholders), and its parameters."""
    params = store.driver.pick_params(
        PickParams(max_jobs=10, lease=timedelta(seconds=60), worker_id="planner"),
        Moment(now=now),
    )
    return sql, params


def _assert_reads_the_partial_indexes(plan: list[str]) -> None:
    text = "\n".join(plan)
    assert "ix_sync_queue_pick" in text, text
    # (sync_queue_pauses, a handful of rows read once per pick into a hash, may be scanned.)
    assert not re.search(r"Seq Scan on sync_queue\b(?!_)", text), text
    # The pause checks are evaluated once per statement, not once per job.
    assert "One-Time Filter" in text and "hashed SubPlan" in text, text
    # Expired leases are found by their own partial index, not by scanning processing jobs.
    assert "ix_sync_queue_lease_expiry" in text, text


def _literal(value: Any) -> str:
    """A parameter written as an SQL literal, for EXECUTE."""
    if value is None:
        return "NULL"
    if isinstance(value, bool | int):
        return str(value).lower()
    if isinstance(value, timedelta):
        return f"'{value.total_seconds()} seconds'"
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'"
    return "'" + str(value).replace("'", "''") + "'"


@PICKS
async def test_the_pick_reads_the_partial_index_of_pending_jobs(pg_queue, pick_sql):
    engine = pg_queue.app.engine
    now = datetime.now(UTC)
    await _seed(engine, now)
    sql, params = _pick(pg_queue.app.store, now, pick_sql)

    async with engine.connect() as conn:
        plan = (await conn.exec_driver_sql(f"EXPLAIN {sql}", params)).scalars().all()
        await conn.rollback()

    _assert_reads_the_partial_indexes(plan)


@PICKS
async def test_the_generic_plan_of_the_prepared_pick_reads_the_partial_indexes(pg_queue, pick_sql):
    engine = pg_queue.app.engine
    now = datetime.now(UTC)
    await _seed(engine, now)
    sql, params = _pick(pg_queue.app.store, now, pick_sql)
    names: list[str] = []

    def positional(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    prepared = re.sub(r"%\((\w+)\)s", positional, sql)
    arguments = ", ".join(_literal(params[name]) for name in names)

    async with engine.connect() as conn:
        await conn.exec_driver_sql(f"PREPARE pick AS {prepared}")
        # The plan psycopg's prepared statement may settle on: one for any parameter values.
        await conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        plan = (await conn.exec_driver_sql(f"EXPLAIN EXECUTE pick({arguments})")).scalars().all()
        await conn.rollback()

    assert any("Scan" in line for line in plan), plan
    _assert_reads_the_partial_indexes(plan)
