"""The migrations build exactly the schema the code declares, both ways, on both databases.

Upgrading to head, downgrading to base and upgrading again must work; the migrated schema must
equal the table definitions (`service_runtime.sqltypes.metadata`). No test assumes which
revision is the head: revisions are added by other changes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

import migrations
import queue_service.tables  # (also declares its tables on the shared metadata)
import sync_service.tables  # noqa: F401
from service_runtime.sqltypes import metadata
from tests.queue.helpers import scratch_postgres_database

REPO_ROOT = Path(__file__).resolve().parent.parent


def head_revision() -> str:
    [head] = ScriptDirectory.from_config(migrations.alembic_config("sqlite://")).get_heads()
    return head


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database nobody else uses: a scratch PostgreSQL database, or an SQLite file."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrations.db'}"
        return
    with scratch_postgres_database("gmbsync_migrations") as url:
        yield url


def table_names(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def schema_differences(url: str) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), metadata)
            dialect = conn.dialect.name
    finally:
        engine.dispose()
    if dialect == "sqlite":
        diffs = drop_sqlite_desc_index_artefacts(diffs)
    return diffs


def _index_shape(index: sa.Index) -> tuple[str | None, str | None, bool, tuple[str, ...]]:
    """Table, name, uniqueness and column names of an index, with any ASC/DESC dropped."""
    columns = []
    for element in index.expressions:
        name = getattr(element, "name", None)
        if name is None:
            name = str(getattr(element, "text", element))
        columns.append(re.sub(r"\s+(ASC|DESC)$", "", name.strip(), flags=re.IGNORECASE))
    table = index.table.name if index.table is not None else None
    return (table, index.name, bool(index.unique), tuple(columns))


def drop_sqlite_desc_index_artefacts(diffs: list[Any]) -> list[Any]:
    """Drops the remove/add pair SQLite reports for an index with a DESC column, nothing else.

    SQLite's reflection does not give back a column's sort order, so `ix_sync_queue_pick`
    (`priority DESC, created_at, id`) comes back as plain `priority, created_at, id`, and Alembic
    reports the very same index as removed and added again. A pair is dropped only when both sides
    have the same table, name, uniqueness and columns once ASC/DESC is ignored; a missing, extra,
    renamed or otherwise changed index is still reported. (PostgreSQL reflects DESC and partial
    indexes faithfully and needs no filter.)
    """
    removed = {_index_shape(d[1]) for d in diffs if isinstance(d, tuple) and d[0] == "remove_index"}
    added = {_index_shape(d[1]) for d in diffs if isinstance(d, tuple) and d[0] == "add_index"}
    same = removed & added
    return [
        d
        for d in diffs
        if not (
            isinstance(d, tuple)
            and d[0] in ("remove_index", "add_index")
            and _index_shape(d[1]) in same
        )
    ]


def test_upgrade_downgrade_and_upgrade_again(empty_database):
    migrations.upgrade(empty_database)
    assert current_revision(empty_database) == head_revision()
    assert {"sync_queue", "sync_worker_runs", "gmb_accounts"} <= table_names(empty_database)

    migrations.downgrade(empty_database, "base")
    assert table_names(empty_database) <= {"alembic_version"}
    assert current_revision(empty_database) is None

    migrations.upgrade(empty_database)
    assert current_revision(empty_database) == head_revision()
    assert schema_differences(empty_database) == []


def test_migrated_schema_equals_the_table_definitions(empty_database):
    migrations.upgrade(empty_database)

    assert schema_differences(empty_database) == []


def test_every_declared_table_is_created_by_the_migrations(empty_database):
    migrations.upgrade(empty_database)

    assert set(metadata.tables) <= table_names(empty_database)


def _run_migrations_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "migrations", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_python_m_migrations_brings_a_fresh_sqlite_file_to_head(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh' / 'cli.db'}"

    upgraded = _run_migrations_cli(url)
    current = _run_migrations_cli(url, "current")

    assert upgraded.returncode == 0, upgraded.stderr
    assert current_revision(url) == head_revision()
    assert current.returncode == 0, current.stderr
    assert head_revision() in current.stdout
    assert set(metadata.tables) <= table_names(url)


def test_python_m_migrations_current_on_an_empty_database_names_no_revision(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    sa.create_engine(url).dispose()

    current = _run_migrations_cli(url, "current")

    assert current.returncode == 0, current.stderr
    assert head_revision() not in current.stdout


def test_the_sqlite_index_filter_drops_only_sort_order_artefacts():
    scratch = sa.MetaData()
    table = sa.Table("t", scratch, sa.Column("a", sa.Integer), sa.Column("b", sa.Integer))
    declared = sa.Index("ix_t_pick", sa.text("a DESC"), table.c.b)
    reflected = sa.Index("ix_t_pick", table.c.a, table.c.b)
    other_columns = sa.Index("ix_t_other", table.c.a)
    made_unique = sa.Index("ix_t_other", table.c.a, unique=True)
    missing = sa.Index("ix_t_missing", table.c.b)

    kept = drop_sqlite_desc_index_artefacts(
        [
            ("remove_index", reflected),
            ("add_index", declared),
            ("remove_index", other_columns),
            ("add_index", made_unique),
            ("add_index", missing),
        ]
    )

    assert kept == [
        ("remove_index", other_columns),
        ("add_index", made_unique),
        ("add_index", missing),
    ]


def _queue_table_options(url: str) -> dict[str, str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            options = conn.execute(
                sa.text("SELECT reloptions FROM pg_class WHERE relname = 'sync_queue'")
            ).scalar_one()
    finally:
        engine.dispose()
    return dict(option.split("=", 1) for option in options or [])


def test_the_queue_table_gets_its_storage_settings_on_postgresql():
    with scratch_postgres_database("gmbsync_migrations") as url:
        migrations.upgrade(url)
        # What the table definition declares (and `create_all` would apply) is what migrated.
        assert _queue_table_options(url) == queue_service.tables.QUEUE_TABLE_STORAGE
        assert int(queue_service.tables.QUEUE_TABLE_STORAGE["fillfactor"]) < 100

        migrations.downgrade(url, "0004")
        assert _queue_table_options(url) == {}
