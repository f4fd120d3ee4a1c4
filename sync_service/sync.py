"""The sync of one account: read everything from Google first, then write it in one transaction.

Full sync: every location and every review, upserted by Google id; what Google no longer
returns is soft-deleted, and only after the whole pass succeeded. Incremental sync: each known
location's reviews newest-first, stopping below the last successful sync's watermark minus an
overlap; a location never seen before is read whole; nothing is deleted.

The reading phase is bounded by the caller's deadline (less a reserve for the write); if it runs
out, nothing of the sync is written, only a failure in sync_status and error_logs. A refreshed
access token is stored at once, in its own transaction, whatever happens to the sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from opentelemetry import trace

from sync_service.crypto import TokenDecryptError
from sync_service.google_client import (
    AccessToken,
    BadRequest,
    GoogleApi,
    GoogleError,
    GoogleSession,
    InvalidGrant,
)
from sync_service.models import (
    LocationRow,
    ReviewRow,
    SyncContext,
    SyncSnapshot,
    SyncStatusRecord,
    SyncType,
    WriteCounts,
)
from sync_service.settings import SyncSettings
from sync_service.store import AccountGone, SyncStore

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)


class SyncError(Exception):
    """A sync could not run or finish, for a reason other than Google's answer."""


class AccountNotFound(SyncError):
    """No account has this id."""


class AccountInactive(SyncError):
    """The account is deactivated; it must be reconnected before it syncs again."""


class AccountNotConnected(SyncError):
    """The account has no stored OAuth tokens."""


class CredentialsUnreadable(SyncError):
    """The stored tokens cannot be decrypted with the configured keys."""


class SyncDeadlineExceeded(SyncError):
    """The caller's deadline ran out before the sync finished; nothing was written."""


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one successful sync did."""

    account_id: uuid.UUID
    sync_type: SyncType
    counts: WriteCounts
    api_calls: int
    duration: timedelta
    status: SyncStatusRecord


def _error_type(exc: BaseException) -> str:
    """`QuotaExceeded` -> `quota_exceeded`: the error_logs.error_type of a failure."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


def _write_reserve(budget: float) -> float:
    """Time kept back from the reading phase for the write (or the failure record)."""
    return min(max(budget * 0.25, 0.25), 3.0)


