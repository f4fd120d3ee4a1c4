"""Periodic syncs: `sync_schedules`, one row per account the scheduler has laid out.

Per account: interval overrides (NULL follows the service default), an opt-out, the next slot of
each kind of sync and the spacing it was laid out with, and what was last enqueued.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)
_INTERVAL_BOUNDS = "BETWEEN 60 AND 2592000"


def upgrade() -> None:
    op.create_table(
        "sync_schedules",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("incremental_interval_seconds", sa.Integer(), nullable=True),
        sa.Column("full_interval_seconds", sa.Integer(), nullable=True),
        sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("next_incremental_at", _TIME, nullable=True),
        sa.Column("next_full_at", _TIME, nullable=True),
        sa.Column("next_due_at", _TIME, nullable=True),
        sa.Column("incremental_period_seconds", sa.Integer(), nullable=True),
        sa.Column("full_period_seconds", sa.Integer(), nullable=True),
        sa.Column("last_enqueued_at", _TIME, nullable=True),
        sa.Column("last_job_id", sa.Uuid(), nullable=True),
        sa.Column("last_sync_type", sa.Text(), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.CheckConstraint(
            f"incremental_interval_seconds IS NULL OR incremental_interval_seconds {_INTERVAL_BOUNDS}",
            name=op.f("ck_sync_schedules_incremental_interval"),
        ),
        sa.CheckConstraint(
            f"full_interval_seconds IS NULL OR full_interval_seconds {_INTERVAL_BOUNDS}",
            name=op.f("ck_sync_schedules_full_interval"),
        ),
        sa.CheckConstraint(
            "(incremental_period_seconds IS NULL OR incremental_period_seconds > 0)"
            " AND (full_period_seconds IS NULL OR full_period_seconds > 0)",
            name=op.f("ck_sync_schedules_periods"),
        ),
        sa.CheckConstraint(
            "last_sync_type IS NULL OR last_sync_type IN ('full', 'incremental')",
            name=op.f("ck_sync_schedules_last_sync_type"),
        ),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["gmb_accounts.id"],
            name=op.f("fk_sync_schedules_account_id_gmb_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_sync_schedules")),
    )
    op.create_index(
        op.f("ix_sync_schedules_next_due_at"), "sync_schedules", ["next_due_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_sync_schedules_next_due_at"), table_name="sync_schedules")
    op.drop_table("sync_schedules")
