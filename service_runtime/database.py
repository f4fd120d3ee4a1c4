"""Database engines for PostgreSQL (psycopg 3) and the embedded SQLite default.

`DATABASE_URL` is an SQLAlchemy URL. Services use the async engine; migrations the sync one;
both are derived from the same URL so that operators set it once. `DB_POOL_SIZE`,
`DB_MAX_OVERFLOW` and `DB_POOL_TIMEOUT` size the services' connection pool.

`database_trouble` says which failures are the database's passing trouble (unreachable, a
connection lost, every pooled connection busy) rather than a bug: the serving runtime answers
them UNAVAILABLE with a retry delay, never INTERNAL.

Pooled connections are not pinged before use: a ping is a round trip on every checkout, and
connections die only when the database restarts or the network drops them. Instead a statement
that fails because its connection died is recognised as a disconnect (`handle_error` below),
which invalidates that connection *and every connection opened before it*, so only the calls
already running on dead connections fail (with UNAVAILABLE, which clients retry) and the next
ones reconnect. `pool_recycle` replaces connections before idle timeouts of proxies and NAT
gateways (typically 350 s or more) can cut them, and `pool_use_lifo` keeps reusing the most
recent connections so that a quiet service holds few of them.

`read_engine(engine)` is the same pool for calls that only read: no BEGIN/ROLLBACK around them.
`connect_with(engine, isolation_level=...)` sets a connection's options for one checkout. A call
cancelled at any await (a caller's deadline) leaves no connection checked out and none with
settings that a writer would inherit (tests/cancellation.py sweeps them).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy.exc
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, ExceptionContext, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from service_runtime import fastjson
from service_runtime.config import ConfigError, Env
from service_runtime.errors import ServiceReason

log = logging.getLogger(__name__)

DEFAULT_SQLITE_PATH = Path("var") / "gmbsync.db"
DEFAULT_DATABASE_URL = f"sqlite:///./{DEFAULT_SQLITE_PATH.as_posix()}"

# SQLite: wait for the write lock instead of failing at once with "database is locked".
_SQLITE_BUSY_TIMEOUT_MS = 10_000

# Seconds a pooled connection lives before it is replaced at its next checkout: below the idle
# timeouts of NAT gateways and load balancers (350 s on AWS), so none of them cuts it first.
POOL_RECYCLE_SECONDS = 300

# SQLSTATEs that mean the connection is gone even when the driver has not noticed yet:
# class 08 (connection exception) and the server going down (admin or crash shutdown,
# "cannot connect now" while it starts or stops).
_DISCONNECT_SQLSTATE_CLASSES = ("08",)
_DISCONNECT_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})

# Execution option that marks the connections of `read_engine`.
READS_ONLY_OPTION = "gmbsync_reads_only"


def database_url_from_env(env: Env | None = None) -> str:
    """DATABASE_URL, checked: a URL of PostgreSQL or SQLite, or ConfigError (which never repeats
    the URL: it may hold a password)."""
    # The process's own DATABASE_URL stands behind a mapping that does not set one, as it
    # always has: settings read from a partial mapping still find the database.
    process = Env().parsed(
        "DATABASE_URL", DEFAULT_DATABASE_URL, kind="database_url", parse=_checked_database_url
    )
    if env is None:
        return process
    return env.parsed("DATABASE_URL", process, kind="database_url", parse=_checked_database_url)


def _checked_database_url(raw: str) -> str:
    try:
        backend = make_url(raw).get_backend_name()
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise ConfigError(
            "DATABASE_URL is not a database URL (postgresql+psycopg://user:password@host/db "
            "or sqlite:///path)"
        ) from None
    if backend not in ("postgresql", "sqlite"):
        raise ConfigError(
            f"DATABASE_URL: unsupported database {backend!r} (use postgresql or sqlite)"
        )
    return raw


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
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        # Reads of `read_engine` run without a transaction: in WAL mode they never wait for
        # the write lock, which BEGIN IMMEDIATE would make them do.
        if not connection.get_execution_options().get(READS_ONLY_OPTION):
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    @event.listens_for(engine, "invalidate")
    def _on_invalidate(dbapi_connection, _record, _error):
        # SQLAlchemy invalidates a connection whose statement was cut off (a cancelled call)
        # and closes it; but SQLite closes a connection whose statement is unfinished only
        # once that statement is freed, by the garbage collector, and until then its
        # transaction holds the write lock: every writer waited for the busy timeout and
        # failed. Rolling back first ends the transaction at once.
        try:
            dbapi_connection.rollback()
        except Exception:  # a connection being discarded may be past rolling back
            log.debug("rolling back an invalidated SQLite connection failed", exc_info=True)


def is_disconnect_error(error: BaseException) -> bool:
    """Whether a driver error says the connection (or the server behind it) is gone."""
    sqlstate = getattr(error, "sqlstate", None) or ""
    return sqlstate.startswith(_DISCONNECT_SQLSTATE_CLASSES) or sqlstate in _DISCONNECT_SQLSTATES


def recover_from_disconnects(engine: Engine) -> None:
    """Treats every error that says the connection died as a disconnect.

    psycopg flags most of them itself (a closed or broken connection); this also catches those
    it reports by SQLSTATE alone. A disconnect invalidates the pool (SQLAlchemy's default for
    `invalidate_pool_on_disconnect`): each connection older than the error is replaced at its
    next checkout instead of failing a call of its own.
    """

    @event.listens_for(engine, "handle_error")
    def _on_error(context: ExceptionContext) -> None:
        if not context.is_disconnect and is_disconnect_error(context.original_exception):
            context.is_disconnect = True


# PostgreSQL's values of `plan_cache_mode`.
PLAN_CACHE_MODES = ("auto", "force_generic_plan", "force_custom_plan")

# Longer than any transaction of the services lasts; a session idle inside one this long is lost.
IDLE_IN_TRANSACTION_TIMEOUT = timedelta(seconds=60)


@dataclass(frozen=True)
class PoolSettings:
    """The connection pool of a service's database engine.

    A request that finds every connection busy waits up to `timeout` for one, then is answered
    UNAVAILABLE (DATABASE_BUSY) with a retry delay: kept below the clients' usual 10 s deadline,
    so that they learn the server is overloaded instead of timing out.
    """

    size: int = 10
    # Connections opened beyond `size` under load and closed when returned; None: as many
    # as `size`. 0 by default: a burst of requests waits a moment for a pooled connection
    # instead of opening (and closing) PostgreSQL sessions, which costs more than the wait.
    max_overflow: int | None = 0
    timeout: timedelta = timedelta(seconds=5)
    # PostgreSQL ends a session of ours left idle inside a transaction this long (its
    # `idle_in_transaction_session_timeout`): a forgotten transaction would hold a snapshot
    # and keep vacuum from cleaning the queue. None leaves the server's setting.
    idle_in_transaction_timeout: timedelta | None = IDLE_IN_TRANSACTION_TIMEOUT
    # PostgreSQL's `plan_cache_mode` for the statements psycopg prepares (those a connection
    # runs often). The queue's statements are few and fixed but long: PostgreSQL's `auto`
    # keeps planning them anew (planning the enqueue cost 1.4 ms, twice its execution),
    # while their generic plans use the same indexes. None leaves the server's setting.
    plan_cache_mode: str | None = "force_generic_plan"

    @classmethod
    def from_env(cls, env: Env | None = None) -> PoolSettings:
        env = env or Env()
        size = env.int("DB_POOL_SIZE", cls.size, minimum=1, maximum=1000)
        return cls(
            size=size,
            max_overflow=env.int("DB_MAX_OVERFLOW", 0, minimum=0, maximum=1000),
            timeout=env.duration(
                "DB_POOL_TIMEOUT",
                cls.timeout,
                minimum=timedelta(milliseconds=10),
                maximum=timedelta(minutes=5),
            ),
            idle_in_transaction_timeout=env.duration(
                "DB_IDLE_IN_TRANSACTION_TIMEOUT",
                IDLE_IN_TRANSACTION_TIMEOUT,
                minimum=timedelta(milliseconds=100),
                maximum=timedelta(days=1),
            ),
            plan_cache_mode=env.choice(
                "DB_PLAN_CACHE_MODE", "force_generic_plan", choices=PLAN_CACHE_MODES
            ),
        )


def create_engine_async(url: str | URL, *, pool: PoolSettings | None = None) -> AsyncEngine:
    """The async engine the services use."""
    pool = pool or PoolSettings()
    sizing = {
        "pool_size": pool.size,
        "max_overflow": pool.size if pool.max_overflow is None else pool.max_overflow,
        "pool_timeout": pool.timeout.total_seconds(),
    }
    target = async_url(url)
    if target.get_backend_name() == "sqlite":
        ensure_sqlite_directory(target)
        engine = create_async_engine(target, **sizing)
        configure_sqlite(engine.sync_engine)
        return engine
    options = []
    if pool.idle_in_transaction_timeout is not None:
        timeout_ms = max(1, int(pool.idle_in_transaction_timeout.total_seconds() * 1000))
        options.append(f"-c idle_in_transaction_session_timeout={timeout_ms}")
    if pool.plan_cache_mode is not None:
        options.append(f"-c plan_cache_mode={pool.plan_cache_mode}")
    connect_args = {"options": " ".join(options)} if options else {}
    engine = create_async_engine(
        target,
        **sizing,
        connect_args=connect_args,
        pool_recycle=POOL_RECYCLE_SECONDS,
        pool_use_lifo=True,
        # psycopg decodes and encodes JSON columns with these (SQLite's dialect does its own).
        json_serializer=fastjson.dumps,
        json_deserializer=fastjson.loads,
    )
    recover_from_disconnects(engine.sync_engine)
    return engine


# SQLite's OperationalErrors that pass: a writer holding the lock, a file briefly unreachable.
_SQLITE_PASSING = ("locked", "busy", "disk i/o", "unable to open")

# How long a client should wait before sending a request again.
DATABASE_UNAVAILABLE_RETRY_AFTER = 0.5
DATABASE_BUSY_RETRY_AFTER = 1.0


@dataclass(frozen=True, slots=True)
class DatabaseTrouble:
    """A failure that is the database's passing trouble, and what to tell the client."""

    reason: ServiceReason
    message: str
    retry_after: float
    # The driver's own words, for the log (never the SQL or its parameters).
    detail: str


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def database_trouble(error: BaseException) -> DatabaseTrouble | None:
    """The database trouble behind `error`, or None when it is something else (a bug, bad
    data): a pool with no free connection in time, or a database that cannot be reached or
    dropped the connection (OperationalError: also deadlocks and lock timeouts, which pass
    too; InterfaceError; any error after which SQLAlchemy found the connection dead)."""
    if isinstance(error, sqlalchemy.exc.TimeoutError):
        return DatabaseTrouble(
            ServiceReason.DATABASE_BUSY,
            "every database connection of this server is busy; retry after the delay",
            DATABASE_BUSY_RETRY_AFTER,
            _first_line(error),
        )
    unavailable = isinstance(
        error,
        (
            sqlalchemy.exc.OperationalError,
            sqlalchemy.exc.InterfaceError,
            psycopg.OperationalError,
            psycopg.InterfaceError,
            sqlite3.OperationalError,
        ),
    ) or (isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated)
    if not unavailable:
        return None
    cause = (error.orig or error) if isinstance(error, sqlalchemy.exc.DBAPIError) else error
    if isinstance(cause, sqlite3.OperationalError) and not any(
        sign in str(cause).lower() for sign in _SQLITE_PASSING
    ):
        return None  # "no such table" and the like: SQLite's OperationalError is broad
    return DatabaseTrouble(
        ServiceReason.DATABASE_UNAVAILABLE,
        "the database is unavailable for the moment; retry after the delay",
        DATABASE_UNAVAILABLE_RETRY_AFTER,
        _first_line(cause),
    )


