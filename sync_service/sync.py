"""The sync of one account, location by location, resumable across attempts.

A pass lists the account's locations, then reads each location's reviews and writes them in a
transaction of its own, so a sync that runs out of time keeps what it finished; the pass's
checkpoint (its snapshot time, the database's clock when it began) lets the next attempt read
only the locations not done yet. Full syncs read every review; deletions happen only when every
location of the pass is done, and only of reviews the pass proved gone. Incremental syncs read
reviews newest-first down to the last watermark minus an overlap, many locations per call
(batchGetReviews), and delete nothing.

Google refuses reviews for some locations (unverified, suspended, duplicates, just removed):
such a location is skipped with its reason recorded, and the rest of the account syncs.
Errors of the whole account (quota, Google down, a revoked grant, a disabled API) stop the pass;
what was written stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from opentelemetry import trace

from sync_service.crypto import TokenDecryptError
from sync_service.google_client import (
    BATCH_REVIEWS_MAX_LOCATIONS,
    AccessDenied,
    AccessToken,
    ApiDisabled,
    BadRequest,
    GoogleApi,
    GoogleError,
    GoogleSession,
    InvalidGrant,
    ResourceNotFound,
    ScopeInsufficient,
    StoredCredentials,
)
from sync_service.models import (
    LocationRead,
    LocationRow,
    ReviewRow,
    SyncContext,
    SyncPass,
    SyncStatusRecord,
    SyncType,
    WriteCounts,
)
from sync_service.settings import SyncSettings
from sync_service.store import AccountGone, SyncStore

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)
T = TypeVar("T")

# Google's clock and ours differ: a location's list counts as "changed while read" if a review
# was updated after the read began less this much.
CLOCK_SKEW = timedelta(minutes=5)
# Errors Google gives for one location alone: that location is skipped, the account syncs.
LOCATION_SCOPED = (BadRequest, AccessDenied, ResourceNotFound)


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
    """The caller's deadline ran out before the sync finished a single location."""


class SyncIncomplete(SyncError):
    """The deadline ran out after some locations were written: the next attempt resumes."""

    def __init__(self, message: str, *, locations_done: int, locations_total: int) -> None:
        super().__init__(message)
        self.locations_done = locations_done
        self.locations_total = locations_total


@dataclass(frozen=True, slots=True)
class SkippedLocation:
    location_id: str
    review_state: str  # 'ineligible' or 'failed'
    reason: str


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one successful sync did."""

    account_id: uuid.UUID
    sync_type: SyncType
    counts: WriteCounts
    api_calls: int
    duration: timedelta
    status: SyncStatusRecord
    skipped: list[SkippedLocation] = field(default_factory=list)
    resumed: bool = False
    deletions_deferred: int = 0


@dataclass
class _Progress:
    """What a pass did so far (shared by its concurrent location tasks)."""

    counts: WriteCounts = field(default_factory=WriteCounts)
    locations_total: int = 0
    locations_done: int = 0  # done in earlier attempts or this one
    written_now: int = 0  # locations written by this attempt
    skipped: list[SkippedLocation] = field(default_factory=list)
    deletions_deferred: int = 0


def _error_type(exc: BaseException) -> str:
    """`QuotaExceeded` -> `quota_exceeded`: the error_logs.error_type of a failure."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


def _write_reserve(budget: float) -> float:
    """Time kept back from the pass for its last write (or the failure record)."""
    return min(max(budget * 0.1, 0.5), 3.0)


