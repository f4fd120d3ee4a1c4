"""Fixtures every test shares: a real PostgreSQL database per test session, SQLite files, auth.

Each pytest process creates its own database (`gmbsync_test_<pid>`) on the server named by
TEST_DATABASE_URL, migrates it once, and empties its tables before each test that asks for it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import migrations
from migrations.scratch import scratch_database
from service_runtime.auth import AuthSettings, Role, issue_token

TEST_JWT_SECRET = "test-jwt-secret-that-is-long-enough-for-hs256"
TEST_TRIGGER_SECRET = "test-trigger-secret"


@pytest.fixture(scope="session")
def auth_settings() -> AuthSettings:
    return AuthSettings(jwt_secret=TEST_JWT_SECRET, trigger_secret=TEST_TRIGGER_SECRET)


def bearer(
    user_id: uuid.UUID | str, role: Role | str = Role.AUTHENTICATED
) -> tuple[tuple[str, str]]:
    """Call metadata for a user with the given role."""
    token = issue_token(TEST_JWT_SECRET, user_id=user_id, role=role)
    return (("authorization", f"Bearer {token}"),)


WORKER_METADATA = (("x-trigger-secret", TEST_TRIGGER_SECRET),)
ADMIN_USER = uuid.UUID("00000000-0000-4000-8000-00000000ad01")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A migrated PostgreSQL database of this test session's own; dropped at the end."""
    with scratch_database("gmbsync_test") as url:
        yield url


TABLES_IN_DELETE_ORDER = (
    "sync_queue",
    "sync_worker_runs",
    "error_logs",
    "sync_status",
    "oauth_tokens",
)


def _truncate_all(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        names = sa.inspect(conn).get_table_names()
        names = [n for n in names if n != "alembic_version"]
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("TRUNCATE " + ", ".join(f'"{n}"' for n in names) + " CASCADE"))
        else:
            ordered = [n for n in TABLES_IN_DELETE_ORDER if n in names]
            ordered += [n for n in names if n not in ordered and n != "gmb_accounts"]
            for name in [*ordered, "gmb_accounts"]:
                if name in names:
                    conn.execute(sa.text(f'DELETE FROM "{name}"'))
    engine.dispose()


@pytest.fixture
def pg_url(postgres_url: str) -> str:
    """The session's PostgreSQL database, emptied for this test."""
    _truncate_all(postgres_url)
    return postgres_url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh migrated SQLite file for this test."""
    url = f"sqlite:///{tmp_path / 'gmbsync.db'}"
    migrations.upgrade(url)
    return url


@pytest.fixture(params=["postgresql", "sqlite"])
def any_db_url(request: pytest.FixtureRequest) -> str:
    """Runs a test once on PostgreSQL and once on SQLite: the stores pass one shared suite."""
    fixture = "pg_url" if request.param == "postgresql" else "sqlite_url"
    return request.getfixturevalue(fixture)
