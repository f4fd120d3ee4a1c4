"""Sync progress and a shared Google quota: per-location review state, checkpoints, buckets.

- `observed_at` on locations and reviews: the snapshot time of the newest sync that decided the
  row's state, present or deleted, so an older snapshot can neither overwrite nor revive it.
- Per location: whether its reviews could be read (and why not), when a pass last read them
  completely, whether that read proved which reviews are gone, and Google's rating figures.
- `sync_checkpoints`: one unfinished pass per account, resumed by the next attempt.
- `google_quota_buckets`: one token bucket per (Google Cloud project, API), shared by every
  SyncService replica on PostgreSQL.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)
_REVIEW_STATES = "review_state IN ('pending', 'synced', 'ineligible', 'failed')"


def upgrade() -> None:
    for table in ("gmb_locations", "gmb_reviews"):
        op.add_column(table, sa.Column("observed_at", _TIME, nullable=True))
        rows = sa.table(
            table,
            sa.column("observed_at", _TIME),
            sa.column("deleted_at", _TIME),
            sa.column("last_seen_at", _TIME),
        )
        op.execute(
            rows.update().values(
                observed_at=sa.func.coalesce(rows.c.deleted_at, rows.c.last_seen_at)
            )
        )
        with op.batch_alter_table(table) as batch:
            batch.alter_column("observed_at", existing_type=_TIME, nullable=False)

    with op.batch_alter_table("gmb_locations") as batch:
        batch.add_column(
            sa.Column("review_state", sa.Text(), server_default="pending", nullable=False)
        )
        batch.add_column(sa.Column("review_state_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("reviews_read_at", _TIME, nullable=True))
        batch.add_column(
            sa.Column("reviews_verified", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.add_column(sa.Column("average_rating", sa.Float(), nullable=True))
        batch.add_column(sa.Column("total_review_count", sa.Integer(), nullable=True))
        batch.create_check_constraint(op.f("ck_gmb_locations_review_state"), _REVIEW_STATES)

    with op.batch_alter_table("sync_status") as batch:
        batch.add_column(
            sa.Column("locations_skipped", sa.Integer(), server_default="0", nullable=False)
        )

    op.create_table(
        "sync_checkpoints",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("sync_type", sa.Text(), nullable=False),
        sa.Column("pass_started_at", _TIME, nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="1", nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.CheckConstraint(
            "sync_type IN ('full', 'incremental')",
            name=op.f("ck_sync_checkpoints_sync_type"),
        ),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["gmb_accounts.id"],
            name=op.f("fk_sync_checkpoints_account_id_gmb_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_sync_checkpoints")),
    )
    op.create_table(
        "google_quota_buckets",
        sa.Column("project", sa.Text(), nullable=False),
        sa.Column("api", sa.Text(), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("refilled_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("project", "api", name=op.f("pk_google_quota_buckets")),
    )


def downgrade() -> None:
    op.drop_table("google_quota_buckets")
    op.drop_table("sync_checkpoints")
    with op.batch_alter_table("sync_status") as batch:
        batch.drop_column("locations_skipped")
    with op.batch_alter_table("gmb_locations") as batch:
        batch.drop_constraint("ck_gmb_locations_review_state", type_="check")
        for column in (
            "total_review_count",
            "average_rating",
            "reviews_verified",
            "reviews_read_at",
            "review_state_reason",
            "review_state",
            "observed_at",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("gmb_reviews") as batch:
        batch.drop_column("observed_at")
