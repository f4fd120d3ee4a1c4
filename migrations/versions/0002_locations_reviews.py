"""Synced data: Google Business Profile locations and reviews, soft-deleted when gone.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# JSONB on PostgreSQL (indexable, compact), JSON text on SQLite.
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "gmb_locations",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("location_id", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("store_code", sa.Text(), nullable=True),
        sa.Column("primary_category", sa.Text(), nullable=True),
        sa.Column("primary_phone", sa.Text(), nullable=True),
        sa.Column("website_uri", sa.Text(), nullable=True),
        sa.Column("place_id", sa.Text(), nullable=True),
        sa.Column("raw", JSON_DOCUMENT, nullable=False),
        sa.Column("content_hash", sa.Text(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["gmb_accounts.id"],
            name=op.f("fk_gmb_locations_account_id_gmb_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", "location_id", name=op.f("pk_gmb_locations")),
    )
    op.create_table(
        "gmb_reviews",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("location_id", sa.Text(), nullable=False),
        sa.Column("review_id", sa.Text(), nullable=False),
        sa.Column("review_name", sa.Text(), nullable=False),
        sa.Column("reviewer_name", sa.Text(), nullable=True),
        sa.Column("reviewer_photo_url", sa.Text(), nullable=True),
        sa.Column("reviewer_anonymous", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("star_rating", sa.Integer(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("reply_comment", sa.Text(), nullable=True),
        sa.Column("reply_update_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("raw", JSON_DOCUMENT, nullable=False),
        sa.Column("content_hash", sa.Text(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "star_rating IS NULL OR star_rating BETWEEN 1 AND 5",
            name=op.f("ck_gmb_reviews_star_rating"),
        ),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["gmb_accounts.id"],
            name=op.f("fk_gmb_reviews_account_id_gmb_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["account_id", "location_id"],
            ["gmb_locations.account_id", "gmb_locations.location_id"],
            name=op.f("fk_gmb_reviews_account_id_gmb_locations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "account_id", "location_id", "review_id", name=op.f("pk_gmb_reviews")
        ),
    )
    op.create_index(
        "ix_gmb_reviews_location_update",
        "gmb_reviews",
        ["account_id", "location_id", "update_time"],
        unique=False,
        postgresql_where=sa.text("deleted_at IS NULL"),
        sqlite_where=sa.text("deleted_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_gmb_reviews_location_update",
        table_name="gmb_reviews",
        postgresql_where=sa.text("deleted_at IS NULL"),
        sqlite_where=sa.text("deleted_at IS NULL"),
    )
    op.drop_table("gmb_reviews")
    op.drop_table("gmb_locations")