class Syncer:
    """Runs syncs. One per process; syncs of different accounts run concurrently."""

    def __init__(self, store: SyncStore, google: GoogleApi, settings: SyncSettings) -> None:
        self._store = store
        self._google = google
        self._settings = settings

    async def sync(
        self,
        account_id: uuid.UUID,
        sync_type: SyncType,
        *,
        time_budget: float | None = None,
        job_id: uuid.UUID | None = None,
        attempt: int = 0,
    ) -> SyncResult:
        """Syncs one account within `time_budget` seconds (the caller's deadline), or raises a
        SyncError or a GoogleError after recording the failure."""
        started = time.monotonic()
        budget = self._settings.max_sync_duration.total_seconds()
        if time_budget is not None:
            budget = min(budget, time_budget)
        try:
            context = await self._store.sync_context(account_id)
        except TokenDecryptError as exc:
            failure = CredentialsUnreadable(str(exc))
            await self._record_failure(account_id, failure, sync_type, job_id, attempt, 0)
            raise failure from None
        if context is None:
            raise AccountNotFound(f"account {account_id} does not exist")
        if not context.account.is_active:
            raise AccountInactive(
                f"account {account_id} ({context.account.google_account_id}) is deactivated, "
                "most likely because Google revoked its grant: reconnect it with ConnectAccount"
            )
        if context.credentials is None:
            failure = AccountNotConnected(
                f"account {account_id} has no stored OAuth tokens: connect it with ConnectAccount"
            )
            await self._record_failure(account_id, failure, sync_type, job_id, attempt, 0)
            raise failure

        session = self._google.session(
            context.credentials,
            on_token_refreshed=lambda token: self._store_token(account_id, token),
        )
        read_budget = budget - _write_reserve(budget)
        read_started_at = datetime.now(UTC)
        try:
            with tracer.start_as_current_span(
                "sync.read", attributes={"gmb.sync_type": sync_type.value}
            ):
                async with asyncio.timeout(read_budget):
                    snapshot = await self._read(context, sync_type, session, read_started_at)
        except TimeoutError:
            failure_deadline = SyncDeadlineExceeded(
                f"the deadline ran out after {time.monotonic() - started:.1f}s while reading "
                f"from Google ({session.api_calls} HTTP calls made); nothing was written"
            )
            await self._record_failure(
                account_id, failure_deadline, sync_type, job_id, attempt, session.api_calls
            )
            raise failure_deadline from None
        except GoogleError as exc:
            await self._record_failure(
                account_id,
                exc,
                sync_type,
                job_id,
                attempt,
                session.api_calls,
                deactivate=isinstance(exc, InvalidGrant),
            )
            raise

        with tracer.start_as_current_span(
            "sync.write",
            attributes={
                "gmb.locations": len(snapshot.locations),
                "gmb.reviews": len(snapshot.reviews),
            },
        ):
            try:
                counts, status = await self._store.sync_write(snapshot, datetime.now(UTC))
            except AccountGone:
                raise AccountNotFound(f"account {account_id} was deleted during its sync") from None
        duration = timedelta(seconds=time.monotonic() - started)
        log.info(
            "synced account %s (%s, job %s attempt %d): %d locations (-%d), reviews +%d ~%d -%d, "
            "%d HTTP calls, %.2fs",
            account_id,
            sync_type.value,
            job_id,
            attempt,
            counts.locations_synced,
            counts.locations_removed,
            counts.reviews_added,
            counts.reviews_updated,
            counts.reviews_removed,
            session.api_calls,
            duration.total_seconds(),
        )
        return SyncResult(
            account_id=account_id,
            sync_type=sync_type,
            counts=counts,
            api_calls=session.api_calls,
            duration=duration,
            status=status,
        )

    async def _store_token(self, account_id: uuid.UUID, token: AccessToken) -> None:
        await self._store.token_save(account_id, token, datetime.now(UTC))

    async def _read(
        self,
        context: SyncContext,
        sync_type: SyncType,
        session: GoogleSession,
        started_at: datetime,
    ) -> SyncSnapshot:
        account = context.account.google_account_id
        locations = _unique_locations(
            _parse(LocationRow.from_google, doc, "location")
            for doc in await session.list_locations(account)
        )
        cutoff: datetime | None = None
        watermark = context.status.reviews_watermark if context.status else None
        if sync_type is SyncType.INCREMENTAL and watermark is not None:
            cutoff = watermark - self._settings.incremental_overlap
        limit = asyncio.Semaphore(self._settings.location_concurrency)

        async def read_location(location: LocationRow) -> list[ReviewRow]:
            # A location this account never had is read whole, even in an incremental sync.
            known = location.location_id in context.known_location_ids
            async with limit:
                return await _read_reviews(
                    session, account, location.location_id, cutoff if known else None
                )

        tasks: list[asyncio.Task[list[ReviewRow]]] = []
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(read_location(loc)) for loc in locations]
        except BaseExceptionGroup as group_error:
            # One failure cancels the other reads; the first real error is the one to report.
            raise _first_error(group_error) from None
        reviews: dict[tuple[str, str], ReviewRow] = {}
        for task in tasks:
            for review in task.result():
                # Pages can shift while they are read; the first (newest) copy wins.
                reviews.setdefault((review.location_id, review.review_id), review)
        return SyncSnapshot(
            account_id=context.account.id,
            sync_type=sync_type,
            started_at=started_at,
            locations=locations,
            reviews=list(reviews.values()),
        )

    async def _record_failure(
        self,
        account_id: uuid.UUID,
        exc: Exception,
        sync_type: SyncType,
        job_id: uuid.UUID | None,
        attempt: int,
        api_calls: int,
        *,
        deactivate: bool = False,
    ) -> None:
        details: dict[str, Any] = {
            "sync_type": sync_type.value,
            "attempt": attempt,
            "api_calls": api_calls,
        }
        if isinstance(exc, GoogleError):
            details.update(exc.details())
        if deactivate:
            details["account_deactivated"] = True
        log.warning("sync of account %s failed: %s", account_id, exc)
        await self._store.sync_failure(
            account_id,
            error_type=_error_type(exc),
            message=str(exc),
            details=details,
            job_id=job_id,
            now=datetime.now(UTC),
            deactivate=deactivate,
        )


async def _read_reviews(
    session: GoogleSession, account: str, location_id: str, cutoff: datetime | None
) -> list[ReviewRow]:
    """A location's reviews, newest update first, down to `cutoff` (all of them if None)."""
    rows: list[ReviewRow] = []
    async with contextlib.aclosing(session.review_pages(account, location_id)) as pages:
        async for page in pages:
            reached_cutoff = False
            for doc in page.get("reviews") or ():
                review = _parse(lambda d: ReviewRow.from_google(location_id, d), doc, "review")
                if cutoff is not None and review.update_time < cutoff:
                    reached_cutoff = True
                    continue
                rows.append(review)
            if reached_cutoff:
                break
    return rows


def _parse(parse: Any, doc: Any, what: str) -> Any:
    try:
        if not isinstance(doc, dict):
            raise TypeError(what)
        return parse(doc)
    except (KeyError, ValueError, TypeError) as exc:
        raise BadRequest(f"Google returned a malformed {what}: {exc}") from None


def _unique_locations(locations: Any) -> list[LocationRow]:
    unique: dict[str, LocationRow] = {}
    for location in locations:
        unique.setdefault(location.location_id, location)
    return list(unique.values())


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The first non-cancellation error of a task group, unwrapping nested groups."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]
