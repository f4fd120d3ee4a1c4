"""The emulator's world: accounts, locations, reviews, OAuth grants, quotas and faults.

Everything is seeded from one number, so the same seed and size give the same ids, texts,
ratings and times on every run (times count back from a fixed anchor, not from the clock).
What tests add or edit later gets the wall-clock time, always later than what it replaces.
The server (`server.py`) translates HTTP to calls on this object; tests may call it directly.
"""

from __future__ import annotations

import collections
import enum
import random
import secrets
import string
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sync_service.models import format_rfc3339

ANCHOR = datetime(2025, 1, 1, tzinfo=UTC)
STARS = ("ONE", "TWO", "THREE", "FOUR", "FIVE")
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


class FaultKind(enum.StrEnum):
    """What a fault does to a matching request."""

    LATENCY = "latency"  # delay the answer by `latency` seconds, then answer normally
    EXPIRED_TOKEN = "expired_token"  # 401 UNAUTHENTICATED, ACCESS_TOKEN_EXPIRED
    RATE_LIMIT = "rate_limit"  # 429 RESOURCE_EXHAUSTED with the project's real quota value
    QUOTA_ZERO = "quota_zero"  # 429 RESOURCE_EXHAUSTED, quota_limit_value "0" (no API access)
    PERMISSION_DENIED = "permission_denied"  # 403
    NOT_FOUND = "not_found"  # 404
    UNAVAILABLE = "unavailable"  # 503
    INTERNAL = "internal"  # 500


class Endpoint(enum.StrEnum):
    TOKEN = "token"
    ACCOUNTS = "accounts"
    LOCATIONS = "locations"
    REVIEWS = "reviews"


@dataclass
class Fault:
    """A fault for the next `count` matching requests, or each one with probability `rate`
    (drawn from the emulator's seeded generator, so a run is reproducible), or every one."""

    kind: FaultKind
    # "api" matches accounts, locations and reviews; or one Endpoint value.
    endpoint: str = "api"
    count: int | None = None
    rate: float | None = None
    latency: float = 0.0
    retry_after: float | None = None
    # Only requests whose path contains this (e.g. "accounts/2/").
    match: str | None = None
    id: int = 0
    injected: int = 0

    def matches(self, endpoint: Endpoint, path: str) -> bool:
        if self.endpoint == "api":
            if endpoint is Endpoint.TOKEN:
                return False
        elif self.endpoint != endpoint.value:
            return False
        return self.match is None or self.match in path

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Fault:
        """The control API's shape: {kind, endpoint?, count?, rate?, latencyMs?, retryAfter?,
        match?}."""
        kind = FaultKind(body["kind"])
        endpoint = str(body.get("endpoint", "api"))
        if endpoint != "api":
            Endpoint(endpoint)  # raises ValueError for an unknown endpoint
        count = body.get("count")
        rate = body.get("rate")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ValueError("count must be a positive integer")
        if rate is not None and not 0.0 <= float(rate) <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        return cls(
            kind=kind,
            endpoint=endpoint,
            count=count,
            rate=float(rate) if rate is not None else None,
            latency=float(body.get("latencyMs", 0)) / 1000.0,
            retry_after=float(body["retryAfter"]) if "retryAfter" in body else None,
            match=body.get("match"),
        )


@dataclass
class Review:
    review_id: str
    reviewer_name: str | None
    reviewer_photo_url: str | None
    anonymous: bool
    star_rating: str
    comment: str | None
    create_time: datetime
    update_time: datetime
    reply_comment: str | None = None
    reply_update_time: datetime | None = None

    def to_json(self, account_id: str, location_id: str) -> dict[str, Any]:
        """Google's shape: empty and false fields are left out."""
        reviewer: dict[str, Any] = {}
        if self.anonymous:
            reviewer["isAnonymous"] = True
        else:
            if self.reviewer_photo_url:
                reviewer["profilePhotoUrl"] = self.reviewer_photo_url
            if self.reviewer_name:
                reviewer["displayName"] = self.reviewer_name
        doc: dict[str, Any] = {
            "name": f"accounts/{account_id}/locations/{location_id}/reviews/{self.review_id}",
            "reviewId": self.review_id,
            "reviewer": reviewer,
            "starRating": self.star_rating,
            "createTime": format_rfc3339(self.create_time),
            "updateTime": format_rfc3339(self.update_time),
        }
        if self.comment:
            doc["comment"] = self.comment
        if self.reply_comment is not None and self.reply_update_time is not None:
            doc["reviewReply"] = {
                "comment": self.reply_comment,
                "updateTime": format_rfc3339(self.reply_update_time),
            }
        return doc


@dataclass
class Location:
    location_id: str
    title: str
    store_code: str
    phone: str
    website_uri: str
    place_id: str
    city: tuple[str, str, str]
    reviews: dict[str, Review] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        locality, region, postal = self.city
        return {
            "name": f"locations/{self.location_id}",
            "title": self.title,
            "storeCode": self.store_code,
            "languageCode": "en",
            "phoneNumbers": {"primaryPhone": self.phone},
            "categories": {
                "primaryCategory": {
                    "name": "categories/gcid:coffee_shop",
                    "displayName": "Coffee shop",
                }
            },
            "storefrontAddress": {
                "regionCode": "US",
                "postalCode": postal,
                "administrativeArea": region,
                "locality": locality,
                "addressLines": [f"{len(self.title)} Main St"],
            },
            "websiteUri": self.website_uri,
            "openInfo": {"status": "OPEN"},
            "metadata": {
                "placeId": self.place_id,
                "mapsUri": f"https://maps.google.com/?cid={self.location_id}",
                "hasVoiceOfMerchant": True,
            },
        }


