"""The hot paths' JSON: what the standard library writes and reads, and every value it takes."""

from __future__ import annotations

import json

import pytest

from service_runtime import fastjson
from service_runtime.protoconv import struct_json_size

VALUES = [
    {},
    [],
    {"locations_synced": 3, "duration_seconds": 0.125, "resumed": False, "nothing": None},
    {"note": 'caf\u00e9 "quoted" \\ back \U0001f600', "nested": {"list": [[1.5, "x"], {}]}},
    {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
]


@pytest.mark.parametrize("value", VALUES)
def test_what_it_writes_reads_back_as_the_same_value_with_either_library(value):
    text = fastjson.dumps_text(value)

    assert json.loads(text) == value
    assert fastjson.loads(text) == value
    assert fastjson.loads(fastjson.dumps(value)) == value


def test_an_integer_beyond_64_bits_is_written_exactly_not_refused():
    value = {"big": 2**70, "small": 1}

    text = fastjson.dumps_text(value)

    assert json.loads(text) == value


def test_a_value_json_cannot_write_is_refused_as_json_refuses_it():
    with pytest.raises(TypeError):
        fastjson.dumps({"when": object()})


def test_size_counts_utf8_bytes_of_compact_json():
    # Compact separators; an accented letter is 2 bytes, an emoji 4 (not a 6- or 12-byte escape).
    value = {"a": "\u00e9", "b": ["\U0001f600", 1]}

    assert struct_json_size(value) == len('{"a":"","b":["",1]}') + 2 + 4
