"""The sync service's domain values: Google's locations and reviews as rows, accounts, statuses.

Google's JSON is parsed here once, so the store and the sync algorithm see typed values and
the raw document only as something to keep.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sync_service.google_client import StoredCredentials

STAR_RATINGS = {"ONE": 1, "TWO": 2, "THREE": 3, "FOUR": 4, "FIVE": 5}

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)


class SyncType(enum.StrEnum):
    FULL = "full"
    INCREMENTAL = "incremental"


def parse_rfc3339(value: str) -> datetime:
    """Google's times: RFC 3339 with up to nine fractional digits (Python keeps six)."""
    match = _RFC3339.match(value)
    if not match:
        raise ValueError(f"not an RFC 3339 time: {value[:40]!r}")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micros = int((fraction or "0").ljust(6, "0")[:6])
    parsed = datetime(
        int(year), int(month), int(day), int(hour), int(minute), int(second), micros, tzinfo=UTC
    )
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
        parsed -= sign * offset
    return parsed


def format_rfc3339(value: datetime) -> str:
    """RFC 3339 in UTC with milliseconds, as Google writes them."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def content_hash(document: dict[str, Any]) -> str:
    """A stable digest of a JSON document: tells a changed row from a re-read one."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class LocationRow:
    """One location as read from Google."""

    location_id: str  # `locations/{id}`
    title: str
    store_code: str | None
    primary_category: str | None
    primary_phone: str | None
    website_uri: str | None
    place_id: str | None
    raw: dict[str, Any]
    content_hash: str
    # Why Google serves no reviews for this location (None: it does). Such a location is not
    # asked for them.
    ineligible_reason: str | None = None

    @classmethod
    def from_google(cls, doc: dict[str, Any]) -> LocationRow:
        name = doc.get("name")
        if not isinstance(name, str) or not name.startswith("locations/"):
            raise ValueError(f"location without a 'locations/...' name: {str(name)[:80]!r}")
        category = (doc.get("categories") or {}).get("primaryCategory") or {}
        return cls(
            location_id=name,
            title=str(doc.get("title", "")),
            store_code=doc.get("storeCode"),
            primary_category=category.get("displayName") or category.get("name"),
            primary_phone=(doc.get("phoneNumbers") or {}).get("primaryPhone"),
            website_uri=doc.get("websiteUri"),
            place_id=(doc.get("metadata") or {}).get("placeId"),
            raw=doc,
            content_hash=content_hash(doc),
            ineligible_reason=_ineligible_reason(doc),
        )


def _ineligible_reason(doc: dict[str, Any]) -> str | None:
    """Google serves reviews only for verified locations that are not duplicates: one whose
    `metadata.hasVoiceOfMerchant` is false (unverified, suspended, pending) or that names the
    location it duplicates has none to give."""
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict):
        return None  # a read mask without metadata says nothing either way: ask
    duplicate_of = metadata.get("duplicateLocation")
    if duplicate_of:
        return f"a duplicate of {str(duplicate_of)[:80]}: Google serves no reviews for it"
    if not metadata.get("hasVoiceOfMerchant"):
        return (
            "not verified, or suspended (Google reports no voice of merchant): Google serves "
            "no reviews for it"
        )
    return None


