"""The quota limiters on their own: PostgresQuota on a real PostgreSQL shared by several engines
(each one a replica), LocalQuota as SyncService builds it for SQLite, and the settings.

The window checks count slots by the limiter's own clock (the database's for PostgresQuota), the
same way the server counts requests: no assertion depends on how fast this machine is.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service_runtime.config import ConfigError, Env
from service_runtime.database import create_engine_async
from sync_service.quota import (
    DEFAULT_PROJECT,
    BucketShape,
    GoogleApiName,
    LocalQuota,
    PostgresQuota,
    QuotaWaitTooLong,
    quota_from_settings,
    quota_shapes,
)
from sync_service.settings import GoogleSettings, SyncSettings
from sync_service.tables import google_quota_buckets
from tests.cancellation import cancel_at_each_step, let_psycopg_yield_every_time

REVIEWS = GoogleApiName.REVIEWS
INFO = GoogleApiName.BUSINESS_INFORMATION
ACCOUNTS = GoogleApiName.ACCOUNT_MANAGEMENT
# Float noise of the clock arithmetic (microsecond timestamps, float seconds).
EPSILON = 1e-6


def google(limit: int, window: float, allowance: float, client_id: str = "client-1"):
    return GoogleSettings(
        client_id=client_id,
        quota_per_window=limit,
        quota_window=timedelta(seconds=window),
        quota_latency_allowance=timedelta(seconds=allowance),
    )


def most_in_any_window(times: Sequence[float], length: float, *, closed: bool) -> int:
    """The most of `times` in one window of `length`: [t, t + length] when closed, else the
    server's (t - length, t]."""
    ordered = sorted(times)
    most, start = 0, 0
    for end, t in enumerate(ordered):
        while ordered[start] < t - length or (not closed and ordered[start] <= t - length):
            start += 1
        most = max(most, end - start + 1)
    return most


@dataclass
class Backend:
    """Makes limiters the way SyncService does; on PostgreSQL each one has its own engine."""

    name: str
    url: str
    engines: list[AsyncEngine] = field(default_factory=list)

    def limiter(self, settings: GoogleSettings):
        engine = create_engine_async(self.url)
        self.engines.append(engine)
        return quota_from_settings(settings, engine)

    async def now(self, limiter) -> float:
        """The limiter's clock: the database's on PostgreSQL, time.monotonic() otherwise."""
        if isinstance(limiter, PostgresQuota):
            async with limiter.engine.connect() as conn:
                query = sa.select(sa.func.extract("epoch", sa.func.clock_timestamp()))
                return float((await conn.execute(query)).scalar_one())
        return asyncio.get_running_loop().time()


