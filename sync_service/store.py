"""The sync service's database seam: the only module that issues SQL (SQLAlchemy Core, async;
the statements of a sync pass are built once in `pass_statements`).

Each public method that writes is one transaction; reads run in autocommit (READ COMMITTED
gives each statement its own snapshot either way). Tokens are encrypted on their way in and
decrypted on their way out, so nothing above this module sees a ciphertext and nothing below
it a secret.

Writing a sync is one transaction that takes the account first (PostgreSQL: its row, `FOR NO
KEY UPDATE`; SQLite: `BEGIN IMMEDIATE` already serialises writers), so two overlapping syncs of
one account write one after the other, and a write and the account's deletion never overlap.
Rows carry `last_seen_at`, the time the reading of the sync that last saw them began; a write
only moves it forward, so the later writer of two overlapping syncs never reverts or deletes
what the newer one read.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service_runtime import page_tokens
from service_runtime.database import read_engine
from service_runtime.errors import InvalidArgument
from sync_service.crypto import TokenCipher
from sync_service.google_client import AccessToken, StoredCredentials
from sync_service.models import (
    Account,
    LocationRead,
    LocationRow,
    LocationStatusRecord,
    ReviewRow,
    SyncContext,
    SyncPass,
    SyncStatusRecord,
    SyncType,
    WriteCounts,
)
from sync_service.pass_statements import PassStatements
from sync_service.tables import (
    error_logs,
    gmb_accounts,
    gmb_locations,
    gmb_reviews,
    oauth_tokens,
    sync_status,
)

# The advisory lock class (two-int form: a key space of its own) of "one account's token
# refresh".
_TOKEN_LOCK_CLASS = 0x544F4B31  # "TOK1"
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
        locations_skipped=row.locations_skipped,
    )


def _changed_at(table: sa.Table, excluded: Any) -> Any:
    """`updated_at` of an upsert: moves only when the content changed or the row comes back
    from deletion."""
    return sa.case(
        (
            sa.or_(
                table.c.content_hash != excluded.content_hash,
                table.c.deleted_at.is_not(None),
            ),
            excluded.updated_at,
        ),
        else_=table.c.updated_at,
    )


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
        "review_state": "ineligible" if loc.ineligible_reason else "pending",
        "review_state_reason": loc.ineligible_reason,
    }


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


@dataclass
class _TokenGuard:
    current: StoredCredentials | None
    _store: SyncStore
    _conn: AsyncConnection | None
    _account_id: uuid.UUID

    async def save(self, token: AccessToken) -> None:
        now = datetime.now(UTC)
        if self._conn is not None:
            await self._store._token_save(self._conn, self._account_id, token, now)
        else:
            await self._store.token_save(self._account_id, token, now)


class AccountTokens:
    """One account's tokens as a Google session refreshes them (see `TokenStore`)."""

    def __init__(self, store: SyncStore, account_id: uuid.UUID) -> None:
        self._store = store
        self._account_id = account_id

    @contextlib.asynccontextmanager
    async def refresh_guard(self) -> AsyncIterator[_TokenGuard]:
        """On PostgreSQL, a transaction holding the account's token lock: a replica that
        waited for it reads the token its peer just stored instead of refreshing again. (SQLite
        serves one process, where the session's in-process lock is enough, and a write
        transaction held across an HTTP call would stall every other writer.)"""
        store, account_id = self._store, self._account_id
        if not store._postgres:
            async with store._reads.connect() as conn:
                current = await store._stored_credentials(conn, account_id)
            yield _TokenGuard(current, store, None, account_id)
            return
        async with store.engine.begin() as conn:
            await store._lock_tokens(conn, account_id)
            current = await store._stored_credentials(conn, account_id)
            yield _TokenGuard(current, store, conn, account_id)


def encode_page_token(created_at: datetime, account_id: uuid.UUID) -> str:
    return page_tokens.encode_page_token([created_at.isoformat(), str(account_id)])


_NOT_OUR_TOKEN = "is not a page token returned by ListAccounts"


def decode_page_token(token: str) -> tuple[datetime, uuid.UUID]:
    """The position a page token names, or BadPageToken."""
    try:
        payload = page_tokens.decode_page_token(token, _NOT_OUR_TOKEN)
        if not isinstance(payload, list) or len(payload) != 2:
            raise BadPageToken(_NOT_OUR_TOKEN)
        created_at = page_tokens.cursor_time(payload[0], _NOT_OUR_TOKEN)
        account_id = uuid.UUID(payload[1]) if isinstance(payload[1], str) else None
    except (InvalidArgument, ValueError):
        raise BadPageToken(_NOT_OUR_TOKEN) from None
    if account_id is None:
        raise BadPageToken(_NOT_OUR_TOKEN)
    return created_at, account_id