class Syncer:
    """Runs syncs. One per process; syncs of different accounts run concurrently."""

    def __init__(self, store: SyncStore, google: GoogleApi, settings: SyncSettings) -> None:
        self._store = store
        self._google = google
        self._settings = settings
        self._writes = _Writes()

    async def drain(self, timeout: float = 5.0) -> None:
        """Waits for writes that syncs cut short by their deadline left running."""
        await self._writes.drain(timeout)

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
        record = _FailureRecorder(self._store, self._writes, account_id, sync_type, job_id, attempt)
        try:
            context = await self._store.sync_context(account_id)
        except TokenDecryptError as exc:
            failure: SyncError = CredentialsUnreadable(str(exc))
            await record(failure, 0)
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
            await record(failure, 0)
            raise failure

        deadline = asyncio.get_running_loop().time() + budget - _write_reserve(budget)
        session = self._google.session(
            context.credentials, self._store.account_tokens(account_id), deadline=deadline
        )
        progress = _Progress()
        sync_pass: SyncPass | None = None
        try:
            async with asyncio.timeout_at(deadline):
                sync_pass = await self._store.pass_begin(
                    account_id, sync_type, self._settings.checkpoint_max_age
                )
                with tracer.start_as_current_span(
                    "sync.pass",
                    attributes={"gmb.sync_type": sync_type.value, "gmb.resumed": sync_pass.resumed},
                ):
                    await self._run_pass(context, sync_type, sync_pass, session, progress)
            assert sync_pass is not None
            counts, status = await self._store.pass_complete(
                account_id,
                sync_type,
                sync_pass,
                locations_skipped=len(progress.skipped),
            )
        except TimeoutError:
            elapsed = time.monotonic() - started
            # Only progress a checkpoint keeps is worth an attempt that spends none: a pass
            # without one (an incremental sync beside an unfinished full pass) starts over.
            if progress.written_now and sync_pass is not None and sync_pass.checkpointed:
                incomplete = SyncIncomplete(
                    f"the deadline ran out after {elapsed:.1f}s with {progress.locations_done} "
                    f"of {progress.locations_total} locations written; the next attempt "
                    "resumes from there",
                    locations_done=progress.locations_done,
                    locations_total=progress.locations_total,
                )
                log.info("sync of account %s incomplete: %s", account_id, incomplete)
                raise incomplete from None
            failure = SyncDeadlineExceeded(
                f"the deadline ran out after {elapsed:.1f}s before a location was finished "
                f"({session.api_calls} HTTP calls made)"
            )
            await record(failure, session.api_calls)
            raise failure from None
        except AccountGone:
            raise AccountNotFound(f"account {account_id} was deleted during its sync") from None
        except GoogleError as exc:
            grant_is_gone = isinstance(exc, InvalidGrant | ScopeInsufficient)
            await record(
                exc,
                session.api_calls,
                deactivate_if_version=session.credentials_version if grant_is_gone else None,
            )
            raise

        counts += progress.counts
        duration = timedelta(seconds=time.monotonic() - started)
        log.info(
            "synced account %s (%s, job %s attempt %d%s): %d locations (-%d, %d skipped), "
            "reviews +%d ~%d -%d, %d HTTP calls, %.2fs",
            account_id,
            sync_type.value,
            job_id,
            attempt,
            ", resumed" if sync_pass and sync_pass.resumed else "",
            progress.locations_total,
            counts.locations_removed,
            len(progress.skipped),
            counts.reviews_added,
            counts.reviews_updated,
            counts.reviews_removed,
            session.api_calls,
            duration.total_seconds(),
        )
        return SyncResult(
            account_id=account_id,
            sync_type=sync_type,
            counts=WriteCounts(
                locations_synced=progress.locations_total,
                locations_removed=counts.locations_removed,
                reviews_added=counts.reviews_added,
                reviews_updated=counts.reviews_updated,
                reviews_removed=counts.reviews_removed,
            ),
            api_calls=session.api_calls,
            duration=duration,
            status=status,
            skipped=progress.skipped,
            resumed=bool(sync_pass and sync_pass.resumed),
            deletions_deferred=progress.deletions_deferred,
        )

    async def discover_accounts(
        self, refresh_token: str, *, time_budget: float | None = None
    ) -> DiscoveredGrant:
        """Every account a grant can see (accounts.list), within the caller's deadline."""
        budget = self._settings.max_sync_duration.total_seconds()
        if time_budget is not None:
            budget = min(budget, time_budget)
        tokens = _GrantTokens(refresh_token)
        deadline = asyncio.get_running_loop().time() + budget
        assert tokens.current is not None
        session = self._google.session(tokens.current, tokens, deadline=deadline)
        try:
            async with asyncio.timeout_at(deadline):
                accounts = await session.list_accounts()
        except TimeoutError:
            raise SyncDeadlineExceeded(
                "the deadline ran out while listing the grant's accounts"
            ) from None
        current = tokens.current
        return DiscoveredGrant(
            accounts=[a for a in accounts if isinstance(a, dict)],
            access_token=current.access_token if current else None,
            access_token_expires_at=current.access_token_expires_at if current else None,
        )

    async def _run_pass(
        self,
        context: SyncContext,
        sync_type: SyncType,
        sync_pass: SyncPass,
        session: GoogleSession,
        progress: _Progress,
    ) -> None:
        account_id = context.account.id
        account = context.account.google_account_id
        seen = sync_pass.seen_at
        locations = _unique_locations(
            _parse(LocationRow.from_google, doc, "location")
            for doc in await session.list_locations(account)
        )
        await self._store.locations_write(account_id, locations, seen)
        done = (
            await self._store.locations_read_in_pass(account_id, sync_pass.started_at)
            if sync_pass.resumed
            else set()
        )
        progress.locations_total = len(locations)
        progress.locations_done = len(done)
        todo: list[LocationRow] = []
        for location in locations:
            if location.ineligible_reason is not None:
                progress.skipped.append(
                    SkippedLocation(location.location_id, "ineligible", location.ineligible_reason)
                )
                progress.locations_done += 1
            elif location.location_id not in done:
                todo.append(location)

        cutoff: datetime | None = None
        watermark = context.status.reviews_watermark if context.status else None
        if sync_type is SyncType.INCREMENTAL and watermark is not None:
            cutoff = watermark - self._settings.incremental_overlap
        run = _PassRun(self._store, self._writes, session, account_id, account, seen, progress)
        limit = asyncio.Semaphore(self._settings.location_concurrency)

        async def limited(step: Callable[[], Any]) -> None:
            async with limit:
                await step()

        # A location this account never synced is read whole, even in an incremental sync.
        known: list[LocationRow] = []
        whole: list[LocationRow] = []
        for location in todo:
            synced_before = location.location_id in context.known_location_ids
            (known if cutoff is not None and synced_before else whole).append(location)
        try:
            async with asyncio.TaskGroup() as group:
                for location in whole:
                    read = (
                        run.read_full if sync_type is SyncType.FULL else run.read_whole_incremental
                    )
                    group.create_task(limited(functools.partial(run.location, location, read)))
                for chunk in _chunks(known, BATCH_REVIEWS_MAX_LOCATIONS):
                    assert cutoff is not None
                    group.create_task(limited(functools.partial(run.batch, chunk, cutoff)))
        except BaseExceptionGroup as group_error:
            # One failure cancels the other reads; the first real error is the one to report.
            raise _first_error(group_error) from None