@pytest.fixture(params=["postgresql", "sqlite"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    fixture = "pg_url" if request.param == "postgresql" else "sqlite_url"
    made = Backend(request.param, request.getfixturevalue(fixture))
    yield made
    for engine in made.engines:
        await engine.dispose()


@pytest.fixture
async def pg_backend(pg_url: str) -> AsyncIterator[Backend]:
    made = Backend("postgresql", pg_url)
    yield made
    for engine in made.engines:
        await engine.dispose()


# --- The bucket's shape ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "window", "allowance"),
    [(300, 60.0, 1.0), (300, 10.0, 1.0), (30, 2.0, 1.0), (10, 1.0, 0.0), (2, 5.0, 1.0)],
)
def test_burst_and_rate_never_let_a_window_plus_the_allowance_hold_more_than_the_quota(
    limit: int, window: float, allowance: float
):
    shape = BucketShape.for_quota(limit, window, allowance)

    assert shape.burst >= 1
    assert shape.burst + shape.rate * (window + allowance) <= limit + EPSILON


def test_a_minute_quota_keeps_over_ninety_percent_of_its_throughput():
    shape = BucketShape.for_quota(300, 60.0, 1.0)

    assert shape.burst == 6
    assert shape.rate * 60.0 / 300 >= 0.9


def test_a_quota_of_one_spaces_slots_a_window_and_the_allowance_apart():
    shape = BucketShape.for_quota(1, 60.0, 1.0)

    assert (shape.burst, 1 / shape.rate) == (1.0, pytest.approx(61.0))


@pytest.mark.parametrize(
    ("limit", "window", "allowance"), [(0, 1.0, 0.0), (5, 0.0, 0.0), (5, 1.0, -1.0)]
)
def test_a_shape_without_room_for_a_request_is_refused(limit, window, allowance):
    with pytest.raises(ValueError, match="limit must be"):
        BucketShape.for_quota(limit, window, allowance)


# --- Settings ------------------------------------------------------------------------------------


def test_every_api_gets_the_default_quota_unless_it_has_its_own():
    settings = SyncSettings.from_env(
        Env(
            {
                "GBP_QUOTA_PER_MINUTE": "120",
                "GBP_QUOTA_PER_MINUTE_REVIEWS": "90",
                "GBP_QUOTA_WINDOW": "2s",
                "GBP_QUOTA_LATENCY_ALLOWANCE": "500ms",
            }
        )
    ).google

    shapes = quota_shapes(settings)

    assert {api: s.limit for api, s in shapes.items()} == {ACCOUNTS: 120, INFO: 120, REVIEWS: 90}
    assert {(s.window, s.latency_allowance) for s in shapes.values()} == {(2.0, 0.5)}


def test_quota_defaults_are_googles_300_a_minute_per_api_with_a_one_second_allowance():
    shapes = quota_shapes(SyncSettings.from_env(Env({})).google)

    assert {(s.limit, s.window, s.latency_allowance) for s in shapes.values()} == {(300, 60.0, 1.0)}
    assert set(shapes) == set(GoogleApiName)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GBP_QUOTA_PER_MINUTE_ACCOUNT_MANAGEMENT", "0"),
        ("GBP_QUOTA_PER_MINUTE_BUSINESS_INFORMATION", "many"),
        ("GBP_QUOTA_PER_MINUTE_REVIEWS", "-3"),
        ("GBP_QUOTA_LATENCY_ALLOWANCE", "2h"),
    ],
)
def test_a_bad_quota_setting_stops_the_service_naming_the_variable(name: str, value: str):
    with pytest.raises(ConfigError, match=name):
        SyncSettings.from_env(Env({name: value}))


async def test_postgresql_shares_the_quota_and_sqlite_keeps_it_in_the_process(
    pg_url: str, sqlite_url: str
):
    pg = create_engine_async(pg_url)
    lite = create_engine_async(sqlite_url)
    try:
        shared = quota_from_settings(google(10, 1.0, 0.0, client_id="the-client"), pg)
        unnamed = quota_from_settings(google(10, 1.0, 0.0, client_id=""), pg)
        assert isinstance(shared, PostgresQuota) and shared.project == "the-client"
        assert isinstance(unnamed, PostgresQuota) and unnamed.project == DEFAULT_PROJECT
        assert isinstance(quota_from_settings(google(10, 1.0, 0.0), lite), LocalQuota)
        assert isinstance(quota_from_settings(google(10, 1.0, 0.0), None), LocalQuota)
        with pytest.raises(ValueError, match="PostgreSQL"):
            PostgresQuota(lite, "p", quota_shapes(google(10, 1.0, 0.0)))
    finally:
        await pg.dispose()
        await lite.dispose()


# --- Both limiters: one process --------------------------------------------------------------


async def test_concurrent_reservations_never_put_more_than_the_quota_in_a_window(
    backend: Backend,
):
    limiter = backend.limiter(google(20, 1.0, 0.5))
    shape = limiter.shapes[REVIEWS]
    began = await backend.now(limiter)

    slots = await asyncio.gather(*(limiter.reserve(REVIEWS) for _ in range(120)))

    issued_for = await backend.now(limiter) - began
    ready = [s.ready_at for s in slots]
    # Any W + λ holds at most L slots, so any W that the server counts holds at most L.
    assert most_in_any_window(ready, 1.5 - EPSILON, closed=True) <= 20
    # No slot is lost either: after the burst, one every 1/r, late by no more than the time
    # the reservations took to arrive (a full bucket that nobody takes from wastes refill).
    span, least = max(ready) - min(ready), (120 - shape.burst) / shape.rate
    assert least - EPSILON <= span <= least + issued_for + EPSILON


