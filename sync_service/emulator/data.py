"""The emulator's records (accounts, locations, reviews) and how Google writes them as JSON.

Google's quirks live here: false and empty fields are left out; a location's state shows only
through `metadata` and `openInfo`; review times carry 0, 3, 6 or 9 fractional digits (fixed
per review); `readMask` paths may be dotted (`metadata.placeId`) and select only that sub-field.
"""

from __future__ import annotations

import enum
import functools
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

ANCHOR = datetime(2025, 1, 1, tzinfo=UTC)
STARS = ("ONE", "TWO", "THREE", "FOUR", "FIVE")
_PRECISIONS = (0, 3, 6, 9)


class LocationKind(enum.StrEnum):
    """What Google thinks of a location; only verified and closed ones serve reviews."""

    VERIFIED = "verified"
    UNVERIFIED = "unverified"
    SUSPENDED = "suspended"
    DUPLICATE = "duplicate"
    CLOSED = "closed"  # permanently closed, still verified: reviews are served


class AccountType(enum.StrEnum):
    PERSONAL = "PERSONAL"
    LOCATION_GROUP = "LOCATION_GROUP"
    ORGANIZATION = "ORGANIZATION"
    USER_GROUP = "USER_GROUP"


# --- Times ----------------------------------------------------------------------------------------


def format_time(value: datetime, digits: int, nanos: str = "000") -> str:
    """RFC 3339 in UTC with `digits` fractional digits; the three beyond microseconds are
    `nanos`, so a 9-digit time parses (to microseconds) to `value` exactly."""
    base = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if digits == 0:
        return base + "Z"
    fraction = f"{value.microsecond:06d}{nanos}"[:digits]
    return f"{base}.{fraction}Z"


def quantize(value: datetime, digits: int) -> datetime:
    """The instant as `digits` fractional digits can write it (dropping what they cannot)."""
    if digits == 0:
        return value.replace(microsecond=0)
    if digits == 3:
        return value.replace(microsecond=value.microsecond // 1000 * 1000)
    return value


def _unit(digits: int) -> timedelta:
    return {0: timedelta(seconds=1), 3: timedelta(milliseconds=1)}.get(
        digits, timedelta(microseconds=1)
    )


# --- Reviews ---------------------------------------------------------------------------------------


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

    # Both follow from the review id, which never changes: computed once, as sorting a long
    # list asks for them again and again.
    @functools.cached_property
    def precision(self) -> int:
        """How many fractional digits this review's times are written with (0, 3, 6 or 9)."""
        return _PRECISIONS[hashlib.sha256(self.review_id.encode()).digest()[0] % 4]

    @functools.cached_property
    def nanos(self) -> str:
        """The digits beyond microseconds of a 9-digit time: fixed per review."""
        digest = hashlib.sha256(self.review_id.encode()).digest()
        return f"{int.from_bytes(digest[1:3], 'big') % 1000:03d}"

    @functools.cached_property
    def _extra_nanos(self) -> int:
        return int(self.nanos) if self.precision == 9 else 0

    def stamp(self, when: datetime, after: datetime | None = None) -> datetime:
        """`when` as this review writes it, and later than `after` (an edit must move the time
        forward even when the review's precision is coarser than the time between edits)."""
        value = quantize(when, self.precision)
        if after is not None and value <= after:
            value = after + _unit(self.precision)
        return value

    def order_key(self) -> tuple[datetime, int, str]:
        """updateTime order, with the digits beyond microseconds that a 9-digit time shows."""
        return (self.update_time, self._extra_nanos, self.review_id)

    def _time(self, value: datetime) -> str:
        return format_time(value, self.precision, self.nanos)

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
            "createTime": self._time(self.create_time),
            "updateTime": self._time(self.update_time),
        }
        if self.comment:
            doc["comment"] = self.comment
        if self.reply_comment is not None and self.reply_update_time is not None:
            doc["reviewReply"] = {
                "comment": self.reply_comment,
                "updateTime": self._time(self.reply_update_time),
            }
        return doc


# --- Locations ---------------------------------------------------------------------------------

_WEEKDAYS = ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY")