class SyncStore:
    """Accounts, tokens, sync status, error logs, locations and reviews."""

    def __init__(self, engine: AsyncEngine, cipher: TokenCipher) -> None:
        self.engine = engine
        # Reads outside the sync's write transactions run in autocommit: no BEGIN and no
        # ROLLBACK around them. A ROLLBACK also makes psycopg drop every statement it has
        # prepared on the connection, so a read after each sync kept the sync's statements
        # from ever staying prepared (each was planned again on every execution).
        self._reads = read_engine(engine)
        self._cipher = cipher
        self._postgres = engine.dialect.name == "postgresql"
        self._reviews_upserts: dict[tuple[str, ...], Any] = {}
        self._pass = PassStatements(self._insert)

    def _insert(self, table: sa.Table) -> Any:
        return (postgresql.insert if self._postgres else sqlite.insert)(table)

    @functools.cached_property
    def _locations_upsert(self) -> Any:
        """The upsert of a pass's locations, built once: building it (its `excluded` alias, and
        the cache key SQLAlchemy derives from a new statement) cost more than sending it."""
        insert = self._insert(gmb_locations)
        excluded = insert.excluded
        table = gmb_locations
        changes: dict[str, Any] = {
            name: getattr(excluded, name)
            for name in (
                "title",
                "store_code",
                "primary_category",
                "primary_phone",
                "website_uri",
                "place_id",
                "raw",
                "content_hash",
                "last_seen_at",
                "observed_at",
            )
        }
        changes["deleted_at"] = None
        changes["updated_at"] = _changed_at(table, excluded)
        became_eligible = sa.and_(
            excluded.review_state != "ineligible", table.c.review_state == "ineligible"
        )
        changes["review_state"] = sa.case(
            (excluded.review_state == "ineligible", excluded.review_state),
            (became_eligible, "pending"),
            else_=table.c.review_state,
        )
        changes["review_state_reason"] = sa.case(
            (excluded.review_state == "ineligible", excluded.review_state_reason),
            (became_eligible, None),
            else_=table.c.review_state_reason,
        )
        return insert.on_conflict_do_update(
            index_elements=[table.c.account_id, table.c.location_id],
            set_=changes,
            where=table.c.observed_at <= excluded.observed_at,
        )

    async def ping(self) -> bool:
        """The health probe: the database answers `SELECT 1`."""
        async with self._reads.connect() as conn:
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
        async with self._reads.connect() as conn:
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
        async with self._reads.connect() as conn:
            rows = (await conn.execute(query)).all()
        accounts = [_account(row) for row in rows[:page_size]]
        next_token = ""
        if len(rows) > page_size:
            last = accounts[-1]
            next_token = encode_page_token(last.created_at, last.id)
        return accounts, next_token

    # --- Sync status ---------------------------------------------------------------------------

    async def status_get(self, account_id: uuid.UUID) -> SyncStatusRecord | None:
        async with self._reads.connect() as conn:
            return await self._status_get(conn, account_id)

    async def _status_get(
        self, conn: AsyncConnection, account_id: uuid.UUID
    ) -> SyncStatusRecord | None:
        row = (await conn.execute(self._pass.status, {"account": account_id})).one_or_none()
        return _status(row) if row else None

    # --- Sync ----------------------------------------------------------------------------------

    async def sync_context(self, account_id: uuid.UUID) -> SyncContext | None:
        """The account, its decrypted tokens, its status and the locations whose reviews are
        synced: None if the account does not exist. Raises TokenDecryptError if the tokens
        cannot be decrypted."""
        async with self._reads.connect() as conn:
            params = {"account": account_id}
            row = (await conn.execute(self._pass.context, params)).one_or_none()
            if row is None:
                return None
            status = await self._status_get(conn, account_id)
            known = (await conn.execute(self._pass.synced_locations, params)).scalars()
            known_ids = frozenset(known)
        return SyncContext(
            account=_account(row),
            credentials=self._credentials(account_id, row),
            status=status,
            known_location_ids=known_ids,
        )

    def _credentials(self, account_id: uuid.UUID, row: Any) -> StoredCredentials | None:
        if row.refresh_token_encrypted is None:
            return None
        return StoredCredentials(
            key=str(account_id),
            refresh_token=self._cipher.decrypt(row.refresh_token_encrypted),
            access_token=(
                self._cipher.decrypt(row.access_token_encrypted)
                if row.access_token_encrypted
                else None
            ),
            access_token_expires_at=row.access_token_expires_at,
            version=row.refresh_token_encrypted,
        )

    def account_tokens(self, account_id: uuid.UUID) -> AccountTokens:
        """The token store a Google session of this account refreshes through."""
        return AccountTokens(self, account_id)

    async def token_save(self, account_id: uuid.UUID, token: AccessToken, now: datetime) -> None:
        """Stores a refreshed access token (and a rotated refresh token) in its own transaction,
        so it outlives a sync that fails afterwards."""
        async with self.engine.begin() as conn:
            await self._token_save(conn, account_id, token, now)

    async def _token_save(
        self, conn: AsyncConnection, account_id: uuid.UUID, token: AccessToken, now: datetime
    ) -> None:
        values: dict[str, Any] = {
            "access_token_encrypted": self._cipher.encrypt(token.value),
            "access_token_expires_at": token.expires_at,
            "scope": token.scope,
            "updated_at": now,
        }
        if token.refresh_token:
            values["refresh_token_encrypted"] = self._cipher.encrypt(token.refresh_token)
        await conn.execute(
            sa.update(oauth_tokens).where(oauth_tokens.c.account_id == account_id).values(**values)
        )

    async def _stored_credentials(
        self, conn: AsyncConnection, account_id: uuid.UUID
    ) -> StoredCredentials | None:
        row = (
            await conn.execute(
                sa.select(
                    oauth_tokens.c.refresh_token_encrypted,
                    oauth_tokens.c.access_token_encrypted,
                    oauth_tokens.c.access_token_expires_at,
                ).where(oauth_tokens.c.account_id == account_id)
            )
        ).one_or_none()
        return self._credentials(account_id, row) if row is not None else None

    async def _lock_tokens(self, conn: AsyncConnection, account_id: uuid.UUID) -> None:
        """PostgreSQL: the account's token lock, for this transaction (an advisory lock, not the
        account's row: a refresh must not wait for a sync's write, nor hold one up)."""
        if self._postgres:
            object_id = int.from_bytes(account_id.bytes[:4], "big", signed=True)
            await conn.execute(
                self._pass.advisory_lock,
                {"lock_class": _TOKEN_LOCK_CLASS, "object_id": object_id},
            )

    async def _enter_account(self, conn: AsyncConnection, account_id: uuid.UUID) -> datetime:
        """Takes the account for this transaction's writes and reads the database's clock, in
        one statement: every replica stamps snapshots with the same clock. (SQLite serves one
        process, whose clock is the only one, and `BEGIN IMMEDIATE` serialises its writers.)

        On PostgreSQL the account's row lock serialises two syncs' writes of one account and a
        write with the account's deletion: a deletion committed first, even while the lock was
        waited for, is AccountGone here; one that comes later waits for this transaction."""
        params = {"account": account_id}
        if not self._postgres:
            if not (await conn.execute(self._pass.account_exists, params)).scalar_one():
                raise AccountGone(str(account_id))
            return datetime.now(UTC)
        now = (await conn.execute(self._pass.take_account, params)).scalar_one_or_none()
        if now is None:
            raise AccountGone(str(account_id))
        return now.astimezone(UTC)

    async def pass_begin(
        self, account_id: uuid.UUID, sync_type: SyncType, max_age: timedelta
    ) -> SyncPass:
        """Begins a pass, or resumes the account's unfinished pass of the same type if it is
        younger than `max_age`. A full pass replaces an unfinished incremental one; an
        incremental sync leaves an unfinished full pass alone and runs without a checkpoint."""
        async with self.engine.begin() as conn:
            now = await self._enter_account(conn, account_id)
            statements = self._pass
            row = (await conn.execute(statements.checkpoint, {"account": account_id})).one_or_none()
            fresh = row is not None and now - row.pass_started_at <= max_age
            if row is not None and fresh and row.sync_type == sync_type.value:
                await conn.execute(
                    statements.checkpoint_resumed, {"account": account_id, "now": now}
                )
                return SyncPass(row.pass_started_at, now, resumed=True, checkpointed=True)
            if row is not None and fresh and sync_type is SyncType.INCREMENTAL:
                return SyncPass(now, now, resumed=False, checkpointed=False)
            await conn.execute(
                statements.checkpoint_started,
                {
                    "account_id": account_id,
                    "sync_type": sync_type.value,
                    "pass_started_at": now,
                    "attempts": 1,
                    "created_at": now,
                    "updated_at": now,
                },
            )
            return SyncPass(now, now, resumed=False, checkpointed=True)

    async def locations_write(
        self, account_id: uuid.UUID, locations: Sequence[LocationRow], seen: datetime
    ) -> None:
        """Stores the locations a pass listed. A location that cannot have reviews is marked
        ineligible with the reason; one that can again goes back to pending. Rows that a newer
        snapshot decided are left alone."""
        if not locations:
            return
        async with self.engine.begin() as conn:
            now = await self._enter_account(conn, account_id)
            rows = [_location_values(account_id, loc, seen, now) for loc in locations]
            await conn.execute(self._locations_upsert, rows)

    async def locations_read_in_pass(self, account_id: uuid.UUID, seen: datetime) -> set[str]:
        """Locations whose reviews this pass (snapshot time `seen`) already read."""
        async with self._reads.connect() as conn:
            rows = await conn.execute(
                sa.select(gmb_locations.c.location_id).where(
                    gmb_locations.c.account_id == account_id,
                    gmb_locations.c.reviews_read_at >= seen,
                    gmb_locations.c.review_state == "synced",
                )
            )
            return set(rows.scalars())

    async def review_ids(self, account_id: uuid.UUID, location_id: str) -> set[str]:
        """The stored, not deleted, reviews of a location."""
        async with self._reads.connect() as conn:
            rows = await conn.execute(
                self._pass.review_ids, {"account": account_id, "location": location_id}
            )
            return set(rows.scalars())

    async def location_reviews_write(self, read: LocationRead, seen: datetime) -> WriteCounts:
        """Stores what was read of one location's reviews, and its state, in one transaction:
        a sync that runs out of time keeps every location it finished."""
        account_id = read.account_id
        async with self.engine.begin() as conn:
            now = await self._enter_account(conn, account_id)
            ids = [review.review_id for review in read.reviews]
            where = {"account": account_id, "location": read.location_id}
            old_reviews = (
                {
                    r.review_id: r
                    for r in await conn.execute(self._pass.stored_reviews, {**where, "ids": ids})
                }
                if ids
                else {}
            )
            added = updated = 0
            rows: list[dict[str, Any]] = []
            for review in read.reviews:
                old = old_reviews.get(review.review_id)
                if old is not None and old.observed_at > seen:
                    continue  # a newer sync already decided this review
                if old is None or old.deleted_at is not None:
                    added += 1
                elif old.content_hash != review.content_hash:
                    updated += 1
                rows.append(_review_values(account_id, review, seen, now))
            await self._upsert_reviews(conn, rows)
            state = {**where, "seen": seen, "verified": read.verified}
            if read.average_rating is None and read.total_review_count is None:
                await conn.execute(self._pass.location_read, state)
            else:
                figures = {"rating": read.average_rating, "total": read.total_review_count}
                await conn.execute(self._pass.location_read_with_figures, {**state, **figures})
        return WriteCounts(reviews_added=added, reviews_updated=updated)

    async def location_reviews_refused(
        self, account_id: uuid.UUID, location_id: str, reason: str, seen: datetime
    ) -> None:
        """Records that Google refused a location's reviews (the rest of the account syncs)."""
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(gmb_locations)
                .where(
                    gmb_locations.c.account_id == account_id,
                    gmb_locations.c.location_id == location_id,
                    gmb_locations.c.observed_at <= seen,
                )
                .values(review_state="failed", review_state_reason=reason[:_MAX_ERROR_LENGTH])
            )

    async def pass_complete(
        self,
        account_id: uuid.UUID,
        sync_type: SyncType,
        sync_pass: SyncPass,
        *,
        locations_skipped: int,
    ) -> tuple[WriteCounts, SyncStatusRecord]:
        """Ends a pass whose every location was read: a full pass soft-deletes the locations no
        attempt of it listed and the reviews it proved gone (of locations whose read was
        verified, and of removed locations), stamping each deletion with this attempt's
        snapshot time so that no older snapshot revives it; then the success status, and the
        checkpoint is dropped."""
        begun, seen = sync_pass.started_at, sync_pass.seen_at
        async with self.engine.begin() as conn:
            now = await self._enter_account(conn, account_id)
            statements = self._pass
            params = {"account": account_id, "begun": begun, "seen": seen, "now": now}
            locations_removed = reviews_removed = 0
            if sync_type is SyncType.FULL:
                gone = await conn.execute(statements.locations_gone, params)
                locations_removed = gone.rowcount
                gone = await conn.execute(statements.reviews_gone, params)
                reviews_removed = gone.rowcount
            totals = await conn.execute(statements.counts, params)
            locations_count, reviews_count, newest = totals.one()
            upserted = await conn.execute(
                statements.status_success,
                {
                    "account_id": account_id,
                    "last_sync_at": now,
                    "last_sync_type": sync_type.value,
                    "last_error": None,
                    "last_error_at": None,
                    "consecutive_failures": 0,
                    "locations_count": locations_count,
                    "reviews_count": reviews_count,
                    "locations_skipped": locations_skipped,
                    "reviews_watermark": newest,
                    "updated_at": now,
                },
            )
            status = _status(upserted.one())
            await conn.execute(statements.checkpoint_dropped, params)
        counts = WriteCounts(locations_removed=locations_removed, reviews_removed=reviews_removed)
        return counts, status

    async def location_statuses(self, account_id: uuid.UUID) -> list[LocationStatusRecord]:
        """The stored locations of an account with their review state and figures."""
        reviews = gmb_reviews.c
        stored = (
            sa.select(sa.func.count())
            .where(
                reviews.account_id == gmb_locations.c.account_id,
                reviews.location_id == gmb_locations.c.location_id,
                reviews.deleted_at.is_(None),
            )
            .scalar_subquery()
        )
        async with self._reads.connect() as conn:
            rows = await conn.execute(
                sa.select(
                    gmb_locations.c.location_id,
                    gmb_locations.c.title,
                    gmb_locations.c.review_state,
                    gmb_locations.c.review_state_reason,
                    gmb_locations.c.average_rating,
                    gmb_locations.c.total_review_count,
                    gmb_locations.c.reviews_read_at,
                    stored.label("reviews_stored"),
                )
                .where(
                    gmb_locations.c.account_id == account_id,
                    gmb_locations.c.deleted_at.is_(None),
                )
                .order_by(gmb_locations.c.location_id)
            )
            return [LocationStatusRecord(**row._mapping) for row in rows]

    async def _upsert_reviews(self, conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
        """INSERT ... ON CONFLICT DO UPDATE of every column but the key and `first_seen_at`;
        `updated_at` moves only when the content changed or the row comes back from deletion,
        and nothing moves if a newer snapshot decided the row."""
        if not rows:
            return
        # One statement executed with many parameter sets: compiled once (and cached), then
        # batched into multi-row VALUES by SQLAlchemy's insertmanyvalues.
        await conn.execute(self._reviews_upsert(tuple(rows[0])), list(rows))

    def _reviews_upsert(self, columns: tuple[str, ...]) -> Any:
        """The upsert of reviews with `columns`, built once per set of columns (see
        `_locations_upsert`)."""
        known = self._reviews_upserts.get(columns)
        if known is not None:
            return known
        table = gmb_reviews
        insert = self._insert(table)
        excluded = insert.excluded
        key = ("account_id", "location_id", "review_id")
        fixed = {*key, "first_seen_at", "updated_at"}
        changes: dict[str, Any] = {
            name: getattr(excluded, name) for name in columns if name not in fixed
        }
        changes["updated_at"] = _changed_at(table, excluded)
        upsert = insert.on_conflict_do_update(
            index_elements=[table.c[name] for name in key],
            set_=changes,
            where=table.c.observed_at <= excluded.observed_at,
        )
        self._reviews_upserts[columns] = upsert
        return upsert

    async def sync_failure(
        self,
        account_id: uuid.UUID,
        *,
        error_type: str,
        message: str,
        details: dict[str, Any],
        job_id: uuid.UUID | None,
        now: datetime,
        deactivate_if_version: str | None = None,
    ) -> tuple[SyncStatusRecord | None, bool]:
        """The seed's update_sync_status_failure plus an error_logs row, in one transaction;
        with `deactivate_if_version`, the account is also marked inactive (its grant is gone),
        but only if the stored grant is still the one that failed (`StoredCredentials.version`):
        an account reconnected during the sync stays active. Returns the status (None if the
        account does not exist: nothing is written) and whether the account was deactivated."""
        message = message[:_MAX_ERROR_LENGTH]
        async with self.engine.begin() as conn:
            exists = (
                await conn.execute(
                    sa.select(gmb_accounts.c.id).where(gmb_accounts.c.id == account_id)
                )
            ).one_or_none()
            if exists is None:
                return None, False
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
            deactivated = False
            if deactivate_if_version is not None:
                still_stored = sa.exists().where(
                    oauth_tokens.c.account_id == account_id,
                    oauth_tokens.c.refresh_token_encrypted == deactivate_if_version,
                )
                result = await conn.execute(
                    sa.update(gmb_accounts)
                    .where(gmb_accounts.c.id == account_id, still_stored)
                    .values(is_active=False, updated_at=now)
                )
                deactivated = result.rowcount == 1
            if deactivated:
                details = {**details, "account_deactivated": True}
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
            return await self._status_get(conn, account_id), deactivated