async def test_requests_sent_after_acquire_stay_within_the_quota_as_the_server_counts(
    backend: Backend,
):
    limiter = backend.limiter(google(12, 1.0, 1.0))
    sent: list[float] = []

    async def request() -> None:
        await limiter.acquire(REVIEWS)
        sent.append(await backend.now(limiter))  # the "server" stamps it on arrival

    await asyncio.gather(*(request() for _ in range(24)))

    assert most_in_any_window(sent, 1.0, closed=False) <= 12
    stats = limiter.stats()[REVIEWS]
    assert (stats.acquired, stats.refused) == (24, 0)
    assert stats.waits > 0 and stats.waited_seconds > 0


async def test_a_deadline_that_cannot_be_met_is_refused_at_once_and_takes_nothing(
    backend: Backend,
):
    limiter = backend.limiter(google(5, 10.0, 1.0))  # burst 1, one slot per 2.75 s
    shape = limiter.shapes[REVIEWS]
    loop = asyncio.get_running_loop()
    first = await limiter.reserve(REVIEWS)

    with pytest.raises(QuotaWaitTooLong) as refused:
        await limiter.acquire(REVIEWS, deadline=loop.time() + 1.0)

    assert refused.value.api is REVIEWS
    assert 1.0 < refused.value.retry_after <= 1 / shape.rate + EPSILON
    # The refused caller took no slot: the next one is the one right after the first.
    after = await limiter.reserve(REVIEWS)
    assert after.ready_at == pytest.approx(first.ready_at + 1 / shape.rate, abs=1e-3)
    assert after.wait <= refused.value.retry_after
    stats = limiter.stats()[REVIEWS]
    assert (stats.acquired, stats.refused, stats.waits) == (0, 1, 0)


async def test_a_deadline_that_already_passed_is_refused_with_no_wait_quoted_when_there_is_room(
    backend: Backend,
):
    limiter = backend.limiter(google(5, 10.0, 1.0))
    loop = asyncio.get_running_loop()

    with pytest.raises(QuotaWaitTooLong) as refused:
        await limiter.acquire(INFO, deadline=loop.time() - 1.0)

    assert refused.value.retry_after == 0.0
    assert (await limiter.reserve(INFO)).wait == 0.0  # the burst is still whole


async def test_a_deadline_that_can_be_met_waits_for_the_slot(backend: Backend):
    limiter = backend.limiter(google(5, 4.0, 0.0))  # burst 1, one slot a second
    loop = asyncio.get_running_loop()
    await limiter.acquire(REVIEWS, deadline=loop.time() + 5.0)

    waited = await limiter.acquire(REVIEWS, deadline=loop.time() + 5.0)

    assert 0.0 < waited <= 1.0 + EPSILON
    stats = limiter.stats()[REVIEWS]
    assert (stats.acquired, stats.waits, stats.refused) == (2, 1, 0)
    assert stats.waited_seconds == pytest.approx(waited)


async def test_each_api_has_its_own_budget(backend: Backend):
    limiter = backend.limiter(
        dataclasses.replace(google(5, 60.0, 1.0), quota_per_window_reviews=50)
    )
    burst = int(limiter.shapes[REVIEWS].burst)
    for _ in range(burst):
        assert (await limiter.reserve(REVIEWS)).wait == 0.0
    assert (await limiter.reserve(REVIEWS)).wait > 0.0

    assert (await limiter.reserve(INFO)).wait == 0.0
    assert (await limiter.reserve(ACCOUNTS)).wait == 0.0
    assert limiter.shapes[REVIEWS].limit == 50 and limiter.shapes[INFO].limit == 5


# --- PostgreSQL: one budget for every replica -------------------------------------------------


