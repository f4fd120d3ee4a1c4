"""The sync service's database seam: the only module that issues SQL (SQLAlchemy Core, async).

Each public method is one transaction. Tokens are encrypted on their way in and decrypted on
their way out, so nothing above this module sees a ciphertext and nothing below it a secret.

Writing a sync is one transaction that takes the account's lock first (PostgreSQL: a
transaction-scoped advisory lock; SQLite: `BEGIN IMMEDIATE` already serialises writers), so
two overlapping syncs of one account write one after the other. Rows carry `last_seen_at`,
the time the reading of the sync that last saw them began; a write only moves it forward, so
the later writer of two overlapping syncs never reverts or deletes what the newer one read.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sync_service.crypto import TokenCipher
from sync_service.google_client import AccessToken
from sync_service.models import (
    Account,
    LocationRow,
    OAuthCredentials,
    ReviewRow,
    SyncContext,
    SyncSnapshot,
    SyncStatusRecord,
    SyncType,
    WriteCounts,
)
from sync_service.tables import (
    error_logs,
    gmb_accounts,
    gmb_locations,
    gmb_reviews,
    oauth_tokens,
    sync_status,
)

# Advisory lock class for "one account's sync write" (two-int form: a key space of its own).
_ACCOUNT_LOCK_CLASS = 0x534E4331  # "SNC1"
_MAX_ERROR_LENGTH = 2000
ERROR_SOURCE = "sync_service"


class AccountGone(Exception):
    """The account was deleted while its sync ran."""


class BadPageToken(ValueError):
    """A ListAccounts page token that this store did not issue."""


def _account(row: Any) -> Account:
    return Account(
        id=row.id,
        user_id=row.user_id,
        account_name=row.account_name,
        google_account_id=row.google_account_id,
        is_active=row.is_active,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _status(row: Any) -> SyncStatusRecord:
    return SyncStatusRecord(
        account_id=row.account_id,
        last_sync_at=row.last_sync_at,
        last_sync_type=SyncType(row.last_sync_type) if row.last_sync_type else None,
        last_error=row.last_error,
        last_error_at=row.last_error_at,
        consecutive_failures=row.consecutive_failures,
        locations_count=row.locations_count,
        reviews_count=row.reviews_count,
        reviews_watermark=row.reviews_watermark,
        updated_at=row.updated_at,
    )


def encode_page_token(created_at: datetime, account_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(account_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[datetime, uuid.UUID]:
    """The position a page token names, or BadPageToken."""
    try:
        padded = token + "=" * (-len(token) % 4)
        created, account = json.loads(base64.urlsafe_b64decode(padded.encode()))
        position = datetime.fromisoformat(created), uuid.UUID(account)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise BadPageToken("is not a page token returned by ListAccounts") from None
    if position[0].tzinfo is None:
        raise BadPageToken("is not a page token returned by ListAccounts")
    return position


class SyncStore:
    """Accounts, tokens, sync status, error logs, locations and reviews."""

    def __init__(self, engine: AsyncEngine, cipher: TokenCipher) -> None:
        self.engine = engine
        self._cipher = cipher
        self._postgres = engine.dialect.name == "postgresql"

    def _insert(self, table: sa.Table) -> Any:
        return (postgresql.insert if self._postgres else sqlite.insert)(table)

    async def ping(self) -> bool:
        """The health probe: the database answers `SELECT 1`."""
        async with self.engine.connect() as conn:
            return (await conn.execute(sa.text("SELECT 1"))).scalar() == 1

    # --- Accounts ----------------------------------------------------------------------------

    async def account_connect(
        self,
        *,
        user_id: uuid.UUID,
        account_name: str,
        google_account_id: str,
        refresh_token: str,
        access_token: str | None,
        access_token_expires_at: datetime | None,
        now: datetime,
    ) -> tuple[Account, bool]:
        """Stores an account and its tokens; connecting it again replaces the tokens and
        reactivates it. Returns the account and whether it existed before."""
        new_id = uuid.uuid4()
        async with self.engine.begin() as conn:
            insert = self._insert(gmb_accounts).values(
                id=new_id,
                user_id=user_id,
                account_name=account_name,
                google_account_id=google_account_id,
                is_active=True,
                created_at=now,
                updated_at=now,
            )
            upsert = insert.on_conflict_do_update(
                index_elements=[gmb_accounts.c.user_id, gmb_accounts.c.google_account_id],
                set_={
                    "account_name": insert.excluded.account_name,
                    "is_active": True,
                    "updated_at": insert.excluded.updated_at,
                },
            ).returning(*gmb_accounts.c)
            row = (await conn.execute(upsert)).one()
            token_insert = self._insert(oauth_tokens).values(
                account_id=row.id,
                refresh_token_encrypted=self._cipher.encrypt(refresh_token),
                access_token_encrypted=self._cipher.encrypt(access_token) if access_token else None,
                access_token_expires_at=access_token_expires_at if access_token else None,
                scope=None,
                created_at=now,
                updated_at=now,
            )
            await conn.execute(
                token_insert.on_conflict_do_update(
                    index_elements=[oauth_tokens.c.account_id],
                    set_={
                        "refresh_token_encrypted": token_insert.excluded.refresh_token_encrypted,
                        "access_token_encrypted": token_insert.excluded.access_token_encrypted,
                        "access_token_expires_at": token_insert.excluded.access_token_expires_at,
                        "scope": None,
                        "updated_at": token_insert.excluded.updated_at,
                    },
                )
            )
        # Our id came back only if our row was inserted: the account is new.
        return _account(row), row.id != new_id

    async def account_get(self, account_id: uuid.UUID) -> Account | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(gmb_accounts).where(gmb_accounts.c.id == account_id))
            ).one_or_none()
        return _account(row) if row else None

    async def account_list(
        self,
        *,
        user_id: uuid.UUID,
        include_inactive: bool,
        page_size: int,
        page_token: str,
    ) -> tuple[list[Account], str]:
        """One page of a user's accounts, oldest first, and the next page's token ('' at the end).

        Keyset pagination on (created_at, id): stable while accounts are added.
        """
        query = sa.select(gmb_accounts).where(gmb_accounts.c.user_id == user_id)
        if not include_inactive:
            query = query.where(gmb_accounts.c.is_active.is_(True))
        if page_token:
            created_at, after_id = decode_page_token(page_token)
            query = query.where(
                sa.or_(
                    gmb_accounts.c.created_at > created_at,
                    sa.and_(gmb_accounts.c.created_at == created_at, gmb_accounts.c.id > after_id),
                )
            )
        query = query.order_by(gmb_accounts.c.created_at, gmb_accounts.c.id).limit(page_size + 1)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        accounts = [_account(row) for row in rows[:page_size]]
        next_token = ""
        if len(rows) > page_size:
            last = accounts[-1]
            next_token = encode_page_token(last.created_at, last.id)
        return accounts, next_token

    # --- Sync status ---------------------------------------------------------------------------

    async def status_get(self, account_id: uuid.UUID) -> SyncStatusRecord | None:
        async with self.engine.connect() as conn:
            return await self._status_get(conn, account_id)

    async def _status_get(
        self, conn: AsyncConnection, account_id: uuid.UUID
    ) -> SyncStatusRecord | None:
        row = (
            await conn.execute(sa.select(sync_status).where(sync_status.c.account_id == account_id))
        ).one_or_none()
        return _status(row) if row else None

    # --- Sync ----------------------------------------------------------------------------------

    async def sync_context(self, account_id: uuid.UUID) -> SyncContext | None:
        """The account, its decrypted tokens, its status and the locations it has: None if the
        account does not exist. Raises TokenDecryptError if the tokens cannot be decrypted."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(
                        gmb_accounts,
                        oauth_tokens.c.refresh_token_encrypted,
                        oauth_tokens.c.access_token_encrypted,
                        oauth_tokens.c.access_token_expires_at,
                    )
                    .select_from(gmb_accounts.outerjoin(oauth_tokens))
                    .where(gmb_accounts.c.id == account_id)
                )
            ).one_or_none()
            if row is None:
                return None
            status = await self._status_get(conn, account_id)
            known = (
                await conn.execute(
                    sa.select(gmb_locations.c.location_id).where(
                        gmb_locations.c.account_id == account_id,
                        gmb_locations.c.deleted_at.is_(None),
                    )
                )
            ).scalars()
            known_ids = frozenset(known)
        credentials = None
        if row.refresh_token_encrypted is not None:
            credentials = OAuthCredentials(
                refresh_token=self._cipher.decrypt(row.refresh_token_encrypted),
                access_token=(
                    self._cipher.decrypt(row.access_token_encrypted)
                    if row.access_token_encrypted
                    else None
                ),
                access_token_expires_at=row.access_token_expires_at,
            )
        return SyncContext(
            account=_account(row),
            credentials=credentials,
            status=status,
            known_location_ids=known_ids,
        )

    async def token_save(self, account_id: uuid.UUID, token: AccessToken, now: datetime) -> None:
        """Stores a refreshed access token (and a rotated refresh token) in its own transaction,
        so it outlives a sync that fails afterwards."""
        values: dict[str, Any] = {
            "access_token_encrypted": self._cipher.encrypt(token.value),
            "access_token_expires_at": token.expires_at,
            "scope": token.scope,
            "updated_at": now,
        }
        if token.refresh_token:
            values["refresh_token_encrypted"] = self._cipher.encrypt(token.refresh_token)
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(oauth_tokens)
                .where(oauth_tokens.c.account_id == account_id)
                .values(**values)
            )

    async def _lock_account(self, conn: AsyncConnection, account_id: uuid.UUID) -> None:
        if self._postgres:
            object_id = int.from_bytes(account_id.bytes[:4], "big", signed=True)
            await conn.execute(
                sa.select(sa.func.pg_advisory_xact_lock(_ACCOUNT_LOCK_CLASS, object_id))
            )

    async def sync_write(
        self, snapshot: SyncSnapshot, now: datetime
    ) -> tuple[WriteCounts, SyncStatusRecord]:
        """Writes what one sync read and its success status, all in one transaction."""
        account_id = snapshot.account_id
        seen = snapshot.started_at
        async with self.engine.begin() as conn:
            await self._lock_account(conn, account_id)
            exists = (
                await conn.execute(
                    sa.select(gmb_accounts.c.id).where(gmb_accounts.c.id == account_id)
                )
            ).one_or_none()
            if exists is None:
                raise AccountGone(str(account_id))

            old_locations = {
                r.location_id: r
                for r in await conn.execute(
                    sa.select(
                        gmb_locations.c.location_id,
                        gmb_locations.c.last_seen_at,
                    ).where(gmb_locations.c.account_id == account_id)
                )
            }
            location_rows = [
                self._location_values(account_id, loc, seen, now)
                for loc in snapshot.locations
                if loc.location_id not in old_locations
                or old_locations[loc.location_id].last_seen_at <= seen
            ]
            await self._upsert_locations(conn, location_rows)

            old_reviews = {
                (r.location_id, r.review_id): r
                for r in await conn.execute(
                    sa.select(
                        gmb_reviews.c.location_id,
                        gmb_reviews.c.review_id,
                        gmb_reviews.c.content_hash,
                        gmb_reviews.c.last_seen_at,
                        gmb_reviews.c.deleted_at,
                    ).where(gmb_reviews.c.account_id == account_id)
                )
            }
            added = updated = 0
            review_rows: list[dict[str, Any]] = []
            for review in snapshot.reviews:
                old = old_reviews.get((review.location_id, review.review_id))
                if old is not None and old.last_seen_at > seen:
                    continue  # a newer sync already wrote this review
                if old is None or old.deleted_at is not None:
                    added += 1
                elif old.content_hash != review.content_hash:
                    updated += 1
                review_rows.append(self._review_values(account_id, review, seen, now))
            await self._upsert_reviews(conn, review_rows)

            locations_removed = reviews_removed = 0
            if snapshot.sync_type is SyncType.FULL:
                # Only after a complete pass, and only what no sync as new as this one saw.
                reviews_removed = await self._soft_delete(conn, gmb_reviews, account_id, seen, now)
                locations_removed = await self._soft_delete(
                    conn, gmb_locations, account_id, seen, now
                )

            locations_count = (
                await conn.execute(
                    sa.select(sa.func.count()).where(
                        gmb_locations.c.account_id == account_id,
                        gmb_locations.c.deleted_at.is_(None),
                    )
                )
            ).scalar_one()
            reviews_count = (
                await conn.execute(
                    sa.select(sa.func.count()).where(
                        gmb_reviews.c.account_id == account_id,
                        gmb_reviews.c.deleted_at.is_(None),
                    )
                )
            ).scalar_one()
            newest = max((r.update_time for r in snapshot.reviews), default=None)
            status = await self._status_success(
                conn,
                account_id,
                sync_type=snapshot.sync_type,
                locations_count=locations_count,
                reviews_count=reviews_count,
                newest_review=newest,
                now=now,
            )
        counts = WriteCounts(
            locations_synced=len(snapshot.locations),
            locations_removed=locations_removed,
            reviews_added=added,
            reviews_updated=updated,
            reviews_removed=reviews_removed,
        )
        return counts, status

    @staticmethod
    def _location_values(
        account_id: uuid.UUID, loc: LocationRow, seen: datetime, now: datetime
    ) -> dict[str, Any]:
        return {
            "account_id": account_id,
            "location_id": loc.location_id,
            "title": loc.title,
            "store_code": loc.store_code,
            "primary_category": loc.primary_category,
            "primary_phone": loc.primary_phone,
            "website_uri": loc.website_uri,
            "place_id": loc.place_id,
            "raw": loc.raw,
            "content_hash": loc.content_hash,
            "first_seen_at": now,
            "last_seen_at": seen,
            "observed_at": seen,
            "updated_at": now,
            "deleted_at": None,
        }

    @staticmethod
    def _review_values(
        account_id: uuid.UUID, review: ReviewRow, seen: datetime, now: datetime
    ) -> dict[str, Any]:
        return {
            "account_id": account_id,
            "location_id": review.location_id,
            "review_id": review.review_id,
            "review_name": review.review_name,
            "reviewer_name": review.reviewer_name,
            "reviewer_photo_url": review.reviewer_photo_url,
            "reviewer_anonymous": review.reviewer_anonymous,
            "star_rating": review.star_rating,
            "comment": review.comment,
            "reply_comment": review.reply_comment,
            "reply_update_time": review.reply_update_time,
            "create_time": review.create_time,
            "update_time": review.update_time,
            "raw": review.raw,
            "content_hash": review.content_hash,
            "first_seen_at": now,
            "last_seen_at": seen,
            "observed_at": seen,
            "updated_at": now,
            "deleted_at": None,
        }

    async def _upsert(
        self,
        conn: AsyncConnection,
        table: sa.Table,
        key: Sequence[str],
        rows: Sequence[dict[str, Any]],
    ) -> None:
        """INSERT ... ON CONFLICT DO UPDATE of every column but the key and `first_seen_at`;
        `updated_at` moves only when the content changed or the row comes back from deletion,
        and nothing moves if a newer sync already saw the row."""
        if not rows:
            return
        # One statement executed with many parameter sets: compiled once (and cached), then
        # batched into multi-row VALUES by SQLAlchemy's insertmanyvalues. Building a VALUES
        # list per call instead costs far more in compilation than the database spends.
        insert = self._insert(table)
        excluded = insert.excluded
        fixed = {*key, "first_seen_at", "updated_at"}
        changes: dict[str, Any] = {
            name: getattr(excluded, name) for name in rows[0] if name not in fixed
        }
        changes["updated_at"] = sa.case(
            (
                sa.or_(
                    table.c.content_hash != excluded.content_hash,
                    table.c.deleted_at.is_not(None),
                ),
                excluded.updated_at,
            ),
            else_=table.c.updated_at,
        )
        upsert = insert.on_conflict_do_update(
            index_elements=[table.c[name] for name in key],
            set_=changes,
            where=table.c.last_seen_at <= excluded.last_seen_at,
        )
        await conn.execute(upsert, list(rows))

    async def _upsert_locations(
        self, conn: AsyncConnection, rows: Sequence[dict[str, Any]]
    ) -> None:
        await self._upsert(conn, gmb_locations, ("account_id", "location_id"), rows)

    async def _upsert_reviews(self, conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
        await self._upsert(conn, gmb_reviews, ("account_id", "location_id", "review_id"), rows)

    @staticmethod
    async def _soft_delete(
        conn: AsyncConnection,
        table: sa.Table,
        account_id: uuid.UUID,
        seen: datetime,
        now: datetime,
    ) -> int:
        result = await conn.execute(
            sa.update(table)
            .where(
                table.c.account_id == account_id,
                table.c.deleted_at.is_(None),
                table.c.last_seen_at < seen,
            )
            .values(deleted_at=now, updated_at=now)
        )
        return result.rowcount

    async def _status_success(
        self,
        conn: AsyncConnection,
        account_id: uuid.UUID,
        *,
        sync_type: SyncType,
        locations_count: int,
        reviews_count: int,
        newest_review: datetime | None,
        now: datetime,
    ) -> SyncStatusRecord:
        """The seed's update_sync_status_success: the error cleared, failures reset, counts set,
        the watermark only ever moving forward."""
        insert = self._insert(sync_status).values(
            account_id=account_id,
            last_sync_at=now,
            last_sync_type=sync_type.value,
            last_error=None,
            last_error_at=None,
            consecutive_failures=0,
            locations_count=locations_count,
            reviews_count=reviews_count,
            reviews_watermark=newest_review,
            updated_at=now,
        )
        watermark = sync_status.c.reviews_watermark
        await conn.execute(
            insert.on_conflict_do_update(
                index_elements=[sync_status.c.account_id],
                set_={
                    "last_sync_at": insert.excluded.last_sync_at,
                    "last_sync_type": insert.excluded.last_sync_type,
                    "last_error": None,
                    "consecutive_failures": 0,
                    "locations_count": insert.excluded.locations_count,
                    "reviews_count": insert.excluded.reviews_count,
                    "reviews_watermark": sa.case(
                        (watermark.is_(None), insert.excluded.reviews_watermark),
                        (insert.excluded.reviews_watermark.is_(None), watermark),
                        (
                            insert.excluded.reviews_watermark > watermark,
                            insert.excluded.reviews_watermark,
                        ),
                        else_=watermark,
                    ),
                    "updated_at": insert.excluded.updated_at,
                },
            )
        )
        status = await self._status_get(conn, account_id)
        assert status is not None
        return status

    async def sync_failure(
        self,
        account_id: uuid.UUID,
        *,
        error_type: str,
        message: str,
        details: dict[str, Any],
        job_id: uuid.UUID | None,
        now: datetime,
        deactivate: bool = False,
    ) -> SyncStatusRecord | None:
        """The seed's update_sync_status_failure plus an error_logs row, in one transaction;
        `deactivate` also marks the account inactive (its grant is gone). None if the account
        does not exist (nothing is written)."""
        message = message[:_MAX_ERROR_LENGTH]
        async with self.engine.begin() as conn:
            exists = (
                await conn.execute(
                    sa.select(gmb_accounts.c.id).where(gmb_accounts.c.id == account_id)
                )
            ).one_or_none()
            if exists is None:
                return None
            insert = self._insert(sync_status).values(
                account_id=account_id,
                last_error=message,
                last_error_at=now,
                consecutive_failures=1,
                updated_at=now,
            )
            await conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[sync_status.c.account_id],
                    set_={
                        "last_error": insert.excluded.last_error,
                        "last_error_at": insert.excluded.last_error_at,
                        "consecutive_failures": sync_status.c.consecutive_failures + 1,
                        "updated_at": insert.excluded.updated_at,
                    },
                )
            )
            await conn.execute(
                sa.insert(error_logs).values(
                    id=uuid.uuid4(),
                    account_id=account_id,
                    job_id=job_id,
                    source=ERROR_SOURCE,
                    error_type=error_type,
                    message=message,
                    details=details,
                    created_at=now,
                )
            )
            if deactivate:
                await conn.execute(
                    sa.update(gmb_accounts)
                    .where(gmb_accounts.c.id == account_id)
                    .values(is_active=False, updated_at=now)
                )
            return await self._status_get(conn, account_id)
