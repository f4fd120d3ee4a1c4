"""Storage settings of `sync_queue` for a table that churns: room on each page for the new
version of an updated row, and autovacuum and analyze after a fixed number of changed rows
rather than a share of the table (PostgreSQL only; SQLite has no such settings).

Every job is written three times (enqueue, pick, result) and then stays, finished, until the
pruner deletes it. With PostgreSQL's defaults, a table of a million finished jobs waits for
200,000 dead rows before it is vacuumed, and the pending jobs' pages fill with dead versions
meanwhile. A pick changes indexed columns, so its updates are never HOT; the free space of
fillfactor 80 still lets the new version land on the same page as the old one.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# As declared on `queue_service.tables.sync_queue` (`postgresql_with`), written out here so that
# this revision never changes with the application's code.
_SETTINGS = {
    "fillfactor": "80",
    "autovacuum_vacuum_scale_factor": "0.01",
    "autovacuum_vacuum_threshold": "1000",
    "autovacuum_vacuum_insert_scale_factor": "0.01",
    "autovacuum_vacuum_insert_threshold": "1000",
    "autovacuum_analyze_scale_factor": "0.02",
    "autovacuum_analyze_threshold": "1000",
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    settings = ", ".join(f"{name} = {value}" for name, value in _SETTINGS.items())
    op.execute(f"ALTER TABLE sync_queue SET ({settings})")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"ALTER TABLE sync_queue RESET ({', '.join(_SETTINGS)})")
