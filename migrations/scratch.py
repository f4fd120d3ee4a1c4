"""Throwaway PostgreSQL databases for tests and benchmarks, at the newest schema or empty.

They are made on the server named by TEST_DATABASE_URL (default: the local server's `postgres`
database, trust auth), each with a unique name, and dropped afterwards even if connections to
them are still open.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from migrations import upgrade

DEFAULT_SERVER_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def postgres_server_url() -> URL:
    """Where scratch databases are made: TEST_DATABASE_URL, or the local server."""
    return make_url(os.environ.get("TEST_DATABASE_URL") or DEFAULT_SERVER_URL).set(
        drivername="postgresql+psycopg"
    )


def drop_database(name: str) -> None:
    """Drops a database at once, closing every connection to it."""
    admin = sa.create_engine(postgres_server_url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextmanager
def scratch_database(prefix: str, *, migrate: bool = True) -> Iterator[str]:
    """A new database named `<prefix>_<pid>_<random>`; yields its URL; drops it afterwards."""
    server = postgres_server_url()
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        if migrate:
            upgrade(url)
        yield url
    finally:
        drop_database(name)
