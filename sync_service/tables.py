"""Tables owned by SyncService: accounts, their OAuth tokens, sync status and error logs.

QueueService reads `gmb_accounts` (ownership and names) but never writes it.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
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