def read_engine(engine: AsyncEngine) -> ReadEngine:
    """`engine`'s pool, for calls that only read (see `ReadEngine`)."""
    return ReadEngine(engine)


class ReadEngine:
    """`engine`'s pool, for calls that only read: each statement commits on its own.

    PostgreSQL: AUTOCOMMIT, so no BEGIN before and no ROLLBACK after a read; at READ COMMITTED
    every statement takes its own snapshot anyway, so a read-only call loses no consistency.
    SQLite: no BEGIN IMMEDIATE, so reads never queue for the write lock; statements of one call
    may then see different commits. Never write through it: each write would commit at once.
    Connections go back to the pool with their usual transactional settings.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._options: dict[str, Any] = {READS_ONLY_OPTION: True}
        if engine.dialect.name != "sqlite":
            self._options["isolation_level"] = "AUTOCOMMIT"

    def connect(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return connect_with(self.engine, **self._options)


@asynccontextmanager
async def connect_with(engine: AsyncEngine, **options: Any) -> AsyncIterator[AsyncConnection]:
    """A pooled connection with execution `options` (an isolation level...) for this checkout
    only; it goes back to the pool with the pool's own settings.

    The options are set on a connection already ours. Set through an engine's options,
    SQLAlchemy applies them while it builds the connection: a cancellation landing there
    (psycopg may yield to the loop while it switches) left the checked-out connection with no
    owner to return it.
    """
    async with engine.connect() as conn:
        try:
            await conn.execution_options(**options)
        except BaseException:
            # Cut off while switching, the driver's setting is unknown and SQLAlchemy does not
            # know to reset it: such a connection must never reach a writer. It is closed, not
            # pooled; the pool opens a fresh one when it needs one.
            await _to_completion(conn.invalidate())
            raise
        yield conn


async def _to_completion(step: Awaitable[None]) -> None:
    """Runs `step` to its end even if the caller is cancelled again meanwhile; the
    cancellation is raised after it."""
    task = asyncio.ensure_future(step)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as error:
            cancelled = error
    task.result()
    if cancelled is not None:
        raise cancelled
