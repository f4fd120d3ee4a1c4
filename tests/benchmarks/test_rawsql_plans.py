"""PostgreSQL's own limit is only a limit if its statements take the queue's fastest path.

The raw pick of `benchmarks/rawsql.py` once ordered jobs in an order the pick index no longer
had: every raw pick read and sorted the whole backlog, and `make bench` reported a limit 3-4
times too low. Its plan must read `ix_sync_queue_pick` in order, with nothing sorted.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.rawsql import LEASE, PICK_SQL, RawQueue, libpq_url
from service_runtime.database import create_engine_async
from tests.queue.helpers import insert_accounts


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


async def test_the_raw_pick_reads_the_pick_index_in_order_and_sorts_nothing(pg_url: str):
    engine = create_engine_async(pg_url)
    try:
        accounts = await insert_accounts(engine, uuid.uuid4(), 3_000, datetime.now(UTC))
    finally:
        await engine.dispose()
    async with await psycopg.AsyncConnection.connect(libpq_url(pg_url), autocommit=True) as conn:
        assert await RawQueue.enqueue_many(conn, [str(a) for a in accounts]) == 3_000
        # Several priorities and fair keys: an index in another order would have to be sorted.
        await conn.execute(
            "UPDATE sync_queue SET priority = (fair_key % 3), fair_key = (random() * 50)::int"
        )
        await conn.execute("ANALYZE sync_queue")
        # Prepared, as psycopg prepares a statement it runs often: a custom plan for these
        # values, then the generic plan a prepared statement settles on.
        prepared = PICK_SQL
        for number, name in enumerate(("now", "n", "expires", "worker_id", "run_id"), start=1):
            prepared = prepared.replace(f"%({name})s", f"${number}")
        await conn.execute(
            f"PREPARE raw_pick (timestamptz, int, timestamptz, text, uuid) AS {prepared}"
        )
        now = datetime.now(UTC)
        for mode in ("force_custom_plan", "force_generic_plan"):
            await conn.execute(f"SET plan_cache_mode = {mode}")
            # EXECUTE takes no bind parameters: the values go in as literals.
            explain = sql.SQL("EXPLAIN (FORMAT JSON) EXECUTE raw_pick ({}, 64, {}, 'w', NULL)")
            cursor = await conn.execute(explain.format(sql.Literal(now), sql.Literal(now + LEASE)))
            row = await cursor.fetchone()
            assert row is not None
            nodes = _nodes(row[0][0]["Plan"])

            assert not [n for n in nodes if n["Node Type"] in ("Sort", "Incremental Sort")], mode
            assert any(n.get("Index Name") == "ix_sync_queue_pick" for n in nodes), mode
