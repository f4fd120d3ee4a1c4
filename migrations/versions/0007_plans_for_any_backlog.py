"""Plans that stay right whatever the planner believes the backlog to be (PostgreSQL only;
SQLite keeps no statistics and plans each statement anew).

How many jobs are pending is the one thing about the queue table that changes faster than any
ANALYZE can follow: a queue analyzed right after it drained tells the planner that no job is
pending, and the burst of enqueues that follows leaves that figure wrong until the next
ANALYZE. Believing the pending jobs' partial indexes hold a row or two, the planner read them
whole on every call. With 100,000 finished jobs and a burst of 20,000: each pick of 64 read
and sorted all 20,000 (through `uq_sync_queue_active_account`, not the pick's ordered index),
taking 15-20 ms, and each enqueue read them twice to find one account's job, 17-27 ms.

- No statistics on `status`: PostgreSQL then takes every status to be a fixed small share of
  the table (0.5 %), a guess that grows with the table instead of one frozen at the last
  ANALYZE. `SET STATISTICS 0` stops ANALYZE from collecting the column but keeps what it
  collected; changing the column to its own type drops that (the table is not rewritten; the
  partial indexes on `status`, which hold only the active jobs, are rebuilt).
- `ix_sync_queue_pick` is predicated on `(status = 'pending') IS TRUE`, which only a statement
  that says exactly that (the pick, and the enqueue's read of the head of a priority) implies.
  A plain `status = 'pending'` also implies the predicates of the other partial indexes of the
  active jobs, and a full read of one of those, then a sort, is what the planner chose over
  the pick's ordered index whenever it thought the pending jobs few. `status` is never NULL,
  so the index holds the same rows as before.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# As in 0005, written out so that this revision never changes with the application's code.
_PICK_COLUMNS = "priority DESC, fair_key, created_at, id"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE sync_queue ALTER COLUMN status SET STATISTICS 0")
    op.execute("ALTER TABLE sync_queue ALTER COLUMN status TYPE text")
    op.execute("DROP INDEX ix_sync_queue_pick")
    op.execute(
        f"CREATE INDEX ix_sync_queue_pick ON sync_queue ({_PICK_COLUMNS})"
        " WHERE (status = 'pending') IS TRUE"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX ix_sync_queue_pick")
    op.execute(
        f"CREATE INDEX ix_sync_queue_pick ON sync_queue ({_PICK_COLUMNS}) WHERE status = 'pending'"
    )
    op.execute("ALTER TABLE sync_queue ALTER COLUMN status SET STATISTICS -1")
