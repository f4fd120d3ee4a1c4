"""Page tokens: opaque to clients, and checked in full when they come back.

A token is URL-safe base64 of a small JSON document naming the last row of the previous page.
Clients can read and forge it, which is harmless, since a listing still applies its caller's
filters and ownership to every page; what matters is that a forged or damaged token is refused
as INVALID_ARGUMENT on `page_token` and never reaches the database as an impossible value. So
decoding bounds the token's length and the JSON's nesting, and a cursor time must be an aware
time that converts to UTC inside the years every database and driver can hold.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from service_runtime.errors import InvalidArgument

#: Longer than any token this project issues (about 150 characters), far shorter than abuse.
MAX_PAGE_TOKEN_LENGTH = 1024
# Rows are created in the present: a cursor time outside this window names no row.
_CURSOR_TIME_MIN = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR_TIME_MAX = datetime(9000, 1, 1, tzinfo=UTC)


def encode_page_token(payload: Any) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, refusal: str, field: str = "page_token") -> Any:
    """The JSON a token carries, or INVALID_ARGUMENT on `field` with `refusal` as the text."""
    if len(token) > MAX_PAGE_TOKEN_LENGTH:
        raise InvalidArgument.field(field, refusal)
    try:
        padded = token + "=" * (-len(token) % 4)
        return json.loads(base64.urlsafe_b64decode(padded.encode()))
    # RecursionError: `[[[[...` nested deeper than the parser's stack (shorter tokens than the
    # length bound can do it). UnicodeDecodeError is a ValueError.
    except (binascii.Error, ValueError, RecursionError):
        raise InvalidArgument.field(field, refusal) from None


def cursor_time(raw: object, refusal: str, field: str = "page_token") -> datetime:
    """A cursor's ISO 8601 time as an aware UTC datetime, or INVALID_ARGUMENT on `field`."""
    if not isinstance(raw, str):
        raise InvalidArgument.field(field, refusal)
    try:
        parsed = datetime.fromisoformat(raw)
        if parsed.tzinfo is None:
            raise ValueError("naive")
        # +14:00 on 0001-01-01 or -14:00 on 9999-12-31 leaves datetime's range here.
        value = parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument.field(field, refusal) from None
    if not _CURSOR_TIME_MIN <= value <= _CURSOR_TIME_MAX:
        raise InvalidArgument.field(field, refusal)
    return value
