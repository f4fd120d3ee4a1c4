"""The queue's database drivers: `QueueDriver` (base.py) on PostgreSQL and on SQLite.

`driver_for` is the one place that looks at which database an engine talks to.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from queue_service.drivers.base import JobsAvailable, Moment, PickParams, QueueDriver
from queue_service.lifecycle import RetryPolicy


def driver_for(
    engine: AsyncEngine,
    *,
    retry_policy: RetryPolicy | None = None,
    on_jobs_available: JobsAvailable | None = None,
) -> QueueDriver:
    """The driver of `engine`'s database.

    `on_jobs_available(count)` hears of ready jobs this process made, after their commit, where
    the database has no notifications of its own (SQLite); on PostgreSQL every replica hears
    them through its listener instead.
    """
    if engine.dialect.name == "postgresql":
        from queue_service.drivers.postgres import PostgresDriver

        return PostgresDriver(
            engine, retry_policy=retry_policy, on_jobs_available=on_jobs_available
        )
    if engine.dialect.name == "sqlite":
        from queue_service.drivers.sqlite import SqliteDriver

        return SqliteDriver(engine, retry_policy=retry_policy, on_jobs_available=on_jobs_available)
    raise ValueError(f"no queue driver for {engine.dialect.name!r}")


__all__ = ["Moment", "PickParams", "QueueDriver", "driver_for"]
