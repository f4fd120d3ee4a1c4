"""What the emulator serves (endpoints, the APIs whose quotas they count against) and the
faults a test can inject into them.

A fault is matched against each request by endpoint and path; the server turns the matched
fault into Google's answer for it (`errors.py`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Endpoint(enum.StrEnum):
    """One kind of request the emulator answers; also the key of `stats.requests`."""

    TOKEN = "token"
    ACCOUNTS = "accounts"
    LOCATIONS = "locations"
    REVIEWS = "reviews"
    BATCH_REVIEWS = "batch_reviews"


class Api(enum.StrEnum):
    """A Google API with its own per-project quota."""

    ACCOUNT_MANAGEMENT = "account_management"
    BUSINESS_INFORMATION = "business_information"
    REVIEWS = "reviews"  # the v4 API: reviews.list and batchGetReviews

    @property
    def service(self) -> str:
        return _SERVICES[self][0]

    @property
    def display_name(self) -> str:
        """The name Google's console gives the API (used in its error messages)."""
        return _SERVICES[self][1]

    @classmethod
    def of(cls, endpoint: Endpoint) -> Api:
        return _ENDPOINT_API[endpoint]


_SERVICES = {
    Api.ACCOUNT_MANAGEMENT: (
        "mybusinessaccountmanagement.googleapis.com",
        "My Business Account Management API",
    ),
    Api.BUSINESS_INFORMATION: (
        "mybusinessbusinessinformation.googleapis.com",
        "My Business Business Information API",
    ),
    Api.REVIEWS: ("mybusiness.googleapis.com", "Google My Business API"),
}
_ENDPOINT_API = {
    Endpoint.ACCOUNTS: Api.ACCOUNT_MANAGEMENT,
    Endpoint.LOCATIONS: Api.BUSINESS_INFORMATION,
    Endpoint.REVIEWS: Api.REVIEWS,
    Endpoint.BATCH_REVIEWS: Api.REVIEWS,
}


class FaultKind(enum.StrEnum):
    """What a fault does to a matching request."""

    LATENCY = "latency"  # delay the answer by `latency` seconds, then answer normally
    EXPIRED_TOKEN = "expired_token"  # 401 UNAUTHENTICATED, ACCESS_TOKEN_EXPIRED
    RATE_LIMIT = "rate_limit"  # 429 RESOURCE_EXHAUSTED with the API's real quota value
    QUOTA_ZERO = "quota_zero"  # 429 RESOURCE_EXHAUSTED, quota_limit_value "0" (no API access)
    PERMISSION_DENIED = "permission_denied"  # 403
    NOT_FOUND = "not_found"  # 404
    UNAVAILABLE = "unavailable"  # 503
    INTERNAL = "internal"  # 500
    SERVICE_DISABLED = "service_disabled"  # 403, ErrorInfo SERVICE_DISABLED
    SCOPE_INSUFFICIENT = "scope_insufficient"  # 403, ErrorInfo ACCESS_TOKEN_SCOPE_INSUFFICIENT
    TRUNCATED_BODY = "truncated_body"  # 200 with the first half of the real JSON answer
    NOT_JSON = "not_json"  # 200 with an HTML page
    PAGE_TOKEN_EXPIRED = "page_token_expired"  # 400 page_token, only requests with a pageToken
    # The token endpoint only:
    INVALID_GRANT = "invalid_grant"  # 400 invalid_grant
    INVALID_CLIENT = "invalid_client"  # 401 invalid_client


TOKEN_ONLY_KINDS = frozenset({FaultKind.INVALID_GRANT, FaultKind.INVALID_CLIENT})


@dataclass
class Fault:
    """A fault for the next `count` matching requests, or each one with probability `rate`
    (drawn from the emulator's seeded generator, so a run is reproducible), or every one."""

    kind: FaultKind
    # "api" matches every endpoint but the token endpoint; or one Endpoint value, where
    # "reviews" matches reviews.list and batchGetReviews, "batch_reviews" the batch only.
    endpoint: str = "api"
    count: int | None = None
    rate: float | None = None
    latency: float = 0.0
    retry_after: float | None = None
    # Only requests whose path contains this (e.g. "accounts/2/").
    match: str | None = None
    id: int = 0
    injected: int = 0

    def __post_init__(self) -> None:
        self.kind = FaultKind(self.kind)
        if self.endpoint != "api":
            Endpoint(self.endpoint)  # raises ValueError for an unknown endpoint
        if self.kind in TOKEN_ONLY_KINDS and self.endpoint != Endpoint.TOKEN:
            # Otherwise the default endpoint ("api") would make it a fault that never fires.
            raise ValueError(f"fault kind {self.kind.value} needs endpoint 'token'")
        if self.count is not None and (not isinstance(self.count, int) or self.count < 1):
            raise ValueError("count must be a positive integer")
        if self.rate is not None and not 0.0 <= float(self.rate) <= 1.0:
            raise ValueError("rate must be between 0 and 1")

    def matches(self, endpoint: Endpoint, path: str, *, page_token: bool = False) -> bool:
        if self.endpoint == "api":
            if endpoint is Endpoint.TOKEN:
                return False
        elif self.endpoint != endpoint.value and not (
            self.endpoint == Endpoint.REVIEWS and endpoint is Endpoint.BATCH_REVIEWS
        ):
            return False
        if self.kind is FaultKind.PAGE_TOKEN_EXPIRED and not page_token:
            return False
        return self.match is None or self.match in path

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Fault:
        """The control API's shape: {kind, endpoint?, count?, rate?, latencyMs?, retryAfter?,
        match?}."""
        rate = body.get("rate")
        return cls(
            kind=FaultKind(body["kind"]),
            endpoint=str(body.get("endpoint", "api")),
            count=body.get("count"),
            rate=float(rate) if rate is not None else None,
            latency=float(body.get("latencyMs", 0)) / 1000.0,
            retry_after=float(body["retryAfter"]) if "retryAfter" in body else None,
            match=body.get("match"),
        )