async def test_replicas_on_one_database_share_one_budget(pg_backend: Backend):
    replicas = [pg_backend.limiter(google(20, 1.0, 0.5)) for _ in range(3)]
    shape = replicas[0].shapes[REVIEWS]
    began = await pg_backend.now(replicas[0])

    slots = await asyncio.gather(*(replicas[i % 3].reserve(REVIEWS) for i in range(150)))

    issued_for = await pg_backend.now(replicas[0]) - began
    ready = [s.ready_at for s in slots]
    assert most_in_any_window(ready, 1.5 - EPSILON, closed=True) <= 20
    span, least = max(ready) - min(ready), (150 - shape.burst) / shape.rate
    assert least - EPSILON <= span <= least + issued_for + EPSILON
    # One row per (project, API) holds the whole budget; the other APIs were never touched.
    async with pg_backend.engines[0].connect() as conn:
        rows = (await conn.execute(sa.select(google_quota_buckets))).all()
    assert [(r.project, r.api) for r in rows] == [("client-1", "reviews")]


async def test_replicas_acquiring_together_stay_within_the_quota_as_the_server_counts(
    pg_backend: Backend,
):
    replicas = [pg_backend.limiter(google(12, 1.0, 1.0)) for _ in range(3)]
    sent: list[float] = []

    async def request(limiter: PostgresQuota) -> None:
        await limiter.acquire(REVIEWS)
        sent.append(await pg_backend.now(limiter))

    await asyncio.gather(*(request(replicas[i % 3]) for i in range(30)))

    assert most_in_any_window(sent, 1.0, closed=False) <= 12
    assert sum(r.stats()[REVIEWS].acquired for r in replicas) == 30


async def test_a_new_replica_does_not_bring_a_fresh_burst(pg_backend: Backend):
    first = pg_backend.limiter(google(5, 10.0, 1.0))
    taken = await first.reserve(REVIEWS)
    assert taken.wait == 0.0

    started_later = await pg_backend.limiter(google(5, 10.0, 1.0)).reserve(REVIEWS)

    shape = first.shapes[REVIEWS]
    assert started_later.ready_at == pytest.approx(taken.ready_at + 1 / shape.rate, abs=1e-3)


async def test_projects_have_their_own_budgets(pg_backend: Backend):
    ours = pg_backend.limiter(google(5, 10.0, 1.0, client_id="ours"))
    theirs = pg_backend.limiter(google(5, 10.0, 1.0, client_id="theirs"))
    await ours.reserve(REVIEWS)
    assert (await ours.reserve(REVIEWS)).wait > 0.0

    assert (await theirs.reserve(REVIEWS)).wait == 0.0


async def test_a_refusal_between_replicas_quotes_the_wait_of_the_shared_bucket(
    pg_backend: Backend,
):
    first, second = (pg_backend.limiter(google(5, 10.0, 1.0)) for _ in range(2))
    shape = first.shapes[REVIEWS]
    await first.reserve(REVIEWS)
    await first.reserve(REVIEWS)  # due 2.75 s from now

    with pytest.raises(QuotaWaitTooLong) as refused:
        await second.reserve(REVIEWS, max_wait=2.0)

    # The next free slot is two slots after the burst: at most 2/r away.
    assert 2.0 < refused.value.retry_after <= 2 / shape.rate + EPSILON


async def test_a_database_that_is_down_fails_the_acquire_instead_of_waving_requests_through():
    engine = create_engine_async("postgresql+psycopg://postgres@127.0.0.1:1/none")
    try:
        limiter = quota_from_settings(google(5, 1.0, 0.0), engine)

        with pytest.raises(sa.exc.OperationalError):
            await limiter.acquire(REVIEWS)

        assert limiter.stats()[REVIEWS].acquired == 0
    finally:
        await engine.dispose()


async def test_a_take_cancelled_at_any_await_gives_its_connection_back_fit_for_writers(
    pg_backend: Backend, monkeypatch: pytest.MonkeyPatch
):
    # A sync's deadline cancels a take at whatever await it has reached; the take runs in
    # autocommit, which the pool's writers must never inherit.
    let_psycopg_yield_every_time(monkeypatch)
    limiter = pg_backend.limiter(google(100_000, 60.0, 1.0))
    assert isinstance(limiter, PostgresQuota)
    await limiter.reserve(REVIEWS)

    await cancel_at_each_step(limiter.engine, lambda: limiter.reserve(REVIEWS))
