"""The pick stays cheap as the table grows: it reads the partial index of pending jobs.

A plan check, not a timing: with 50,000 finished jobs and a handful pending, PostgreSQL must
choose `ix_sync_queue_pick` (pending jobs only, in pick order) rather than scan the table.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from queue_service.drivers import Moment, PickParams
from queue_service.tables import sync_queue
from sync_service.tables import gmb_accounts

FINISHED = 50_000


async def test_the_pick_reads_the_partial_index_of_pending_jobs(pg_queue):
    engine, store = pg_queue.app.engine, pg_queue.app.store
    now = datetime.now(UTC)
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
        driver = store.driver
        params = driver.pick_params(
            PickParams(max_jobs=10, lease=timedelta(seconds=60), worker_id="planner"),
            Moment(now=now),
        )
        compiled = driver.pick_sql.compile(dialect=engine.dialect)
        bound = compiled.construct_params(params)
        plan = (await conn.exec_driver_sql(f"EXPLAIN {compiled}", bound)).scalars().all()
        await conn.rollback()

    text = "\n".join(plan)
    assert "ix_sync_queue_pick" in text, text
    assert "Seq Scan on sync_queue" not in text, text
    # Expired leases are found by their own partial index, not by scanning processing jobs.
    assert "ix_sync_queue_lease_expiry" in text, text
