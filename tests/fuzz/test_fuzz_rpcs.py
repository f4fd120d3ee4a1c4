"""Hypothesis throws valid-shaped and malformed requests at every RPC of both services, as every
kind of caller, and checks what a hostile client must never see:

- no UNKNOWN or INTERNAL answer (bad input is INVALID_ARGUMENT naming the field, or the RPC's
  documented refusal);
- no traceback in the servers' logs;
- no row changed by a refused call (every table is fingerprinted before and after it).

Hypothesis draws the cases, then each is sent to the real servers on the test's event loop (the
servers and the drawing cannot share one loop, so failures are reported, not shrunk). The size
is a settings profile: `ci` (the default, bounded for CI) or `deep`, chosen by FUZZ_PROFILE;
FUZZ_EXAMPLES overrides the number of cases. The counts per status code are printed at the end.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gmbsync.queue.v1 import queue_service_pb2 as qpb
from tests.conftest import WORKER_METADATA
from tests.fuzz.conftest import QUEUE_SERVICE, ROLES, SYNC_SERVICE, USER, Services

settings.register_profile(
    "ci", max_examples=300, database=None, deadline=None, derandomize=True, print_blob=False
)
settings.register_profile("deep", max_examples=3000, database=None, deadline=None)
PROFILE = os.environ.get("FUZZ_PROFILE", "ci")
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0")) or settings.get_profile(PROFILE).max_examples

RPCS = [(QUEUE_SERVICE, m) for m in QUEUE_SERVICE.methods] + [
    (SYNC_SERVICE, m) for m in SYNC_SERVICE.methods
]
# Placeholders replaced at call time by ids of rows the test made, so that valid-shaped
# requests reach past "not found" into the code that acts on real rows.
PLACEHOLDERS = ("{account}", "{job}", "{lease}", "{user}", "{run}")
# Answers that refuse a request before it acts: such a call must change no row.
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.OUT_OF_RANGE,
}
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}

_text = st.one_of(
    st.sampled_from(
        [
            *PLACEHOLDERS,
            "",
            " ",
            str(uuid.UUID(int=0)),
            "accounts/1",
            "accounts/-1",
            "emulator-refresh-token-1",
            "x" * 300,
            "\x00",
            "🙂",
        ]
    ),
    st.uuids().map(str),
    st.text(max_size=24),
)
_int_edges = [0, 1, -1, 2, 5, 100, 101, 500, 501, 1000, 1001]
_json = st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
_seconds = st.one_of(
    st.sampled_from([0, 1, 5, 59, 60, 61, 3600, 86_400, -1, 10**14, 2**62, -(2**62), 2**63 - 1]),
    st.integers(-(2**63), 2**63 - 1),
)
_nanos = st.one_of(
    st.sampled_from([0, 1, -1, 999_999_999, 10**9]), st.integers(-(2**31), 2**31 - 1)
)


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return _text
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.integers(-2, 8)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=16)
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, width=32)
    bits = 64 if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64) else 32
    unsigned = kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64)
    low, high = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    edges = [x for x in [*_int_edges, low, high] if low <= x <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def _message(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """A dict of some of the message's fields: values of the right type, often at the edges."""
    name = descriptor.full_name
    if name in ("google.protobuf.Duration", "google.protobuf.Timestamp"):
        return st.fixed_dictionaries({"seconds": _seconds, "nanos": _nanos})
    if name == "google.protobuf.Struct":
        return st.dictionaries(st.text(max_size=8), _json, max_size=4).map(lambda d: {"$struct": d})
    fields = {}
    for field in descriptor.fields:
        if field.message_type is not None:
            if depth >= 3 or field.message_type.GetOptions().map_entry:
                continue
            value = _message(field.message_type, depth + 1)
        else:
            value = _scalar(field)
        if field.is_repeated:
            value = st.lists(value, max_size=3)
        fields[field.name] = value
    return st.fixed_dictionaries({}, optional=fields)


@dataclass(frozen=True)
class Case:
    service: ServiceDescriptor
    method: str
    role: str
    fields: dict[str, Any] | None  # None: `raw` is sent instead of a message
    raw: bytes = b""


