"""Fair picking within a priority, and pauses of picking.

- `sync_queue.fair_key`: a pending job's place among the jobs of its priority, assigned at
  enqueue so that each user's queued jobs are spread one step apart behind the head of the
  queue (virtual-time fair queuing). Pending jobs are given keys here in each user's own
  created_at order, so a backlog that exists at upgrade time is already interleaved by user.
- `ix_sync_queue_pick` becomes `priority DESC, fair_key, created_at, id` (the new pick order);
  `ix_sync_queue_fair_user` finds a user's last queued key at a priority.
- `sync_queue_pauses`: one row per active pause of picking, for one user or (the nil UUID) the
  whole queue.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    with op.batch_alter_table("sync_queue") as batch:
        batch.add_column(sa.Column("fair_key", sa.BigInteger(), server_default="0", nullable=False))
    # Each user's pending jobs one step apart at each priority, in the user's created_at order.
    op.execute(
        """
        UPDATE sync_queue SET fair_key = ranked.n
        FROM (
            SELECT id, row_number() OVER (
                PARTITION BY user_id, priority ORDER BY created_at, id
            ) AS n
            FROM sync_queue
            WHERE status = 'pending'
        ) AS ranked
        WHERE sync_queue.id = ranked.id
        """
    )
    op.drop_index(
        "ix_sync_queue_pick",
        table_name="sync_queue",
        postgresql_where=_PENDING,
        sqlite_where=_PENDING,
    )
    op.create_index(
        "ix_sync_queue_pick",
        "sync_queue",
        [sa.literal_column("priority DESC"), "fair_key", "created_at", "id"],
        unique=False,
        postgresql_where=_PENDING,
        sqlite_where=_PENDING,
    )
    op.create_index(
        "ix_sync_queue_fair_user",
        "sync_queue",
        ["user_id", "priority", "fair_key"],
        unique=False,
        postgresql_where=_PENDING,
        sqlite_where=_PENDING,
    )
    op.create_table(
        "sync_queue_pauses",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("paused_by", sa.Text(), nullable=True),
        sa.Column("paused_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_sync_queue_pauses")),
    )


def downgrade() -> None:
    op.drop_table("sync_queue_pauses")
    op.drop_index(
        "ix_sync_queue_fair_user",
        table_name="sync_queue",
        postgresql_where=_PENDING,
        sqlite_where=_PENDING,
    )
    op.drop_index(
        "ix_sync_queue_pick",
        table_name="sync_queue",
        postgresql_where=_PENDING,
        sqlite_where=_PENDING,
    )
    op.create_index(
        "ix_sync_queue_pick",
        "sync_queue",
        [sa.literal_column("priority DESC"), "created_at", "id"],
        unique=False,
        postgresql_where=_PENDING,
        sqlite_where=_PENDING,
    )
    with op.batch_alter_table("sync_queue") as batch:
        batch.drop_column("fair_key")
