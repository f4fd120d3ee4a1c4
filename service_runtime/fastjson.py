"""JSON at C speed for the hot paths (orjson), with the standard library's answer where orjson
has none.

The queue writes a job's metadata, trace context and result as JSON on every enqueue and
report, and PostgreSQL hands four JSON columns back with every job it returns: with the
standard `json` module that was a fifth of QueueService's time on a batch enqueue.

orjson encodes integers only up to 64 bits; a bigger one (never in a protobuf Struct, whose
numbers are doubles, but possible in a dict built in Python) falls back to `json`, so no value
that `json` could write is refused. Reading, orjson takes an integer beyond 64 bits as a
float; none is stored: the queue's JSON comes from Structs and typed results, and Google's
APIs write their 64-bit numbers as strings.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

loads = orjson.loads


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON (what psycopg's JSON dumpers accept as they are)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def dumps_text(value: Any) -> str:
    """Compact JSON as text, for statements that cast a text parameter to JSON."""
    return dumps(value).decode()


def encoded_size(value: Any) -> int:
    """Bytes of `value` as compact UTF-8 JSON: the size limits of metadata and results."""
    return len(dumps(value))