# The Business Information API's Location message, as far as `readMask` paths go: a dict is a
# message whose sub-fields may be named; None is a scalar, list or map (no deeper path).
LOCATION_SCHEMA: dict[str, Any] = {
    "name": None,
    "languageCode": None,
    "storeCode": None,
    "title": None,
    "phoneNumbers": {"primaryPhone": None, "additionalPhones": None},
    "categories": {
        "primaryCategory": {
            "name": None,
            "displayName": None,
            "serviceTypes": None,
            "moreHoursTypes": None,
        },
        "additionalCategories": None,
    },
    "storefrontAddress": {
        "revision": None,
        "regionCode": None,
        "languageCode": None,
        "postalCode": None,
        "sortingCode": None,
        "administrativeArea": None,
        "locality": None,
        "sublocality": None,
        "addressLines": None,
        "recipients": None,
        "organization": None,
    },
    "websiteUri": None,
    "regularHours": {"periods": None},
    "openInfo": {
        "status": None,
        "canReopen": None,
        "openingDate": {"year": None, "month": None, "day": None},
    },
    "metadata": {
        "hasGoogleUpdated": None,
        "hasPendingEdits": None,
        "canDelete": None,
        "canOperateLocalPost": None,
        "canModifyServiceList": None,
        "canHaveFoodMenus": None,
        "canOperateHealthData": None,
        "canOperateLodgingData": None,
        "placeId": None,
        "duplicateLocation": None,
        "mapsUri": None,
        "newReviewUri": None,
        "canHaveBusinessCalls": None,
        "hasVoiceOfMerchant": None,
    },
}
LOCATION_FIELDS = frozenset(LOCATION_SCHEMA)

MaskTree = dict[str, Any]  # field -> True (all of it) or a MaskTree of its sub-fields


class ReadMaskError(ValueError):
    """A readMask path that names no field of Location; args[0] is the path."""


def parse_read_mask(mask: str) -> MaskTree:
    """`name,metadata.placeId` -> {"name": True, "metadata": {"placeId": True}}."""
    tree: MaskTree = {}
    for raw in mask.split(","):
        path = raw.strip()
        if not path:
            continue
        schema: Any = LOCATION_SCHEMA
        node = tree
        parts = path.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(schema, dict) or part not in schema:
                raise ReadMaskError(path)
            schema = schema[part]
            if node.get(part) is True:
                # A parent path already selects all of it; still check the rest of the path.
                node = {}
            elif depth == len(parts) - 1:
                node[part] = True
            else:
                node = node.setdefault(part, {})
    return tree


def apply_mask(doc: dict[str, Any], tree: MaskTree) -> dict[str, Any]:
    """Only the selected fields; a message none of whose selected sub-fields is set is left
    out, as Google leaves out empty fields."""
    out: dict[str, Any] = {}
    for key, sub in tree.items():
        if key not in doc:
            continue
        if sub is True:
            out[key] = doc[key]
        elif isinstance(doc[key], dict):
            inner = apply_mask(doc[key], sub)
            if inner:
                out[key] = inner
    return out


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
    kind: LocationKind = LocationKind.VERIFIED
    # For a duplicate: the id of the location it duplicates.
    duplicate_of: str | None = None

    @property
    def serves_reviews(self) -> bool:
        return self.kind in (LocationKind.VERIFIED, LocationKind.CLOSED)

    def regular_hours(self) -> dict[str, Any]:
        """Weekdays from 7, 8 or 9 (fixed per location) to 18, Saturdays 9 to 14."""
        opens = 7 + int(self.location_id) % 3 if self.location_id.isdigit() else 8
        days = [(day, opens, 18) for day in _WEEKDAYS] + [("SATURDAY", 9, 14)]
        return {
            "periods": [
                {
                    "openDay": day,
                    "openTime": {"hours": start},
                    "closeDay": day,
                    "closeTime": {"hours": end},
                }
                for day, start, end in days
            ]
        }

    def to_json(self) -> dict[str, Any]:
        locality, region, postal = self.city
        metadata: dict[str, Any] = {
            "placeId": self.place_id,
            "mapsUri": f"https://maps.google.com/?cid={self.location_id}",
        }
        if self.serves_reviews:
            metadata["hasVoiceOfMerchant"] = True
        if self.kind is LocationKind.DUPLICATE and self.duplicate_of:
            metadata["duplicateLocation"] = f"locations/{self.duplicate_of}"
        status = "CLOSED_PERMANENTLY" if self.kind is LocationKind.CLOSED else "OPEN"
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
            "regularHours": self.regular_hours(),
            "openInfo": {"status": status},
            "metadata": metadata,
        }


# --- Accounts ----------------------------------------------------------------------------------


@dataclass
class Account:
    account_id: str
    account_name: str
    locations: dict[str, Location] = field(default_factory=dict)
    type: AccountType = AccountType.PERSONAL

    def to_json(self) -> dict[str, Any]:
        return {
            "name": f"accounts/{self.account_id}",
            "accountName": self.account_name,
            "type": self.type.value,
            "role": "PRIMARY_OWNER" if self.type is AccountType.PERSONAL else "OWNER",
            "verificationState": "VERIFIED",
            "vettedState": "NOT_VETTED",
            "permissionLevel": "OWNER_LEVEL",
        }