@dataclass(frozen=True, slots=True)
class DiscoveredGrant:
    """What accounts.list showed through one grant, and the access token it was read with."""

    accounts: list[dict[str, Any]]
    access_token: str | None
    access_token_expires_at: datetime | None


class _GrantTokens:
    """The tokens of a grant not stored yet: held in memory while its accounts are listed."""

    def __init__(self, refresh_token: str) -> None:
        digest = hashlib.sha256(refresh_token.encode()).hexdigest()[:16]
        self.current: StoredCredentials | None = StoredCredentials(
            key=f"grant:{digest}",
            refresh_token=refresh_token,
            access_token=None,
            access_token_expires_at=None,
            version="",
        )

    @contextlib.asynccontextmanager
    async def refresh_guard(self) -> AsyncIterator[_GrantTokens]:
        yield self

    async def save(self, token: AccessToken) -> None:
        assert self.current is not None
        self.current = dataclasses.replace(
            self.current,
            access_token=token.value,
            access_token_expires_at=token.expires_at,
            refresh_token=token.refresh_token or self.current.refresh_token,
        )


class _PassRun:
    """The reads and writes of one pass's locations."""

    def __init__(
        self,
        store: SyncStore,
        writes: _Writes,
        session: GoogleSession,
        account_id: uuid.UUID,
        account: str,
        seen: datetime,
        progress: _Progress,
    ) -> None:
        self._store = store
        self._writes = writes
        self._session = session
        self._account_id = account_id
        self._account = account
        self._seen = seen
        self._progress = progress

    async def location(self, location: LocationRow, read: Callable[[LocationRow], Any]) -> None:
        """Reads and writes one location; a refusal scoped to it skips it, with the reason."""
        try:
            result: LocationRead = await read(location)
        except LOCATION_SCOPED as exc:
            await self._refused(location.location_id, exc)
            return
        await self._write(result)

    async def _refused(self, location_id: str, exc: GoogleError) -> None:
        reason = f"Google refused its reviews (HTTP {exc.http_status}): {exc.message}"
        log.warning("account %s: skipping %s: %s", self._account_id, location_id, reason)
        await self._writes.run(
            self._store.location_reviews_refused(self._account_id, location_id, reason, self._seen)
        )
        self._progress.skipped.append(SkippedLocation(location_id, "failed", reason))
        self._progress.locations_done += 1

    async def _write(self, read: LocationRead) -> None:
        counts = await self._writes.run(self._store.location_reviews_write(read, self._seen))
        progress = self._progress
        progress.counts += counts
        progress.locations_done += 1
        progress.written_now += 1

    async def _reviews(
        self, location_id: str, *, stop_below: datetime | None = None
    ) -> tuple[dict[str, ReviewRow], dict[str, Any]]:
        """A location's reviews newest update first, down to `stop_below` (all if None), and
        the first page (Google's rating figures)."""
        rows: dict[str, ReviewRow] = {}
        first: dict[str, Any] | None = None
        pages = self._session.review_pages(self._account, location_id)
        async with contextlib.aclosing(pages):
            async for page in pages:
                first = first if first is not None else page
                reached = False
                for doc in page.get("reviews") or ():
                    review = _parse(lambda d: ReviewRow.from_google(location_id, d), doc, "review")
                    if stop_below is not None and review.update_time < stop_below:
                        reached = True
                        continue
                    # Pages shift while they are read; the newest copy of a review wins.
                    old = rows.get(review.review_id)
                    if old is None or review.update_time >= old.update_time:
                        rows[review.review_id] = review
                if reached:
                    break
        return rows, first or {}

    async def read_full(self, location: LocationRow) -> LocationRead:
        """Every review of the location, and whether the read proves which stored reviews are
        gone.

        With `orderBy=updateTime desc`, a review edited while the list is paged moves to a page
        already read, and one deleted shifts a later review onto it: either can hide a review
        that still exists. So if stored reviews were not seen, the head of the list is read
        again down to the time the read began: it holds every edit since. What is still
        missing is gone if the list did not change meanwhile (same `totalReviewCount`, no new
        review); otherwise its deletion waits for the next full sync.
        """
        location_id = location.location_id
        read_began = datetime.now(UTC) - CLOCK_SKEW
        rows, first = await self._reviews(location_id)
        total = _total_reviews(first)
        missing = await self._store.review_ids(self._account_id, location_id) - rows.keys()
        verified = True
        if missing:
            stored = missing | rows.keys()
            head, head_first = await self._reviews(location_id, stop_below=read_began)
            new_meanwhile = any(rid not in rows and rid not in stored for rid in head)
            for review_id, review in head.items():
                rows[review_id] = review
            missing -= head.keys()
            head_total = _total_reviews(head_first)
            stable = head_total == total and not new_meanwhile
            complete = head_total is None or len(rows) >= head_total
            verified = not missing or (stable and complete)
            if not verified:
                self._progress.deletions_deferred += 1
                log.info(
                    "account %s, %s: the review list changed while it was read; %d unseen "
                    "reviews are kept until the next full sync",
                    self._account_id,
                    location_id,
                    len(missing),
                )
        return LocationRead(
            account_id=self._account_id,
            location_id=location_id,
            reviews=list(rows.values()),
            verified=verified,
            average_rating=_float(first.get("averageRating")),
            total_review_count=total,
        )

    async def read_whole_incremental(self, location: LocationRow) -> LocationRead:
        """A location an incremental sync has never synced: every review, nothing deleted."""
        rows, first = await self._reviews(location.location_id)
        return LocationRead(
            account_id=self._account_id,
            location_id=location.location_id,
            reviews=list(rows.values()),
            average_rating=_float(first.get("averageRating")),
            total_review_count=_total_reviews(first),
        )

    async def batch(self, locations: Sequence[LocationRow], cutoff: datetime) -> None:
        """Reviews updated since `cutoff` of up to 50 known locations in one listing
        (batchGetReviews, newest first across them). If Google refuses the batch for one of
        them, each is read alone, so that only the refused one is skipped."""
        ids = {loc.location_id for loc in locations}
        found: dict[str, dict[str, ReviewRow]] = {loc_id: {} for loc_id in ids}
        pages = self._session.batch_review_pages(self._account, sorted(ids))
        try:
            async with contextlib.aclosing(pages):
                async for page in pages:
                    reached = False
                    for item in page.get("locationReviews") or ():
                        name = item.get("name") if isinstance(item, dict) else None
                        location_id = _location_of(name)
                        if location_id not in found:
                            raise BadRequest(
                                f"batchGetReviews answered for a location not asked: {str(name)[:80]}"
                            )
                        review = _parse(
                            lambda d, loc=location_id: ReviewRow.from_google(loc, d),
                            item.get("review"),
                            "review",
                        )
                        if review.update_time < cutoff:
                            reached = True
                            continue
                        found[location_id].setdefault(review.review_id, review)
                    if reached:
                        break
        except LOCATION_SCOPED:
            if len(locations) == 1:
                raise
            for location in locations:
                await self.location(location, lambda loc: self._one_incremental(loc, cutoff))
            return
        for location_id, rows in found.items():
            await self._write(LocationRead(self._account_id, location_id, list(rows.values())))

    async def _one_incremental(self, location: LocationRow, cutoff: datetime) -> LocationRead:
        rows, _ = await self._reviews(location.location_id, stop_below=cutoff)
        return LocationRead(self._account_id, location.location_id, list(rows.values()))


