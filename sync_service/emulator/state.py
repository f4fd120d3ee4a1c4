"""The emulator's world: accounts, locations, reviews, OAuth grants, quotas, faults and hooks.

Everything is seeded from one number, so the same seed and size give the same ids, texts,
ratings and times on every run (times count back from a fixed anchor, not from the clock).
What tests add or edit later gets the wall-clock time, always later than what it replaces.
`messy=True` adds, to each seeded account, one location of each kind Google serves no reviews
for (or serves them despite a closed shop); the rest of the world stays as without it.

A refresh grant sees a set of accounts; each API has its own quota window per project; hooks
(`after_page`) change the data between two pages of a listing. The server (`server.py`)
translates HTTP to calls on this object; tests may call it directly.
"""

from __future__ import annotations

import collections
import logging
import random
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sync_service.emulator.data import (
    ANCHOR,
    STARS,
    Account,
    AccountType,
    Location,
    LocationKind,
    Review,
)
from sync_service.emulator.faults import Api, Endpoint, Fault, FaultKind

__all__ = [
    "ANCHOR",
    "STARS",
    "AccessGrant",
    "Account",
    "AccountType",
    "Api",
    "EmulatorState",
    "Endpoint",
    "Fault",
    "FaultKind",
    "Location",
    "LocationKind",
    "NotFoundError",
    "PageHook",
    "RefreshGrant",
    "Review",
    "Stats",
]

log = logging.getLogger(__name__)

