"""Conversions between protobuf well-known types and Python values, with field-named errors."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, overload

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from service_runtime.errors import InvalidArgument


@overload
def to_timestamp(value: datetime) -> timestamp_pb2.Timestamp: ...
@overload
def to_timestamp(value: None) -> None: ...
@overload
def to_timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None: ...


def to_timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp of `value` (None for None)."""
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(as_utc(value))
    return stamp


def from_timestamp(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def to_duration(value: timedelta) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(value)
    return duration


def as_utc(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; every time in this project is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def to_struct(value: dict[str, Any] | None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if value:
        struct.update(value)
    return struct


def from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(struct)


def struct_json_size(value: dict[str, Any]) -> int:
    return len(json.dumps(value, separators=(",", ":")).encode())


def parse_uuid(field: str, raw: str, *, required: bool = True) -> uuid.UUID | None:
    """A UUID from a request field, or INVALID_ARGUMENT naming the field."""
    if not raw:
        if required:
            raise InvalidArgument.field(field, "is required (a UUID)")
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise InvalidArgument.field(field, f"{raw[:64]!r} is not a UUID") from None


def require_uuid(field: str, raw: str) -> uuid.UUID:
    parsed = parse_uuid(field, raw, required=True)
    assert parsed is not None
    return parsed
