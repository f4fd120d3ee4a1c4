"""Structs to plain Python: the same values as protobuf's own JSON conversion, faster."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from service_runtime.protoconv import from_struct, from_timestamp, to_struct, to_timestamp

SAMPLE = {
    "locations_synced": 3,
    "duration_seconds": 0.125,
    "resumed": False,
    "note": 'caf\u00e9 "quoted" \\ back',
    "nothing": None,
    "skipped_locations": [{"location_id": "locations/1", "reason": "NOT_FOUND"}, 7, None],
    "nested": {"deeper": {"list": [[1.5, "x"], {}], "empty": []}},
}


def test_from_struct_gives_what_message_to_dict_gives():
    struct = to_struct(SAMPLE)

    converted = from_struct(struct)

    assert converted == json_format.MessageToDict(struct)
    # Types too: Struct numbers are doubles, as MessageToDict returns them.
    assert type(converted["locations_synced"]) is float
    assert converted["skipped_locations"][2] is None


def test_an_empty_struct_is_an_empty_dict():
    assert from_struct(struct_pb2.Struct()) == {}


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_numbers_json_cannot_hold_are_refused(number):
    struct = struct_pb2.Struct()
    struct.update({"deep": [{"value": number}]})

    with pytest.raises(ValueError, match="JSON"):
        from_struct(struct)


@pytest.mark.parametrize(
    "instant",
    [
        datetime(2026, 11, 30, 5, 20, 1, 123456, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),
        datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=-7, minutes=-30))),
        datetime(2026, 11, 30, 5, 20, 1, 999999),  # naive: UTC
    ],
)
def test_to_timestamp_gives_what_from_datetime_gives(instant):
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(instant if instant.tzinfo else instant.replace(tzinfo=UTC))

    assert to_timestamp(instant) == expected
    assert from_timestamp(to_timestamp(instant)) == instant.replace(tzinfo=instant.tzinfo or UTC)
