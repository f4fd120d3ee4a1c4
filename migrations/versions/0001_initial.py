"""Initial schema: the job queue, worker runs, accounts, OAuth tokens, sync status, error logs.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# JSONB on PostgreSQL (indexable, compact), JSON text on SQLite.
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "gmb_accounts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("account_name", sa.Text(), nullable=False),
        sa.Column("google_account_id", sa.Text(), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gmb_accounts")),
        sa.UniqueConstraint(
            "user_id", "google_account_id", name=op.f("uq_gmb_accounts_user_id_google_account_id")
        ),
    )
    op.create_index(
        op.f("ix_gmb_accounts_user_id_created_at"),
        "gmb_accounts",
        ["user_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "sync_worker_runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("worker_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="running", nullable=False),
        sa.Column("jobs_picked", sa.Integer(), server_default="0", nullable=False),
        sa.Column("jobs_processed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("jobs_succeeded", sa.Integer(), server_default="0", nullable=False),
        sa.Column("jobs_failed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("jobs_released", sa.Integer(), server_default="0", nullable=False),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("metadata", JSON_DOCUMENT, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'completed', 'failed')", name=op.f("ck_sync_worker_runs_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_worker_runs")),
    )
    op.create_index("ix_sync_worker_runs_started", "sync_worker_runs", ["started_at"], unique=False)
    op.create_table(
        "error_logs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=True),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("error_type", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("details", JSON_DOCUMENT, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["gmb_accounts.id"],
            name=op.f("fk_error_logs_account_id_gmb_accounts"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_error_logs")),
    )
    op.create_index(
        op.f("ix_error_logs_account_id_created_at"),
        "error_logs",
        ["account_id", "created_at"],
        unique=False,
    )
    op.create_index(op.f("ix_error_logs_created_at"), "error_logs", ["created_at"], unique=False)
    op.create_table(
        "oauth_tokens",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("refresh_token_encrypted", sa.Text(), nullable=False),
        sa.Column("access_token_encrypted", sa.Text(), nullable=True),
        sa.Column("access_token_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("scope", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["gmb_accounts.id"],
            name=op.f("fk_oauth_tokens_account_id_gmb_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_oauth_tokens")),
    )
    op.create_table(
        "sync_queue",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("sync_type", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("priority", sa.Integer(), server_default="0", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_attempts", sa.Integer(), server_default="3", nullable=False),
        sa.Column("scheduled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("metadata", JSON_DOCUMENT, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_token", sa.Uuid(), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("worker_id", sa.Text(), nullable=True),
        sa.Column("worker_run_id", sa.Uuid(), nullable=True),
        sa.Column("trace_context", JSON_DOCUMENT, nullable=False),
        sa.Column("errors", JSON_DOCUMENT, nullable=False),
        sa.Column("result", JSON_DOCUMENT, nullable=True),
        sa.CheckConstraint(
            "(status = 'processing') = (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL)",
            name=op.f("ck_sync_queue_lease_iff_processing"),
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'processing', 'succeeded', 'failed', 'cancelled')",
            name=op.f("ck_sync_queue_status"),
        ),
        sa.CheckConstraint(
            "sync_type IN ('full', 'incremental')", name=op.f("ck_sync_queue_sync_type")
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_sync_queue_attempts")),
        sa.CheckConstraint(
            "max_attempts BETWEEN 1 AND 25", name=op.f("ck_sync_queue_max_attempts")
        ),
        sa.CheckConstraint("priority BETWEEN -100 AND 100", name=op.f("ck_sync_queue_priority")),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["gmb_accounts.id"],
            name=op.f("fk_sync_queue_account_id_gmb_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_queue")),
    )
    op.create_index(
        "ix_sync_queue_completed",
        "sync_queue",
        ["completed_at"],
        unique=False,
        postgresql_where=sa.text("completed_at IS NOT NULL"),
        sqlite_where=sa.text("completed_at IS NOT NULL"),
    )
    op.create_index("ix_sync_queue_created", "sync_queue", ["created_at"], unique=False)
    op.create_index(
        "ix_sync_queue_lease_expiry",
        "sync_queue",
        ["lease_expires_at"],
        unique=False,
        postgresql_where=sa.text("status = 'processing'"),
        sqlite_where=sa.text("status = 'processing'"),
    )
    op.create_index(
        "ix_sync_queue_pick",
        "sync_queue",
        [sa.literal_column("priority DESC"), "created_at", "id"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_sync_queue_user_created", "sync_queue", ["user_id", "created_at"], unique=False
    )
    op.create_index(
        "uq_sync_queue_active_account",
        "sync_queue",
        ["account_id"],
        unique=True,
        postgresql_where=sa.text("status IN ('pending', 'processing')"),
        sqlite_where=sa.text("status IN ('pending', 'processing')"),
    )
    op.create_table(
        "sync_status",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("last_sync_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_sync_type", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("locations_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("reviews_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("reviews_watermark", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "last_sync_type IS NULL OR last_sync_type IN ('full', 'incremental')",
            name=op.f("ck_sync_status_last_sync_type"),
        ),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["gmb_accounts.id"],
            name=op.f("fk_sync_status_account_id_gmb_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_sync_status")),
    )


def downgrade() -> None:
    op.drop_table("sync_status")
    op.drop_index(
        "uq_sync_queue_active_account",
        table_name="sync_queue",
        postgresql_where=sa.text("status IN ('pending', 'processing')"),
        sqlite_where=sa.text("status IN ('pending', 'processing')"),
    )
    op.drop_index("ix_sync_queue_user_created", table_name="sync_queue")
    op.drop_index(
        "ix_sync_queue_pick",
        table_name="sync_queue",
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )
    op.drop_index(
        "ix_sync_queue_lease_expiry",
        table_name="sync_queue",
        postgresql_where=sa.text("status = 'processing'"),
        sqlite_where=sa.text("status = 'processing'"),
    )
    op.drop_index("ix_sync_queue_created", table_name="sync_queue")
    op.drop_index(
        "ix_sync_queue_completed",
        table_name="sync_queue",
        postgresql_where=sa.text("completed_at IS NOT NULL"),
        sqlite_where=sa.text("completed_at IS NOT NULL"),
    )
    op.drop_table("sync_queue")
    op.drop_table("oauth_tokens")
    op.drop_index(op.f("ix_error_logs_created_at"), table_name="error_logs")
    op.drop_index(op.f("ix_error_logs_account_id_created_at"), table_name="error_logs")
    op.drop_table("error_logs")
    op.drop_index("ix_sync_worker_runs_started", table_name="sync_worker_runs")
    op.drop_table("sync_worker_runs")
    op.drop_index(op.f("ix_gmb_accounts_user_id_created_at"), table_name="gmb_accounts")
    op.drop_table("gmb_accounts")
