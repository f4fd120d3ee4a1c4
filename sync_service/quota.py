"""One Google request budget per (Cloud project, API), shared by every SyncService replica.

Google counts requests per Cloud project and per API in a window (a minute). Every replica of
a deployment calls Google as the same project, so every replica must draw on the same budget.
A `QuotaLimiter` hands out one slot per request:

- `PostgresQuota`: a token bucket per (project, API), a row of `google_quota_buckets`, taken
  with one atomic statement on the database's clock, so replicas on one database share it.
  This module owns that table's SQL.
- `LocalQuota`: the same bucket in this process's memory, for SQLite (one process by design).

Both *reserve*: a caller that finds the bucket empty takes a slot in the future and sleeps
until it is due. So callers are served in arrival order across replicas, a request costs one
statement however long it waits, and the wait is known before waiting: a caller whose deadline
comes first gets `QuotaWaitTooLong` at once and takes nothing. A reservation abandoned by a
cancelled caller is not handed back (handing it back could let two later slots coincide): a
little throughput is lost, never safety.

The bucket's shape (`BucketShape.for_quota`): a burst B of about 2% of the quota L (at least 1)
and a rate r = (L - B) / (W + λ) for a window W and a latency allowance λ. Slots taken at times
t_i satisfy: any interval of length T holds at most B + r·T of them. Google stamps a request
somewhere between its slot and λ later, so any window W that Google counts holds requests whose
slots lie in an interval of W + λ: at most B + r·(W + λ) = L. The cost is the throughput:
r·W / L is 96% of the quota for a minute's window and λ = 1 s. docs/quota.md explains it all.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service_runtime.database import connect_with
from sync_service import metrics
from sync_service.settings import GoogleSettings

# The burst as a share of the quota: small, because every token of burst is a request that the
# steady rate must give up (see the module docstring).
BURST_FRACTION = 0.02
# The project key when no OAuth client id is configured (the emulator's default client).
DEFAULT_PROJECT = "default"


class GoogleApiName(enum.StrEnum):
    """The Google APIs with a quota of their own, as stored in `google_quota_buckets.api`."""

    ACCOUNT_MANAGEMENT = "account_management"
    BUSINESS_INFORMATION = "business_information"
    REVIEWS = "reviews"  # the v4 API (mybusiness.googleapis.com)


class QuotaWaitTooLong(Exception):
    """The wait for a slot would end after the caller's deadline; no slot was taken.

    `retry_after` is the wait a slot needs now, in seconds (0 when the deadline had already
    passed and the quota has room).
    """

    def __init__(self, api: GoogleApiName, retry_after: float) -> None:
        super().__init__(
            f"the {api.value} quota has no slot within the deadline; one frees in "
            f"{retry_after:.2f}s"
        )
        self.api = api
        self.retry_after = retry_after


class QuotaLimiter(Protocol):
    """Request slots of Google's per-project, per-API quotas."""

    async def acquire(self, api: GoogleApiName, *, deadline: float | None = None) -> float:
        """Waits for one request slot of `api`; returns the seconds waited.

        `deadline` is an `asyncio` loop time by which the slot must be had; when the wait would
        end later, raises `QuotaWaitTooLong` at once, without waiting and without a slot.
        """
        ...

    def stats(self) -> dict[GoogleApiName, QuotaStats]:
        """What the limiter did so far, per API: for logs and metrics."""
        ...

    async def aclose(self) -> None:
        """Releases what the limiter holds; it is not used afterwards."""
        ...


@dataclass
class QuotaStats:
    """One API's counters since the limiter was made."""

    acquired: int = 0  # slots taken
    waits: int = 0  # of those, the ones that had to wait
    waited_seconds: float = 0.0  # the sum of those waits
    refused: int = 0  # QuotaWaitTooLong raised


@dataclass(frozen=True, slots=True)
class BucketShape:
    """A token bucket that keeps `limit` requests per `window` as Google counts them."""

    limit: int
    window: float
    latency_allowance: float
    burst: float
    rate: float  # tokens per second

    @classmethod
    def for_quota(cls, limit: int, window: float, latency_allowance: float) -> BucketShape:
        """Burst B = max(1, ⌊2% of L⌋), rate r = (L - B) / (W + λ).

        A quota of 1 has no room for both a burst and a rate; r = 1 / (W + λ) then spaces
        Google's stamps at least W apart, which a window of W (open at its start, as Google's
        and the emulator's are) counts once.
        """
        if limit < 1 or window <= 0 or latency_allowance < 0:
            raise ValueError("limit must be >= 1, window > 0 and latency_allowance >= 0")
        burst = max(1, math.floor(limit * BURST_FRACTION))
        rate = max(1, limit - burst) / (window + latency_allowance)
        return cls(limit, window, latency_allowance, float(burst), rate)

    def wait_after(self, tokens_after_take: float) -> float:
        """The seconds until a slot that left `tokens_after_take` in the bucket is due."""
        return max(0.0, -tokens_after_take) / self.rate


