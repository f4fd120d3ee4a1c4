"""Database engines for PostgreSQL (psycopg 3) and the embedded SQLite default.

`DATABASE_URL` is an SQLAlchemy URL. Services use the async engine; migrations the sync one;
both are derived from the same URL so that operators set it once.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

DEFAULT_SQLITE_PATH = Path("var") / "gmbsync.db"
DEFAULT_DATABASE_URL = f"sqlite:///./{DEFAULT_SQLITE_PATH.as_posix()}"

# SQLite: wait for the write lock instead of failing at once with "database is locked".
_SQLITE_BUSY_TIMEOUT_MS = 10_000


def database_url_from_env() -> str:
    return os.environ.get("DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL


def async_url(url: str | URL) -> URL:
    """The URL with the async driver of its database: psycopg 3 or aiosqlite."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    raise ValueError(f"DATABASE_URL: unsupported database {backend!r} (use postgresql or sqlite)")


def sync_url(url: str | URL) -> URL:
    """The URL with the blocking driver of its database, for migrations."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return parsed.set(drivername="sqlite")
    raise ValueError(f"DATABASE_URL: unsupported database {backend!r} (use postgresql or sqlite)")


def ensure_sqlite_directory(url: str | URL) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def configure_sqlite(engine: Engine) -> None:
    """WAL, foreign keys, a busy timeout, and `BEGIN IMMEDIATE` for every transaction.

    pysqlite's own transaction handling starts transactions lazily and as DEFERRED, so two
    transactions that read then write can deadlock on the upgrade to a write lock. Taking the
    write lock at BEGIN serialises writers up front (SQLAlchemy's documented recipe).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):  # type: ignore[no-untyped-def]
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine_async(url: str | URL, *, pool_size: int = 10) -> AsyncEngine:
    """The async engine the services use."""
    target = async_url(url)
    if target.get_backend_name() == "sqlite":
        ensure_sqlite_directory(target)
        engine = create_async_engine(target)
        configure_sqlite(engine.sync_engine)
        return engine
    return create_async_engine(
        target,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
    )
