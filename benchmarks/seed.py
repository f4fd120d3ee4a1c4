"""Bulk set-up of the scratch database for the benchmarks: accounts, jobs, table state.

Accounts are SyncService's `gmb_accounts` rows, written directly as the tests write them; jobs
are written by one `INSERT ... SELECT ... generate_series` where a figure needs a table already
full (the queue's own enqueue is measured separately). Everything here is set-up, never timed.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg

from benchmarks.rawsql import libpq_url


class Seeder:
    def __init__(self, database_url: str) -> None:
        self.dsn = libpq_url(database_url)

    def _run(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def accounts(self, count: int, users: Sequence[uuid.UUID]) -> list[str]:
        """`count` active accounts, dealt round-robin to `users`; their ids in creation order."""
        rows = self._run(
            """
            INSERT INTO gmb_accounts (id, user_id, account_name, google_account_id, is_active,
                                      created_at, updated_at)
            SELECT gen_random_uuid(), (%(users)s::uuid[])[1 + (i %% %(n_users)s)],
                   'Bench ' || i, 'accounts/bench-' || i, true, now(), now()
            FROM generate_series(0, %(count)s - 1) AS i
            RETURNING id, user_id
            """,
            {"users": list(users), "n_users": len(users), "count": count},
        )
        return [str(row[0]) for row in rows]

    def owners(self, accounts: Sequence[str]) -> dict[str, str]:
        rows = self._run(
            "SELECT id, user_id FROM gmb_accounts WHERE id = ANY(%s::uuid[])", (list(accounts),)
        )
        return {str(a): str(u) for a, u in rows}

    def truncate_jobs(self) -> None:
        """An empty queue table, as if new: the next figure does not pay for the last one's
        dead rows (autovacuum may be off on a development server)."""
        self._run("TRUNCATE sync_queue")
        self._run("VACUUM ANALYZE sync_queue")

    def pending_jobs(self, accounts: Sequence[str]) -> int:
        """One pending job per account, created now in account order."""
        rows = self._run(
            """
            INSERT INTO sync_queue (id, user_id, account_id, sync_type, status, priority,
                                    attempts, max_attempts, metadata, created_at, updated_at,
                                    trace_context, errors)
            SELECT gen_random_uuid(), a.user_id, a.id, 'full', 'pending', 0, 0, 3, '{}'::jsonb,
                   clock_timestamp(), clock_timestamp(), '{}'::jsonb, '[]'::jsonb
            FROM gmb_accounts a WHERE a.id = ANY(%s::uuid[])
            RETURNING 1
            """,
            (list(accounts),),
        )
        self._run("ANALYZE sync_queue")
        return len(rows)

    def finished_jobs(self, accounts: Sequence[str], count: int) -> None:
        """`count` succeeded jobs spread over `accounts`, finished over the last 30 days.

        The accounts exist, so the foreign-key check per row is skipped where the server lets
        this connection do so (a superuser's `session_replication_role`): a million rows then
        take half the time.
        """
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            with contextlib.suppress(psycopg.Error):
                conn.execute("SET session_replication_role = replica")
            conn.execute(
                """
            INSERT INTO sync_queue (id, user_id, account_id, sync_type, status, priority,
                                    attempts, max_attempts, metadata, created_at, updated_at,
                                    started_at, completed_at, worker_id, trace_context, errors,
                                    result)
            SELECT gen_random_uuid(), a.user_id, a.id, 'full', 'succeeded', 0, 1, 3,
                   '{}'::jsonb, t, t, t, t + interval '1 second', 'bench-history',
                   '{}'::jsonb, '[]'::jsonb, '{"reviews_added": 0}'::jsonb
            FROM generate_series(0, %(count)s - 1) AS i
            CROSS JOIN LATERAL (SELECT (%(accounts)s::uuid[])[1 + i %% %(n)s] AS id) AS pick
            JOIN gmb_accounts a ON a.id = pick.id
            CROSS JOIN LATERAL (SELECT now() - interval '30 days' * random() AS t) AS at
            """,
                {"accounts": list(accounts), "n": len(accounts), "count": count},
            )

    def scalar(self, sql: str, params: Any = None) -> Any:
        rows = self._run(sql, params)
        return rows[0][0] if rows else None

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self._run(sql, params)