def quota_shapes(settings: GoogleSettings) -> dict[GoogleApiName, BucketShape]:
    """Each API's bucket from the settings (GBP_QUOTA_PER_MINUTE[_<API>], GBP_QUOTA_WINDOW)."""
    window = settings.quota_window.total_seconds()
    allowance = settings.quota_latency_allowance.total_seconds()
    return {
        api: BucketShape.for_quota(settings.quota_limit(api.value), window, allowance)
        for api in GoogleApiName
    }


def quota_project(settings: GoogleSettings) -> str:
    """The key of the Cloud project: its OAuth client id (a project's client ids share its quota
    only if they are the same client; one deployment uses one)."""
    return settings.client_id or DEFAULT_PROJECT


@dataclass(frozen=True, slots=True)
class Reservation:
    """One slot: due `wait` seconds after it was taken, at `ready_at` on the limiter's clock
    (time.monotonic() for LocalQuota, the database's epoch seconds for PostgresQuota)."""

    wait: float
    ready_at: float


class _Limiter:
    """What both limiters share: waiting for a reservation, deadlines, counters."""

    def __init__(self, shapes: dict[GoogleApiName, BucketShape]) -> None:
        missing = set(GoogleApiName) - set(shapes)
        if missing:
            raise ValueError(f"no bucket shape for {sorted(missing)}")
        self.shapes = dict(shapes)
        self._stats = {api: QuotaStats() for api in GoogleApiName}

    async def reserve(self, api: GoogleApiName, *, max_wait: float | None = None) -> Reservation:
        """Takes one slot due within `max_wait` seconds (any time when None) without waiting
        for it, or raises QuotaWaitTooLong and takes nothing."""
        raise NotImplementedError

    async def acquire(self, api: GoogleApiName, *, deadline: float | None = None) -> float:
        max_wait = None if deadline is None else deadline - asyncio.get_running_loop().time()
        stats = self._stats[api]
        try:
            reservation = await self.reserve(api, max_wait=max_wait)
        except QuotaWaitTooLong:
            stats.refused += 1
            metrics.QUOTA_REFUSED.labels(api.value).inc()
            raise
        stats.acquired += 1
        metrics.QUOTA_WAIT.labels(api.value).observe(reservation.wait)
        if reservation.wait > 0:
            stats.waits += 1
            stats.waited_seconds += reservation.wait
            # Counted from now, after the reservation was answered: the request goes out no
            # earlier than its slot, whatever the time the answer took to arrive.
            await asyncio.sleep(reservation.wait)
        return reservation.wait

    def stats(self) -> dict[GoogleApiName, QuotaStats]:
        return {api: QuotaStats(**vars(s)) for api, s in self._stats.items()}

    async def aclose(self) -> None:
        return None


@dataclass
class _Bucket:
    tokens: float
    at: float  # time.monotonic() of `tokens`


class LocalQuota(_Limiter):
    """The buckets in this process: right for one process (SQLite), not shared by replicas.

    A new process starts with full buckets, unaware of what an earlier one sent in the current
    window: at most one burst more in the window of a restart.
    """

    def __init__(self, shapes: dict[GoogleApiName, BucketShape]) -> None:
        super().__init__(shapes)
        now = time.monotonic()
        self._buckets = {api: _Bucket(shape.burst, now) for api, shape in self.shapes.items()}

    async def reserve(self, api: GoogleApiName, *, max_wait: float | None = None) -> Reservation:
        # No await between reading and writing the bucket: atomic on the event loop.
        shape, bucket = self.shapes[api], self._buckets[api]
        now = max(time.monotonic(), bucket.at)
        available = min(shape.burst, bucket.tokens + shape.rate * (now - bucket.at))
        wait = shape.wait_after(available - 1)
        if max_wait is not None and wait > max_wait:
            raise QuotaWaitTooLong(api, wait)
        bucket.tokens, bucket.at = available - 1, now
        return Reservation(wait=wait, ready_at=now + wait)