class _FailureRecorder:
    """Records a failed sync in sync_status and error_logs."""

    def __init__(
        self,
        store: SyncStore,
        writes: _Writes,
        account_id: uuid.UUID,
        sync_type: SyncType,
        job_id: uuid.UUID | None,
        attempt: int,
    ) -> None:
        self._store = store
        self._writes = writes
        self._account_id = account_id
        self._sync_type = sync_type
        self._job_id = job_id
        self._attempt = attempt

    async def __call__(
        self, exc: Exception, api_calls: int, *, deactivate_if_version: str | None = None
    ) -> None:
        details: dict[str, Any] = {
            "sync_type": self._sync_type.value,
            "attempt": self._attempt,
            "api_calls": api_calls,
        }
        if isinstance(exc, GoogleError):
            details.update(exc.details())
        if isinstance(exc, ApiDisabled):
            log.error("sync of account %s held: %s", self._account_id, exc)
        else:
            log.warning("sync of account %s failed: %s", self._account_id, exc)
        _, deactivated = await self._writes.run(
            self._store.sync_failure(
                self._account_id,
                error_type=_error_type(exc),
                message=str(exc),
                details=details,
                job_id=self._job_id,
                now=datetime.now(UTC),
                deactivate_if_version=deactivate_if_version,
            )
        )
        if deactivate_if_version is not None and not deactivated:
            log.info(
                "account %s was reconnected during its sync: it stays active", self._account_id
            )


class _Writes:
    """Writes that outlive the call that started them: a sync's deadline cancels the caller,
    not a write under way, so a location is written whole or not at all and no transaction is
    abandoned half done. The service waits for them before it closes the database."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[Any]] = set()

    async def run(self, write: Awaitable[T]) -> T:
        task = asyncio.ensure_future(write)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(task)

    async def drain(self, timeout: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


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


def _location_of(name: Any) -> str | None:
    """`accounts/a/locations/l` -> `locations/l`."""
    if not isinstance(name, str) or "/locations/" not in name:
        return None
    return "locations/" + name.rsplit("/locations/", 1)[1]


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _total_reviews(first_page: dict[str, Any]) -> int | None:
    """Google's `totalReviewCount` of a listing's first page: left out (as false and empty
    fields are) when the location has no review, unknown if left out of a page with reviews."""
    value = first_page.get("totalReviewCount")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None if first_page.get("reviews") else 0


def _float(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The first non-cancellation error of a task group, unwrapping nested groups."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]
