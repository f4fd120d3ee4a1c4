"""Tables owned by SyncService: accounts, OAuth tokens, sync status, error logs, and the synced
locations and reviews.

QueueService reads `gmb_accounts` (ownership and names) but never writes it.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    false,
    text,
    true,
)

from service_runtime.sqltypes import JsonDocument, UtcDateTime, metadata

gmb_accounts = Table(
    "gmb_accounts",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("user_id", Uuid, nullable=False),
    Column("account_name", Text, nullable=False),
    # Google's resource name, `accounts/{id}`.
    Column("google_account_id", Text, nullable=False),
    Column("is_active", Boolean, nullable=False, server_default=true()),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("user_id", "google_account_id"),
    Index(None, "user_id", "created_at"),
)

oauth_tokens = Table(
    "oauth_tokens",
    metadata,
    Column(
        "account_id",
        Uuid,
        ForeignKey("gmb_accounts.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    # Fernet tokens (AES-128-CBC + HMAC-SHA256) of the secrets: never stored in clear.
    Column("refresh_token_encrypted", Text, nullable=False),
    Column("access_token_encrypted", Text, nullable=True),
    Column("access_token_expires_at", UtcDateTime, nullable=True),
    Column("scope", Text, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

sync_status = Table(
    "sync_status",
    metadata,
    Column(
        "account_id",
        Uuid,
        ForeignKey("gmb_accounts.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("last_sync_at", UtcDateTime, nullable=True),
    Column("last_sync_type", Text, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("last_error_at", UtcDateTime, nullable=True),
    Column("consecutive_failures", Integer, nullable=False, server_default="0"),
    Column("locations_count", Integer, nullable=False, server_default="0"),
    Column("reviews_count", Integer, nullable=False, server_default="0"),
    Column("reviews_watermark", UtcDateTime, nullable=True),
    Column("updated_at", UtcDateTime, nullable=False),
    # Locations whose reviews the last successful sync could not read.
    Column("locations_skipped", Integer, nullable=False, server_default="0"),
    CheckConstraint(
        "last_sync_type IS NULL OR last_sync_type IN ('full', 'incremental')",
        name="last_sync_type",
    ),
)

error_logs = Table(
    "error_logs",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("account_id", Uuid, ForeignKey("gmb_accounts.id", ondelete="SET NULL"), nullable=True),
    Column("job_id", Uuid, nullable=True),
    Column("source", Text, nullable=False),
    Column("error_type", Text, nullable=False),
    Column("message", Text, nullable=False),
    Column("details", JsonDocument, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Index(None, "created_at"),
    Index(None, "account_id", "created_at"),
)


# Locations and reviews are keyed by their Google ids within the account row that synced them:
# two users may connect the same Google account, and each keeps its own copy.
# `last_seen_at` is when the reading of the sync that last saw a row began. Writes only move it
# forward, so a late retry holding an older snapshot can neither overwrite newer content nor
# soft-delete a row that a newer sync saw.
gmb_locations = Table(
    "gmb_locations",
    metadata,
    Column("account_id", Uuid, ForeignKey("gmb_accounts.id", ondelete="CASCADE"), nullable=False),
    # Google's `locations/{id}`.
    Column("location_id", Text, nullable=False),
    Column("title", Text, nullable=False),
    Column("store_code", Text, nullable=True),
    Column("primary_category", Text, nullable=True),
    Column("primary_phone", Text, nullable=True),
    Column("website_uri", Text, nullable=True),
    Column("place_id", Text, nullable=True),
    Column("raw", JsonDocument, nullable=False),
    Column("content_hash", Text, nullable=False),
    Column("first_seen_at", UtcDateTime, nullable=False),
    Column("last_seen_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("deleted_at", UtcDateTime, nullable=True),
    # The snapshot time of the newest sync that decided this row's state, present or deleted:
    # an older snapshot never overwrites or revives it.
    Column("observed_at", UtcDateTime, nullable=False),
    # Whether the location's reviews can be read: 'synced'; 'ineligible' (Google serves no
    # reviews for it: unverified, duplicate, suspended...), 'failed' (Google refused its reviews
    # with a location-scoped 400/403/404); 'pending' until a sync reads them. Reason for people.
    Column("review_state", Text, nullable=False, server_default="pending"),
    Column("review_state_reason", Text, nullable=True),
    # The snapshot time of the pass that last read every review of the location, and whether
    # that read proved which stored reviews are gone (a list that changed while it was paged
    # cannot).
    Column("reviews_read_at", UtcDateTime, nullable=True),
    Column("reviews_verified", Boolean, nullable=False, server_default=false()),
    # Google's figures from reviews.list.
    Column("average_rating", Float, nullable=True),
    Column("total_review_count", Integer, nullable=True),
    PrimaryKeyConstraint("account_id", "location_id"),
    CheckConstraint(
        "review_state IN ('pending', 'synced', 'ineligible', 'failed')",
        name="review_state",
    ),
)

gmb_reviews = Table(
    "gmb_reviews",
    metadata,
    Column("account_id", Uuid, ForeignKey("gmb_accounts.id", ondelete="CASCADE"), nullable=False),
    Column("location_id", Text, nullable=False),
    # Google's opaque `reviewId`.
    Column("review_id", Text, nullable=False),
    # Google's `accounts/{a}/locations/{l}/reviews/{r}`.
    Column("review_name", Text, nullable=False),
    Column("reviewer_name", Text, nullable=True),
    Column("reviewer_photo_url", Text, nullable=True),
    Column("reviewer_anonymous", Boolean, nullable=False, server_default=false()),
    # 1..5; NULL for STAR_RATING_UNSPECIFIED.
    Column("star_rating", Integer, nullable=True),
    Column("comment", Text, nullable=True),
    Column("reply_comment", Text, nullable=True),
    Column("reply_update_time", UtcDateTime, nullable=True),
    # Google's createTime and updateTime.
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Column("raw", JsonDocument, nullable=False),
    Column("content_hash", Text, nullable=False),
    Column("first_seen_at", UtcDateTime, nullable=False),
    Column("last_seen_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("deleted_at", UtcDateTime, nullable=True),
    Column("observed_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("account_id", "location_id", "review_id"),
    ForeignKeyConstraint(
        ["account_id", "location_id"],
        ["gmb_locations.account_id", "gmb_locations.location_id"],
        ondelete="CASCADE",
    ),
    CheckConstraint(
        "star_rating IS NULL OR star_rating BETWEEN 1 AND 5",
        name="star_rating",
    ),
    # The newest reviews of a location, as a dashboard reads them.
    Index(
        "ix_gmb_reviews_location_update",
        "account_id",
        "location_id",
        "update_time",
        postgresql_where=text("deleted_at IS NULL"),
        sqlite_where=text("deleted_at IS NULL"),
    ),
)


# One unfinished pass per account. Locations are written as they are read; the next attempt of
# a sync that ran out of time resumes the pass (same snapshot time) and reads only the locations
# whose `reviews_read_at` is older than the pass. Deleted when the pass completes.
sync_checkpoints = Table(
    "sync_checkpoints",
    metadata,
    Column(
        "account_id",
        Uuid,
        ForeignKey("gmb_accounts.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("sync_type", Text, nullable=False),
    Column("pass_started_at", UtcDateTime, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="1"),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    CheckConstraint("sync_type IN ('full', 'incremental')", name="sync_type"),
)

# Google's quota is per Cloud project and per API, shared by every replica: one token bucket
# each, taken with one UPDATE on PostgreSQL before every call.
google_quota_buckets = Table(
    "google_quota_buckets",
    metadata,
    Column("project", Text, nullable=False),
    Column("api", Text, nullable=False),
    Column("tokens", Float, nullable=False),
    Column("refilled_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("project", "api"),
)