_WORDS = [
    "great",
    "coffee",
    "friendly",
    "staff",
    "slow",
    "service",
    "clean",
    "tables",
    "loud",
    "music",
    "cosy",
    "corner",
    "fresh",
    "pastries",
    "long",
    "queue",
    "helpful",
    "owner",
    "cold",
    "drinks",
    "tasty",
    "lunch",
    "parking",
    "easy",
    "will",
    "return",
]
_FIRST = ("Ana", "Ben", "Chen", "Dana", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kai")
_LAST = ("K", "Smith", "Okafor", "Silva", "Novak", "Ito", "Haddad", "Berg", "Moreau")
_CITIES = (("San Francisco", "CA", "94103"), ("Austin", "TX", "78701"), ("Denver", "CO", "80202"))


@dataclass
class RefreshGrant:
    """What a user granted the app: the accounts its tokens see."""

    account_ids: list[str]
    revoked: bool = False

    @property
    def account_id(self) -> str:
        """The first account (a user's own grant sees only that one)."""
        return self.account_ids[0] if self.account_ids else ""


@dataclass
class AccessGrant:
    account_ids: list[str]
    project: str  # the OAuth client id: a Google Cloud project has one
    refresh_token: str
    expires_at: float  # time.monotonic()

    @property
    def account_id(self) -> str:
        return self.account_ids[0] if self.account_ids else ""

    def sees(self, account_id: str) -> bool:
        return account_id in self.account_ids


@dataclass
class PageHook:
    """Runs `action` once, after the `page`-th page of a reviews listing whose path contains
    `match` was built (and before it is sent)."""

    match: str
    page: int
    action: Callable[[], None]
    id: int = 0
    # Pages of the current listing seen: a request without pageToken starts a listing.
    seen: int = 0


@dataclass
class Stats:
    """What the emulator saw: tests and benchmarks assert on these."""

    # Per endpoint (Endpoint values): every request, whatever its answer.
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    token_refreshes: int = 0
    quota_rejections: int = 0  # all APIs
    quota_rejections_by_api: collections.Counter[str] = field(default_factory=collections.Counter)
    # Requests that passed their API's quota, per API (Api values).
    accepted_by_api: collections.Counter[str] = field(default_factory=collections.Counter)
    faults_injected: int = 0
    # Per "<project>/<api>": the most requests accepted within any one quota window.
    peak_window_requests: dict[str, int] = field(default_factory=dict)
    # (endpoint, path, status) of every request, in order.
    calls: list[tuple[str, str, int]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "tokenRefreshes": self.token_refreshes,
            "quotaRejections": self.quota_rejections,
            "quotaRejectionsByApi": dict(self.quota_rejections_by_api),
            "acceptedByApi": dict(self.accepted_by_api),
            "faultsInjected": self.faults_injected,
            "peakWindowRequests": dict(self.peak_window_requests),
        }


class NotFoundError(KeyError):
    """A control call named something that does not exist."""


class EmulatorState:
    """The data and the rules of one emulator instance."""

    def __init__(
        self,
        *,
        seed: int = 1,
        accounts: int = 1,
        locations_per_account: int = 3,
        reviews_per_location: int = 20,
        quota_per_minute: int = 300,
        quota_window: float = 60.0,
        token_lifetime: float = 3600.0,
        api_quotas: dict[str, int] | None = None,
        messy: bool = False,
    ) -> None:
        self.seed = seed
        self.size = (accounts, locations_per_account, reviews_per_location)
        self.quota_per_minute = quota_per_minute
        self.api_quotas: dict[Api, int] = {}
        for api, limit in (api_quotas or {}).items():
            if not isinstance(limit, int) or limit < 0:
                raise ValueError(f"quota of {api} must be a whole number >= 0")
            self.api_quotas[Api(api)] = limit  # raises ValueError for an unknown API
        self.quota_window = quota_window
        self.token_lifetime = token_lifetime
        self.messy = messy
        self.required_client: tuple[str, str] | None = None
        self.reset()

    # --- Seeding -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the seeded world: data, grants, faults, hooks and statistics."""
        self._rng = random.Random(self.seed)
        self._fault_rng = random.Random(self.seed + 1)
        self.accounts: dict[str, Account] = {}
        self.refresh_grants: dict[str, RefreshGrant] = {}
        self.access_grants: dict[str, AccessGrant] = {}
        self.faults: list[Fault] = []
        self.hooks: list[PageHook] = []
        self._next_fault_id = 1
        self._next_hook_id = 1
        self._next_grant = 1
        self.stats = Stats()
        self._windows: dict[tuple[str, Api], collections.deque[float]] = {}
        count, locations, reviews = self.size
        for _ in range(count):
            self.add_account(locations=locations, reviews_per_location=reviews)
        if self.messy:
            self._seed_messy_locations()

    def _seed_messy_locations(self) -> None:
        # A generator of their own, so the verified locations keep the ids and reviews they
        # have without `messy`, and what is added later too.
        main, self._rng = self._rng, random.Random(f"messy-{self.seed}")
        try:
            for account in list(self.accounts.values()):
                for kind in (
                    LocationKind.UNVERIFIED,
                    LocationKind.SUSPENDED,
                    LocationKind.DUPLICATE,
                    LocationKind.CLOSED,
                ):
                    reviews = 3 if kind is LocationKind.CLOSED else 0
                    location = self._add_seeded_location(account, reviews)
                    self._set_kind(account, location, kind)
        finally:
            self._rng = main

    def _digits(self, length: int) -> str:
        return str(self._rng.randrange(10 ** (length - 1), 10**length))

    def _review_id(self) -> str:
        alphabet = string.ascii_letters + string.digits + "-_"
        return "AbFvOq" + "".join(self._rng.choice(alphabet) for _ in range(30))

    def _new_review(self, when: datetime | None = None) -> Review:
        rng = self._rng
        anonymous = rng.random() < 0.1
        name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        create = when or ANCHOR - timedelta(seconds=rng.randrange(1, 365 * 86400))
        # Some seeded reviews were edited by their author after writing them.
        edited = when is None and rng.random() < 0.2
        update = create + timedelta(seconds=rng.randrange(60, 86400)) if edited else create
        update = min(update, ANCHOR) if when is None else update
        review = Review(
            review_id=self._review_id(),
            reviewer_name=None if anonymous else name,
            reviewer_photo_url=None if anonymous else f"https://lh3.example/{self._digits(8)}",
            anonymous=anonymous,
            star_rating=rng.choice(STARS),
            comment=" ".join(rng.choice(_WORDS) for _ in range(rng.randrange(0, 12))) or None,
            create_time=create,
            update_time=update,
        )
        if when is not None:
            # The clock has microseconds; the review writes its times with fewer digits.
            review.create_time = review.update_time = review.stamp(when)
        if when is None and rng.random() < 0.3:
            review.reply_comment = "Thank you for your feedback!"
            review.reply_update_time = min(update + timedelta(hours=2), ANCHOR)
        return review

    def _new_location(self, title: str | None = None) -> Location:
        location_id = self._digits(16)
        return Location(
            location_id=location_id,
            title=title or f"Acme Coffee #{self._digits(3)}",
            store_code=f"S{self._digits(4)}",
            phone=f"+1 415 555 {self._digits(4)}",
            website_uri=f"https://acme.example/{location_id[-4:]}",
            place_id="ChIJ" + self._digits(12),
            city=self._rng.choice(_CITIES),
        )

    # --- Control: accounts, locations, reviews ------------------------------------------------

    def add_account(
        self,
        *,
        name: str | None = None,
        locations: int = 0,
        reviews_per_location: int = 0,
        type: str = "PERSONAL",
    ) -> tuple[str, str]:
        """A new account `accounts/{n}` (n counts from 1) and the refresh token that sees it."""
        account_type = AccountType(type)  # raises ValueError for an unknown type
        account_id = str(len(self.accounts) + 1)
        account = Account(
            account_id=account_id,
            account_name=name or f"Business {account_id}",
            type=account_type,
        )
        self.accounts[account_id] = account
        refresh_token = f"emulator-refresh-token-{account_id}"
        self.refresh_grants[refresh_token] = RefreshGrant(account_ids=[account_id])
        for _ in range(locations):
            self._add_seeded_location(account, reviews_per_location)
        return f"accounts/{account_id}", refresh_token

    def _add_seeded_location(self, account: Account, reviews: int) -> Location:
        location = self._new_location()
        while location.location_id in account.locations:
            location = self._new_location()
        for _ in range(reviews):
            review = self._new_review()
            location.reviews[review.review_id] = review
        account.locations[location.location_id] = location
        return location

    def account(self, account_id: str) -> Account:
        try:
            return self.accounts[_bare(account_id, "accounts/")]
        except KeyError:
            raise NotFoundError(f"no account {account_id}") from None

    def location(self, account_id: str, location_id: str) -> Location:
        try:
            return self.account(account_id).locations[_bare(location_id, "locations/")]
        except KeyError:
            raise NotFoundError(f"no location {location_id} in {account_id}") from None

    def review(self, account_id: str, location_id: str, review_id: str) -> Review:
        try:
            return self.location(account_id, location_id).reviews[review_id]
        except KeyError:
            raise NotFoundError(f"no review {review_id} in {location_id}") from None

    def add_location(
        self,
        account_id: str,
        *,
        title: str | None = None,
        reviews: int = 0,
        kind: str = "verified",
    ) -> dict[str, Any]:
        location_kind = LocationKind(kind)  # raises ValueError before anything is added
        account = self.account(account_id)
        location = self._add_seeded_location(account, 0)
        if title:
            location.title = title
        self._set_kind(account, location, location_kind)
        for _ in range(reviews):
            self.add_review(account_id, location.location_id)
        return location.to_json()

    def _set_kind(self, account: Account, location: Location, kind: LocationKind) -> None:
        location.kind = kind
        if kind is not LocationKind.DUPLICATE:
            location.duplicate_of = None
        elif location.duplicate_of is None:
            # The original: a verified location of the account, or one Google knows elsewhere.
            original = next(
                (
                    other.location_id
                    for other in account.locations.values()
                    if other.kind is LocationKind.VERIFIED
                    and other.location_id != location.location_id
                ),
                None,
            )
            location.duplicate_of = original or self._digits(16)

    def edit_location(self, account_id: str, location_id: str, **changes: Any) -> dict[str, Any]:
        location = self.location(account_id, location_id)
        kind = LocationKind(changes.pop("kind")) if "kind" in changes else None
        unknown = set(changes) - {"title", "websiteUri", "storeCode"}
        if unknown:
            raise ValueError(f"cannot edit location field {sorted(unknown)[0]!r}")
        for key, value in changes.items():
            if key == "title":
                location.title = str(value)
            elif key == "websiteUri":
                location.website_uri = str(value)
            else:
                location.store_code = str(value)
        if kind is not None:
            self._set_kind(self.account(account_id), location, kind)
        return location.to_json()

    def delete_location(self, account_id: str, location_id: str) -> None:
        account = self.account(account_id)
        self.location(account_id, location_id)
        del account.locations[_bare(location_id, "locations/")]

    def add_review(
        self,
        account_id: str,
        location_id: str,
        *,
        star_rating: str | None = None,
        comment: str | None = None,
        reviewer_name: str | None = None,
        anonymous: bool = False,
    ) -> dict[str, Any]:
        location = self.location(account_id, location_id)
        review = self._new_review(when=_now())
        if star_rating is not None:
            review.star_rating = _star(star_rating)
        if comment is not None:
            review.comment = comment or None
        if anonymous:
            review.anonymous, review.reviewer_name, review.reviewer_photo_url = True, None, None
        elif reviewer_name is not None:
            review.reviewer_name = reviewer_name
        location.reviews[review.review_id] = review
        return review.to_json(_bare(account_id, "accounts/"), location.location_id)

    def edit_review(
        self,
        account_id: str,
        location_id: str,
        review_id: str,
        *,
        comment: str | None = None,
        star_rating: str | None = None,
        reply_comment: str | None = None,
    ) -> dict[str, Any]:
        """The author's edit (comment, rating) moves updateTime; the owner's reply moves only
        the reply's updateTime, as far as Google documents it."""
        review = self.review(account_id, location_id, review_id)
        rating = _star(star_rating) if star_rating is not None else None
        if comment is not None or rating is not None:
            if comment is not None:
                review.comment = comment or None
            if rating is not None:
                review.star_rating = rating
            review.update_time = review.stamp(_now(), after=review.update_time)
        if reply_comment is not None:
            review.reply_comment = reply_comment
            review.reply_update_time = review.stamp(_now(), after=review.reply_update_time)
        location = self.location(account_id, location_id)
        return review.to_json(_bare(account_id, "accounts/"), location.location_id)

    def delete_review(self, account_id: str, location_id: str, review_id: str) -> None:
        self.review(account_id, location_id, review_id)
        del self.location(account_id, location_id).reviews[review_id]

    # --- Control: OAuth --------------------------------------------------------------------------

    def add_grant(self, account_ids: list[str]) -> str:
        """A new refresh token (`emulator-grant-<k>`) whose access tokens see these accounts
        (`accounts/1` or `1`), as when a user who manages several accounts connects."""
        if isinstance(account_ids, str) or not isinstance(account_ids, list):
            raise ValueError("accounts must be a list of account names")
        ids: list[str] = []
        for name in account_ids:
            account = self.account(str(name))  # NotFoundError for an unknown one
            if account.account_id not in ids:
                ids.append(account.account_id)
        refresh_token = f"emulator-grant-{self._next_grant}"
        self._next_grant += 1
        self.refresh_grants[refresh_token] = RefreshGrant(account_ids=ids)
        return refresh_token

    def revoke_refresh_token(self, refresh_token: str) -> None:
        """The user revoked the app's access: the refresh token and its access tokens die."""
        grant = self.refresh_grants.get(refresh_token)
        if grant is None:
            raise NotFoundError("no such refresh token")
        grant.revoked = True
        for token in [t for t, g in self.access_grants.items() if g.refresh_token == refresh_token]:
            del self.access_grants[token]

    def expire_access_tokens(self) -> None:
        for grant in self.access_grants.values():
            grant.expires_at = 0.0

    def require_client(self, client_id: str, client_secret: str) -> None:
        """From now on only this OAuth client may refresh tokens."""
        self.required_client = (client_id, client_secret)

    # --- Control: faults -------------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> Fault:
        fault.id = self._next_fault_id
        self._next_fault_id += 1
        self.faults.append(fault)
        return fault

    def inject(self, kind: FaultKind | str, **options: Any) -> Fault:
        """Shorthand for tests: `state.inject("unavailable", count=2, endpoint="reviews")`."""
        return self.add_fault(Fault(kind=FaultKind(kind), **options))

    def clear_faults(self) -> None:
        self.faults.clear()

    def faults_for(
        self, endpoint: Endpoint, path: str, *, page_token: bool = False
    ) -> tuple[float, Fault | None]:
        """The added latency and the error fault (if any) that this request meets;
        `page_token`: the request carries one (only those meet `page_token_expired`)."""
        latency = 0.0
        error: Fault | None = None
        for fault in list(self.faults):
            if not fault.matches(endpoint, path, page_token=page_token):
                continue
            if fault.kind is not FaultKind.LATENCY and error is not None:
                continue  # one error per request; later faults keep their counts
            if fault.rate is not None and self._fault_rng.random() >= fault.rate:
                continue
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self.faults.remove(fault)
            fault.injected += 1
            if fault.kind is FaultKind.LATENCY:
                latency += fault.latency
            else:
                error = fault
                self.stats.faults_injected += 1
        return latency, error

    # --- Control: hooks between pages ----------------------------------------------------------

    def after_page(self, match: str, page: int, action: Callable[[], None]) -> None:
        """Runs `action` once, right after the answer to the `page`-th (1-based) page of a
        reviews.list listing whose path contains `match` was built. A request without
        pageToken is page 1 of a new listing; the hook counts from its registration."""
        self._add_hook(match, page, action)

    def _add_hook(self, match: str, page: int, action: Callable[[], None]) -> PageHook:
        if not isinstance(page, int) or isinstance(page, bool) or page < 1:
            raise ValueError("afterPage must be a whole number >= 1")
        if not isinstance(match, str) or not match:
            raise ValueError("match must be a non-empty string")
        hook = PageHook(match=match, page=page, action=action, id=self._next_hook_id)
        self._next_hook_id += 1
        self.hooks.append(hook)
        return hook

    def add_hook_from_json(self, body: dict[str, Any]) -> PageHook:
        """The control API's shape: {match, afterPage, action: edit_review | delete_review |
        add_review, accountId, locationId, reviewId?, comment?, starRating?, replyComment?}."""
        action_name = body.get("action")
        account_id = str(body["accountId"])
        location_id = str(body["locationId"])
        self.location(account_id, location_id)  # NotFoundError now rather than later
        comment, rating = body.get("comment"), body.get("starRating")
        action: Callable[[], Any]
        if action_name == "add_review":

            def action() -> None:
                self.add_review(account_id, location_id, comment=comment, star_rating=rating)

        elif action_name in ("edit_review", "delete_review"):
            review_id = str(body["reviewId"])
            self.review(account_id, location_id, review_id)
            if action_name == "delete_review":

                def action() -> None:
                    self.delete_review(account_id, location_id, review_id)

            else:
                reply = body.get("replyComment")
                if comment is None and rating is None and reply is None:
                    comment = "Edited between two pages"

                def action() -> None:
                    self.edit_review(
                        account_id,
                        location_id,
                        review_id,
                        comment=comment,
                        star_rating=rating,
                        reply_comment=reply,
                    )

        else:
            raise ValueError("action must be edit_review, delete_review or add_review")
        return self._add_hook(str(body.get("match", "")), body.get("afterPage", 1), action)

    def clear_hooks(self) -> None:
        self.hooks.clear()

    def reviews_page_built(self, path: str, *, page_token: bool) -> None:
        """The server built a page of a reviews.list listing: run the hooks it completes."""
        for hook in list(self.hooks):
            if hook.match not in path:
                continue
            hook.seen = hook.seen + 1 if page_token else 1
            if hook.seen != hook.page:
                continue
            self.hooks.remove(hook)
            try:
                hook.action()
            except (NotFoundError, ValueError) as exc:
                # The data it meant to change is gone: nothing left to do.
                log.warning(
                    "emulator hook %d after page %d did nothing: %s", hook.id, hook.page, exc
                )

    # --- The rules the HTTP server applies -----------------------------------------------------

    def issue_access_token(self, refresh_token: str, client_id: str, client_secret: str) -> str:
        """Raises PermissionError('invalid_client') or LookupError('invalid_grant')."""
        if self.required_client is not None and (client_id, client_secret) != self.required_client:
            raise PermissionError("invalid_client")
        grant = self.refresh_grants.get(refresh_token)
        if grant is None or grant.revoked:
            raise LookupError("invalid_grant")
        token = "emu-at-" + secrets.token_urlsafe(24)
        self.access_grants[token] = AccessGrant(
            account_ids=list(grant.account_ids),
            project=client_id or "default-project",
            refresh_token=refresh_token,
            expires_at=time.monotonic() + self.token_lifetime,
        )
        self.stats.token_refreshes += 1
        return token

    def access_grant(self, token: str) -> AccessGrant | None:
        grant = self.access_grants.get(token)
        if grant is None or grant.expires_at <= time.monotonic():
            return None
        return grant

    def quota_for(self, api: Api | str) -> int:
        """Requests per window that one project may make to this API."""
        return self.api_quotas.get(Api(api), self.quota_per_minute)

    def admit(self, project: str, api: Api | str) -> bool:
        """Counts a request against the project's quota window of this API; False if it is
        over quota."""
        api = Api(api)
        window = self._windows.setdefault((project, api), collections.deque())
        now = time.monotonic()
        while window and window[0] <= now - self.quota_window:
            window.popleft()
        if len(window) >= self.quota_for(api):
            self.stats.quota_rejections += 1
            self.stats.quota_rejections_by_api[api.value] += 1
            return False
        window.append(now)
        self.stats.accepted_by_api[api.value] += 1
        peak = self.stats.peak_window_requests
        key = f"{project}/{api.value}"
        peak[key] = max(peak.get(key, 0), len(window))
        return True

    def summary(self) -> dict[str, Any]:
        return {
            "accounts": [
                {
                    "name": f"accounts/{a.account_id}",
                    "type": a.type.value,
                    "refreshToken": f"emulator-refresh-token-{a.account_id}",
                    "locations": len(a.locations),
                    "locationKinds": dict(
                        collections.Counter(loc.kind.value for loc in a.locations.values())
                    ),
                    "reviews": sum(len(loc.reviews) for loc in a.locations.values()),
                }
                for a in self.accounts.values()
            ],
            "grants": [
                {
                    "refreshToken": token,
                    "accounts": [f"accounts/{a}" for a in grant.account_ids],
                    "revoked": grant.revoked,
                }
                for token, grant in self.refresh_grants.items()
                if token.startswith("emulator-grant-")
            ],
            "quotaPerWindow": self.quota_per_minute,
            "quotaPerWindowByApi": {api.value: self.quota_for(api) for api in Api},
            "quotaWindowSeconds": self.quota_window,
            "messy": self.messy,
            "faults": len(self.faults),
            "hooks": len(self.hooks),
            "stats": self.stats.to_json(),
        }


def _bare(value: str, prefix: str) -> str:
    return value[len(prefix) :] if value.startswith(prefix) else value


def _star(value: str | int) -> str:
    if isinstance(value, int) or str(value).isdigit():
        number = int(value)
        if not 1 <= number <= 5:
            raise ValueError("starRating must be 1..5 or ONE..FIVE")
        return STARS[number - 1]
    if value not in STARS:
        raise ValueError("starRating must be 1..5 or ONE..FIVE")
    return str(value)


def _now() -> datetime:
    return datetime.now(UTC)
