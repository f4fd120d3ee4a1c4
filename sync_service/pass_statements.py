"""The statements a sync pass runs on every account, built once per store.

Building a SQLAlchemy statement (its clauses, then the cache key SQLAlchemy derives from each
new statement object to find its compiled form) cost SyncService more CPU than sending it: a
profile of the whole-system benchmark put a fifth of the service's time there. Each statement
here is built once, with bound parameters for what changes from call to call, and SQLAlchemy
memoizes its cache key on the object.

Parameter names never repeat a column the statement sets (SQLAlchemy keeps those for the
values of the SET or VALUES clause): `account`, `now`, `seen`, `begun`...
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from sync_service.tables import (
    gmb_accounts,
    gmb_locations,
    gmb_reviews,
    oauth_tokens,
    sync_checkpoints,
    sync_status,
)

_account = sa.bindparam("account", type_=gmb_accounts.c.id.type)
_now = sa.bindparam("now", type_=sync_status.c.updated_at.type)
_seen = sa.bindparam("seen", type_=gmb_locations.c.observed_at.type)
_begun = sa.bindparam("begun", type_=gmb_locations.c.last_seen_at.type)


def _soft_delete(table: sa.Table, *where: Any) -> Any:
    """Marks deleted what no attempt of the pass begun at `begun` saw, unless a snapshot newer
    than this attempt's (`seen`) decided it; the deletion carries `seen` so an older snapshot
    cannot undo it."""
    return (
        sa.update(table)
        .where(
            table.c.account_id == _account,
            table.c.deleted_at.is_(None),
            table.c.last_seen_at < _begun,
            table.c.observed_at < _seen,
            *where,
        )
        .values(deleted_at=_now, updated_at=_now, observed_at=_seen)
    )


class PassStatements:
    """The statements of a pass for one database; `insert` is its INSERT construct (the
    PostgreSQL or the SQLite one, for their ON CONFLICT clauses)."""

    def __init__(self, insert: Callable[[sa.Table], Any]) -> None:
        self._insert = insert

    # --- Taking the account ----------------------------------------------------------------

    # PostgreSQL: a transaction's advisory lock (the token refresh's).
    advisory_lock = sa.select(
        sa.func.pg_advisory_xact_lock(
            sa.bindparam("lock_class", type_=sa.Integer),
            sa.bindparam("object_id", type_=sa.Integer),
        )
    )
    # PostgreSQL: the account's row lock, then the database's clock; no row if the account is
    # gone. FOR NO KEY UPDATE waits for another sync's write of the account and for its
    # deletion, not for the foreign-key checks of the rows that refer to it; a row deleted while
    # the lock was waited for is not returned. The clock is read above the lock, so after it.
    take_account = sa.select(sa.func.clock_timestamp()).select_from(
        sa.select(gmb_accounts.c.id)
        .where(gmb_accounts.c.id == _account)
        .with_for_update(key_share=True)  # FOR NO KEY UPDATE
        .subquery("taken")
    )
    # SQLite (BEGIN IMMEDIATE already serialises writers): whether the account exists.
    account_exists = sa.select(
        sa.select(gmb_accounts.c.id).where(gmb_accounts.c.id == _account).exists()
    )

    # --- The context a sync starts from ----------------------------------------------------

    context = (
        sa.select(
            gmb_accounts,
            oauth_tokens.c.refresh_token_encrypted,
            oauth_tokens.c.access_token_encrypted,
            oauth_tokens.c.access_token_expires_at,
        )
        .select_from(gmb_accounts.outerjoin(oauth_tokens))
        .where(gmb_accounts.c.id == _account)
    )
    status = sa.select(sync_status).where(sync_status.c.account_id == _account)
    synced_locations = sa.select(gmb_locations.c.location_id).where(
        gmb_locations.c.account_id == _account,
        gmb_locations.c.deleted_at.is_(None),
        gmb_locations.c.review_state == "synced",
    )

    # --- The pass's checkpoint -------------------------------------------------------------

    checkpoint = sa.select(sync_checkpoints).where(sync_checkpoints.c.account_id == _account)
    checkpoint_resumed = (
        sa.update(sync_checkpoints)
        .where(sync_checkpoints.c.account_id == _account)
        .values(attempts=sync_checkpoints.c.attempts + 1, updated_at=_now)
    )
    checkpoint_dropped = sa.delete(sync_checkpoints).where(
        sync_checkpoints.c.account_id == _account,
        sync_checkpoints.c.pass_started_at == _begun,
    )

    @functools.cached_property
    def checkpoint_started(self) -> Any:
        """A new pass's checkpoint, replacing any other: executed with every column's value."""
        insert = self._insert(sync_checkpoints)
        excluded = insert.excluded
        return insert.on_conflict_do_update(
            index_elements=[sync_checkpoints.c.account_id],
            set_={
                name: getattr(excluded, name)
                for name in ("sync_type", "pass_started_at", "attempts", "created_at", "updated_at")
            },
        )

    # --- One location's reviews ------------------------------------------------------------

    review_ids = sa.select(gmb_reviews.c.review_id).where(
        gmb_reviews.c.account_id == _account,
        gmb_reviews.c.location_id == sa.bindparam("location"),
        gmb_reviews.c.deleted_at.is_(None),
    )
    stored_reviews = sa.select(
        gmb_reviews.c.review_id,
        gmb_reviews.c.content_hash,
        gmb_reviews.c.observed_at,
        gmb_reviews.c.deleted_at,
    ).where(
        gmb_reviews.c.account_id == _account,
        gmb_reviews.c.location_id == sa.bindparam("location"),
        gmb_reviews.c.review_id.in_(sa.bindparam("ids", expanding=True)),
    )
    location_read = (
        sa.update(gmb_locations)
        .where(
            gmb_locations.c.account_id == _account,
            gmb_locations.c.location_id == sa.bindparam("location"),
            gmb_locations.c.observed_at <= _seen,
        )
        .values(
            review_state="synced",
            review_state_reason=None,
            reviews_read_at=_seen,
            reviews_verified=sa.bindparam("verified", type_=sa.Boolean),
        )
    )
    # Google's rating figures are kept from an earlier read when this one brought none.
    location_read_with_figures = location_read.values(
        average_rating=sa.bindparam("rating", type_=gmb_locations.c.average_rating.type),
        total_review_count=sa.bindparam("total", type_=gmb_locations.c.total_review_count.type),
    )

    # --- The end of a full pass ------------------------------------------------------------

    locations_gone = _soft_delete(gmb_locations)
    # Reviews go only where the pass proved it: locations whose read was verified, and
    # locations this attempt removed.
    _proven = sa.select(gmb_locations.c.location_id).where(
        gmb_locations.c.account_id == _account,
        sa.or_(
            sa.and_(gmb_locations.c.reviews_read_at >= _begun, gmb_locations.c.reviews_verified),
            sa.and_(gmb_locations.c.deleted_at.is_not(None), gmb_locations.c.observed_at == _seen),
        ),
    )
    reviews_gone = _soft_delete(gmb_reviews, gmb_reviews.c.location_id.in_(_proven))

    _live_locations = (
        sa.select(sa.func.count())
        .where(gmb_locations.c.account_id == _account, gmb_locations.c.deleted_at.is_(None))
        .scalar_subquery()
    )
    # The account's live locations and reviews, and the newest review this pass saw.
    counts = sa.select(
        _live_locations,
        sa.func.count().filter(gmb_reviews.c.deleted_at.is_(None)),
        sa.func.max(gmb_reviews.c.update_time).filter(gmb_reviews.c.last_seen_at >= _begun),
    ).where(gmb_reviews.c.account_id == _account)

    @functools.cached_property
    def status_success(self) -> Any:
        """A successful sync's status: the error cleared, failures reset, counts set, the
        watermark only ever moving forward; returns the row. Executed with every column's
        value."""
        insert = self._insert(sync_status)
        excluded = insert.excluded
        watermark = sync_status.c.reviews_watermark
        return insert.on_conflict_do_update(
            index_elements=[sync_status.c.account_id],
            set_={
                "last_sync_at": excluded.last_sync_at,
                "last_sync_type": excluded.last_sync_type,
                "last_error": None,
                "consecutive_failures": 0,
                "locations_count": excluded.locations_count,
                "reviews_count": excluded.reviews_count,
                "locations_skipped": excluded.locations_skipped,
                "reviews_watermark": sa.case(
                    (watermark.is_(None), excluded.reviews_watermark),
                    (excluded.reviews_watermark.is_(None), watermark),
                    (excluded.reviews_watermark > watermark, excluded.reviews_watermark),
                    else_=watermark,
                ),
                "updated_at": excluded.updated_at,
            },
        ).returning(*sync_status.c)