def _cases() -> st.SearchStrategy[Case]:
    @st.composite
    def case(draw: st.DrawFn) -> Case:
        service, method = draw(st.sampled_from(RPCS))
        role = draw(st.sampled_from(sorted(ROLES)))
        if draw(st.integers(0, 9)) == 0:  # one in ten: bytes that are not the message
            return Case(service, method.name, role, None, draw(st.binary(min_size=1, max_size=40)))
        return Case(service, method.name, role, draw(_message(method.input_type)))

    return case()


def _draw(count: int) -> list[Case]:
    drawn: list[Case] = []

    @settings(
        settings.get_profile(PROFILE), max_examples=count, suppress_health_check=list(HealthCheck)
    )
    @given(_cases())
    def collect(case: Case) -> None:
        drawn.append(case)

    collect()
    return drawn


def _fill(message: Message, fields: dict[str, Any], ids: dict[str, str]) -> None:
    for name, value in fields.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        if field.message_type is not None:
            if field.is_repeated:
                for item in value:
                    _fill_one(getattr(message, name).add(), item, ids)
            else:
                _fill_one(getattr(message, name), value, ids)
        elif field.is_repeated:
            getattr(message, name).extend(_resolve(v, ids) for v in value)
        else:
            setattr(message, name, _resolve(value, ids))


def _fill_one(message: Message, value: dict[str, Any], ids: dict[str, str]) -> None:
    if "$struct" in value:
        # protobuf itself refuses some values (the client cannot send them): left empty.
        with contextlib.suppress(ValueError, TypeError):
            message.update(value["$struct"])  # type: ignore[attr-defined]
        return
    _fill(message, value, ids)


def _resolve(value: Any, ids: dict[str, str]) -> Any:
    return ids.get(value, value) if isinstance(value, str) else value


def _request_bytes(case: Case, ids: dict[str, str]) -> bytes | None:
    if case.fields is None:
        return case.raw
    method = case.service.methods_by_name[case.method]
    message = GetMessageClass(method.input_type)()
    try:
        _fill(message, case.fields, ids)
    except (ValueError, TypeError):
        return None  # e.g. an enum value protobuf's setter refuses: not sendable
    return message.SerializeToString()


async def _fingerprint(services: Services) -> list[tuple[Any, ...]]:
    """One row per table: its row count and a hash of its contents."""
    engine = services.queue.app.engine
    async with engine.connect() as conn:
        names = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
        query = " UNION ALL ".join(
            f"SELECT '{n}', count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
            f' FROM "{n}" t'
            for n in sorted(names)
            if n != "alembic_version"
        )
        return [tuple(row) for row in (await conn.execute(sa.text(query))).all()]


async def _seed(services: Services) -> dict[str, str]:
    account = await services.sync.connect(1, user_id=USER)
    await services.sync.connect(2, user_id=USER)
    job = await services.queue.enqueue(uuid.UUID(account.id))
    picked = await services.queue.pick()
    run = await services.queue.stub.StartWorkerRun(
        qpb.StartWorkerRunRequest(worker_id="fuzz"), metadata=WORKER_METADATA
    )
    return {
        "{account}": account.id,
        "{job}": picked[0].id if picked else job.id,
        "{lease}": picked[0].lease_token if picked else str(uuid.uuid4()),
        "{user}": str(USER),
        "{run}": run.run.id,
    }


async def test_no_rpc_answers_unknown_or_internal_or_changes_rows_when_it_refuses(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    ids = await _seed(services)
    counts: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    for case in _draw(EXAMPLES):
        payload = _request_bytes(case, ids)
        if payload is None:
            counts["unsendable"] += 1
            continue
        before = await _fingerprint(services)
        try:
            await services.call_raw(case.service, case.method, payload, ROLES[case.role])
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code in FORBIDDEN:
                problems.append(f"{case.method} as {case.role}: {code.name} {error.details()}")
        counts[code.name] += 1
        if code in REFUSALS and await _fingerprint(services) != before:
            problems.append(
                f"{case.method} as {case.role} was refused ({code.name}) yet changed rows"
            )
    tracebacks = [
        r.getMessage() for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()
    ]
    print(
        f"\nfuzz ({PROFILE}, {EXAMPLES} cases) answers per status code: {dict(sorted(counts.items()))}"
    )
    assert not problems, problems[:20]
    assert not tracebacks, tracebacks[:5]
    assert counts["OK"] > 0 and counts["INVALID_ARGUMENT"] > 0  # both sides were reached
