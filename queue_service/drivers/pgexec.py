"""The hot statements run on psycopg's own cursor of a pooled SQLAlchemy connection.

SQLAlchemy's result layer builds a row-metadata object from a statement's columns on every
execution of a textual statement (nothing caches it for `exec_driver_sql`), then wraps each
row twice. For the enqueue's 28 columns that was about 100 µs of CPU a statement, 15 % of an
enqueue through the store (501 -> 425 µs, measured A/B in one process). Here psycopg builds
plain dicts straight from its rows, on the same connection, inside whatever transaction (or
autocommit) SQLAlchemy set up for it.

A failure reaches the callers exactly as it would through SQLAlchemy: wrapped in its
`DBAPIError` subclasses (`IntegrityError`, `OperationalError`...), and when it says the
connection died, that connection is invalidated along with every pooled connection as old as
it (SQLAlchemy's own response to a disconnect), and the error says `connection_invalidated`,
so `reconnect.retried_on_disconnect` runs the operation again on a fresh connection.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.pq import ExecStatus
from psycopg.rows import dict_row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from service_runtime.database import is_disconnect_error

Row = dict[str, Any]

TUPLES_OK = ExecStatus.TUPLES_OK


async def fetch_rows(conn: AsyncConnection, sql: str, params: Mapping[str, Any]) -> list[Row]:
    """Every row `sql` returns (none for a statement without RETURNING), as dicts."""
    pooled = await conn.get_raw_connection()
    driver_conn: psycopg.AsyncConnection[Any] = pooled.driver_connection  # type: ignore[assignment]
    try:
        async with driver_conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(sql, params)
            # Asked of the result's status, not of `cursor.description`, which builds a column
            # object per column on every call: 28 of them for an enqueue.
            result = cursor.pgresult
            if result is None or result.status != TUPLES_OK:
                return []
            return await cursor.fetchall()
    except psycopg.Error as exc:
        disconnect = driver_conn.closed or driver_conn.broken or is_disconnect_error(exc)
        if disconnect:
            # What SQLAlchemy does on a disconnect (`invalidate_pool_on_disconnect`): pooled
            # connections older than this one are replaced at their next checkout, so a retry
            # gets a live connection rather than the next dead one.
            conn.sync_engine.pool._invalidate(pooled, exc, _checkin=False)
            await conn.invalidate(exc)
        raise DBAPIError.instance(
            sql, dict(params), exc, psycopg.Error, connection_invalidated=disconnect
        ) from exc


async def fetch_one(conn: AsyncConnection, sql: str, params: Mapping[str, Any]) -> Row | None:
    """The first row `sql` returns, or None."""
    rows = await fetch_rows(conn, sql, params)
    return rows[0] if rows else None
