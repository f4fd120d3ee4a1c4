"""Structs to plain Python: the same values as protobuf's own JSON conversion, faster."""

from __future__ import annotations

import math

import pytest
from google.protobuf import json_format, struct_pb2

from service_runtime.protoconv import from_struct, to_struct

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