@dataclass
class Account:
    account_id: str
    account_name: str
    locations: dict[str, Location] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": f"accounts/{self.account_id}",
            "accountName": self.account_name,
            "type": "PERSONAL",
            "role": "PRIMARY_OWNER",
            "verificationState": "VERIFIED",
            "vettedState": "NOT_VETTED",
            "permissionLevel": "OWNER_LEVEL",
        }


@dataclass
class RefreshGrant:
    account_id: str
    revoked: bool = False


@dataclass
class AccessGrant:
    account_id: str
    project: str  # the OAuth client id: a Google Cloud project has one
    refresh_token: str
    expires_at: float  # time.monotonic()


@dataclass
class Stats:
    """What the emulator saw: tests assert on these."""

    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    token_refreshes: int = 0
    quota_rejections: int = 0
    faults_injected: int = 0
    # Per project: the most requests accepted within any one quota window.
    peak_window_requests: dict[str, int] = field(default_factory=dict)
    # (endpoint, path, status) of every request, in order.
    calls: list[tuple[str, str, int]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "tokenRefreshes": self.token_refreshes,
            "quotaRejections": self.quota_rejections,
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
    ) -> None:
        self.seed = seed
        self.size = (accounts, locations_per_account, reviews_per_location)
        self.quota_per_minute = quota_per_minute
        self.quota_window = quota_window
        self.token_lifetime = token_lifetime
        self.required_client: tuple[str, str] | None = None
        self.reset()

    # --- Seeding -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the seeded world: data, grants, faults and statistics."""
        self._rng = random.Random(self.seed)
        self._fault_rng = random.Random(self.seed + 1)
        self.accounts: dict[str, Account] = {}
        self.refresh_grants: dict[str, RefreshGrant] = {}
        self.access_grants: dict[str, AccessGrant] = {}
        self.faults: list[Fault] = []
        self._next_fault_id = 1
        self.stats = Stats()
        self._windows: dict[str, collections.deque[float]] = {}
        count, locations, reviews = self.size
        for _ in range(count):
            self.add_account(locations=locations, reviews_per_location=reviews)

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
        self, *, name: str | None = None, locations: int = 0, reviews_per_location: int = 0
    ) -> tuple[str, str]:
        """A new account `accounts/{n}` (n counts from 1) and its refresh token."""
        account_id = str(len(self.accounts) + 1)
        account = Account(account_id=account_id, account_name=name or f"Business {account_id}")
        self.accounts[account_id] = account
        refresh_token = f"emulator-refresh-token-{account_id}"
        self.refresh_grants[refresh_token] = RefreshGrant(account_id=account_id)
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
        self, account_id: str, *, title: str | None = None, reviews: int = 0
    ) -> dict[str, Any]:
        location = self._add_seeded_location(self.account(account_id), 0)
        if title:
            location.title = title
        for _ in range(reviews):
            self.add_review(account_id, location.location_id)
        return location.to_json()

    def edit_location(self, account_id: str, location_id: str, **changes: Any) -> dict[str, Any]:
        location = self.location(account_id, location_id)
        for key, value in changes.items():
            if key == "title":
                location.title = str(value)
            elif key == "websiteUri":
                location.website_uri = str(value)
            elif key == "storeCode":
                location.store_code = str(value)
            else:
                raise ValueError(f"cannot edit location field {key!r}")
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
        if comment is not None or star_rating is not None:
            if comment is not None:
                review.comment = comment or None
            if star_rating is not None:
                review.star_rating = _star(star_rating)
            review.update_time = max(_now(), review.update_time + timedelta(milliseconds=1))
        if reply_comment is not None:
            review.reply_comment = reply_comment
            review.reply_update_time = _now()
        location = self.location(account_id, location_id)
        return review.to_json(_bare(account_id, "accounts/"), location.location_id)

    def delete_review(self, account_id: str, location_id: str, review_id: str) -> None:
        self.review(account_id, location_id, review_id)
        del self.location(account_id, location_id).reviews[review_id]

    # --- Control: OAuth --------------------------------------------------------------------------

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

    def faults_for(self, endpoint: Endpoint, path: str) -> tuple[float, Fault | None]:
        """The added latency and the error fault (if any) that this request meets."""
        latency = 0.0
        error: Fault | None = None
        for fault in list(self.faults):
            if not fault.matches(endpoint, path):
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
            account_id=grant.account_id,
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

    def admit(self, project: str) -> bool:
        """Counts a request against the project's quota window; False if it is over quota."""
        window = self._windows.setdefault(project, collections.deque())
        now = time.monotonic()
        while window and window[0] <= now - self.quota_window:
            window.popleft()
        if len(window) >= self.quota_per_minute:
            self.stats.quota_rejections += 1
            return False
        window.append(now)
        peak = self.stats.peak_window_requests
        peak[project] = max(peak.get(project, 0), len(window))
        return True

    def summary(self) -> dict[str, Any]:
        return {
            "accounts": [
                {
                    "name": f"accounts/{a.account_id}",
                    "refreshToken": f"emulator-refresh-token-{a.account_id}",
                    "locations": len(a.locations),
                    "reviews": sum(len(loc.reviews) for loc in a.locations.values()),
                }
                for a in self.accounts.values()
            ],
            "quotaPerWindow": self.quota_per_minute,
            "quotaWindowSeconds": self.quota_window,
            "faults": len(self.faults),
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