@dataclass(frozen=True, slots=True)
class ReviewRow:
    """One review as read from Google."""

    location_id: str  # `locations/{id}`
    review_id: str
    review_name: str  # `accounts/{a}/locations/{l}/reviews/{r}`
    reviewer_name: str | None
    reviewer_photo_url: str | None
    reviewer_anonymous: bool
    star_rating: int | None  # 1..5; None for STAR_RATING_UNSPECIFIED
    comment: str | None
    reply_comment: str | None
    reply_update_time: datetime | None
    create_time: datetime
    update_time: datetime
    raw: dict[str, Any]
    content_hash: str

    @classmethod
    def from_google(cls, location_id: str, doc: dict[str, Any]) -> ReviewRow:
        review_id = doc.get("reviewId")
        name = doc.get("name")
        if not isinstance(review_id, str) or not review_id:
            raise ValueError(f"review without a reviewId in {location_id}")
        reviewer = doc.get("reviewer") or {}
        reply = doc.get("reviewReply") or {}
        create_time = parse_rfc3339(doc["createTime"])
        return cls(
            location_id=location_id,
            review_id=review_id,
            review_name=name if isinstance(name, str) else "",
            reviewer_name=reviewer.get("displayName"),
            reviewer_photo_url=reviewer.get("profilePhotoUrl"),
            reviewer_anonymous=bool(reviewer.get("isAnonymous", False)),
            star_rating=STAR_RATINGS.get(str(doc.get("starRating", ""))),
            comment=doc.get("comment"),
            reply_comment=reply.get("comment"),
            reply_update_time=parse_rfc3339(reply["updateTime"]) if "updateTime" in reply else None,
            create_time=create_time,
            update_time=parse_rfc3339(doc["updateTime"]) if "updateTime" in doc else create_time,
            raw=doc,
            content_hash=content_hash(doc),
        )


@dataclass(frozen=True, slots=True)
class Account:
    """A connected Google account (never with its tokens)."""

    id: uuid.UUID
    user_id: uuid.UUID
    account_name: str
    google_account_id: str
    is_active: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class SyncStatusRecord:
    """The sync_status row of one account."""

    account_id: uuid.UUID
    last_sync_at: datetime | None = None
    last_sync_type: SyncType | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    consecutive_failures: int = 0
    locations_count: int = 0
    reviews_count: int = 0
    reviews_watermark: datetime | None = None
    updated_at: datetime | None = None
    locations_skipped: int = 0


@dataclass(frozen=True, slots=True)
class SyncContext:
    """What a sync needs from the database before it calls Google."""

    account: Account
    # None when the account has no stored tokens (it was never connected through this service).
    credentials: StoredCredentials | None
    status: SyncStatusRecord | None
    known_location_ids: frozenset[str]


@dataclass(frozen=True, slots=True)
class SyncPass:
    """One pass over an account, as one attempt sees it.

    `started_at` is the database's clock when the pass began: a location read at or after it
    is done for the pass, and a row no attempt of the pass saw is older than it. `seen_at` is
    the database's clock when this attempt began: the snapshot time that stamps what this
    attempt writes. Attempts of one pass thus never share a snapshot time, so a late write of
    an earlier (or concurrent) attempt never overrides what a later one decided.
    """

    started_at: datetime
    seen_at: datetime
    resumed: bool
    # False when an incremental sync runs beside an unfinished full pass, which keeps its
    # checkpoint.
    checkpointed: bool


@dataclass(frozen=True, slots=True)
class LocationRead:
    """What one sync read of one location's reviews."""

    account_id: uuid.UUID
    location_id: str
    reviews: list[ReviewRow]
    # True when the read proved that stored reviews it did not see are gone: a full read of a
    # list that did not change while it was paged (see `Syncer._read_location_full`).
    verified: bool = False
    average_rating: float | None = None
    total_review_count: int | None = None


@dataclass(frozen=True, slots=True)
class LocationStatusRecord:
    """A stored location, as GetSyncStatus shows it."""

    location_id: str
    title: str
    review_state: str
    review_state_reason: str | None
    average_rating: float | None
    total_review_count: int | None
    reviews_read_at: datetime | None
    reviews_stored: int


@dataclass(frozen=True, slots=True)
class WriteCounts:
    """What a sync changed."""

    locations_synced: int = 0
    locations_removed: int = 0
    reviews_added: int = 0
    reviews_updated: int = 0
    reviews_removed: int = 0

    def __add__(self, other: WriteCounts) -> WriteCounts:
        return WriteCounts(
            *(
                a + b
                for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)
            )
        )