# The take: refill the bucket to the database's clock, take one token (the bucket may go
# negative: a reservation), in one statement. The row lock of ON CONFLICT DO UPDATE serialises
# takers of one bucket across every replica. The clock is read once, into EXCLUDED, before the
# row lock is waited for; GREATEST keeps the bucket's time from running back when a taker that
# read the clock earlier gets the lock later (it is then counted at the later time: its slot is
# never earlier than its request). A WHERE that fails (the slot would be due after the caller's
# deadline) changes nothing and returns no row. A missing bucket starts full, less this take.
_TAKE = sa.text(
    """
    INSERT INTO google_quota_buckets AS b (project, api, tokens, refilled_at)
    VALUES (:project, :api, :burst - 1, clock_timestamp())
    ON CONFLICT (project, api) DO UPDATE SET
        tokens = LEAST(:burst, b.tokens + :rate * GREATEST(0, EXTRACT(EPOCH FROM
                 EXCLUDED.refilled_at - b.refilled_at))) - 1,
        refilled_at = GREATEST(b.refilled_at, EXCLUDED.refilled_at)
    WHERE CAST(:max_wait AS double precision) IS NULL
       OR LEAST(:burst, b.tokens + :rate * GREATEST(0, EXTRACT(EPOCH FROM
          EXCLUDED.refilled_at - b.refilled_at))) - 1 >= -:rate * :max_wait
    RETURNING tokens, CAST(EXTRACT(EPOCH FROM refilled_at) AS double precision) AS at
    """
).bindparams(
    sa.bindparam("project", type_=sa.Text),
    sa.bindparam("api", type_=sa.Text),
    sa.bindparam("burst", type_=sa.Float),
    sa.bindparam("rate", type_=sa.Float),
    sa.bindparam("max_wait", type_=sa.Float),
)

# The tokens a bucket holds now, for the wait quoted when a take is refused.
_PEEK = sa.text(
    """
    SELECT LEAST(:burst, tokens + :rate * GREATEST(0, EXTRACT(EPOCH FROM
           clock_timestamp() - refilled_at))) AS available
    FROM google_quota_buckets WHERE project = :project AND api = :api
    """
).bindparams(
    sa.bindparam("project", type_=sa.Text),
    sa.bindparam("api", type_=sa.Text),
    sa.bindparam("burst", type_=sa.Float),
    sa.bindparam("rate", type_=sa.Float),
)


class PostgresQuota(_Limiter):
    """The buckets in PostgreSQL (`google_quota_buckets`), shared by every replica using it.

    Every replica must run with the same quota settings: each take refills at the caller's
    rate. A step of the database's clock forward credits at most one burst.
    """

    def __init__(
        self, engine: AsyncEngine, project: str, shapes: dict[GoogleApiName, BucketShape]
    ) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError("PostgresQuota needs a PostgreSQL engine")
        super().__init__(shapes)
        self.engine = engine
        self.project = project

    def _params(self, api: GoogleApiName) -> dict[str, object]:
        shape = self.shapes[api]
        return {"project": self.project, "api": api.value, "burst": shape.burst, "rate": shape.rate}

    async def reserve(self, api: GoogleApiName, *, max_wait: float | None = None) -> Reservation:
        shape = self.shapes[api]
        params = self._params(api)
        # One statement is atomic by itself: autocommit spares BEGIN and COMMIT.
        async with connect_with(self.engine, isolation_level="AUTOCOMMIT") as conn:
            if max_wait is None or max_wait >= 0:
                row = (await conn.execute(_TAKE, {**params, "max_wait": max_wait})).first()
                if row is not None:
                    wait = shape.wait_after(row.tokens)
                    return Reservation(wait=wait, ready_at=row.at + wait)
            available = (await conn.execute(_PEEK, params)).scalar()
        retry_after = shape.wait_after((shape.burst if available is None else available) - 1)
        raise QuotaWaitTooLong(api, retry_after)


def quota_from_settings(settings: GoogleSettings, engine: AsyncEngine | None) -> QuotaLimiter:
    """PostgresQuota on a PostgreSQL engine (shared by replicas), else LocalQuota."""
    shapes = quota_shapes(settings)
    if engine is not None and engine.dialect.name == "postgresql":
        return PostgresQuota(engine, quota_project(settings), shapes)
    return LocalQuota(shapes)
