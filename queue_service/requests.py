"""Reading QueueService requests into domain values, rejecting bad input field by field.

Every check names the field it failed on (`items[3].priority`), so the client's
`google.rpc.BadRequest` says exactly what to fix. All violations of a request are reported
together rather than one per round trip.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from gmbsync.queue.v1 import queue_service_pb2 as pb
from queue_service.convert import SYNC_RESULT_COUNTS
from queue_service.models import (
    DEFAULT_INTERVAL,
    Completion,
    EnqueueRequest,
    Failure,
    JobFilter,
    JobStatus,
    PageCursor,
    Release,
    ScheduleChange,
    SyncType,
    WorkerRunStatus,
)
from queue_service.tables import (
    MAX_ATTEMPTS_LIMIT,
    PRIORITY_MAX,
    PRIORITY_MIN,
    SCHEDULE_INTERVAL_MAX,
    SCHEDULE_INTERVAL_MIN,
)
from service_runtime import page_tokens
from service_runtime.errors import FieldViolation, InvalidArgument
from service_runtime.protoconv import (
    from_struct,
    parse_uuid,
    read_duration,
    read_timestamp,
    struct_json_size,
)

MAX_METADATA_BYTES = 16 * 1024
# Nesting of objects and lists in a metadata or result Struct.
MAX_METADATA_DEPTH = 16
MAX_BATCH = 1000
MAX_PICK = 100
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
MAX_WAIT = timedelta(seconds=60)
LEASE_MIN, LEASE_MAX = timedelta(seconds=5), timedelta(hours=1)
SCHEDULE_PAST_LIMIT = timedelta(days=1)
SCHEDULE_FUTURE_LIMIT = timedelta(days=366)
MAX_WORKER_ID = 200
MAX_RELEASE_DELAY = timedelta(days=1)
MAX_ERROR_INPUT = 64 * 1024
MAX_PAUSE_REASON = 500
STALE_MIN, STALE_MAX = timedelta(minutes=1), timedelta(days=7)
INTERVAL_MIN = timedelta(seconds=SCHEDULE_INTERVAL_MIN)
INTERVAL_MAX = timedelta(seconds=SCHEDULE_INTERVAL_MAX)

SYNC_TYPES = {pb.SYNC_TYPE_FULL: SyncType.FULL, pb.SYNC_TYPE_INCREMENTAL: SyncType.INCREMENTAL}
JOB_STATUSES = {
    pb.JOB_STATUS_PENDING: JobStatus.PENDING,
    pb.JOB_STATUS_PROCESSING: JobStatus.PROCESSING,
    pb.JOB_STATUS_SUCCEEDED: JobStatus.SUCCEEDED,
    pb.JOB_STATUS_FAILED: JobStatus.FAILED,
    pb.JOB_STATUS_CANCELLED: JobStatus.CANCELLED,
}
JOB_VIEWS = frozenset(pb.JobView.values())
FINISHED_RUN_STATUSES = {
    pb.WORKER_RUN_STATUS_COMPLETED: WorkerRunStatus.COMPLETED,
    pb.WORKER_RUN_STATUS_FAILED: WorkerRunStatus.FAILED,
}

T = TypeVar("T")


class Violations:
    """Collects field violations; `check()` raises them all at once."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.found: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.found.append(FieldViolation(self.prefix + field, description))

    def attempt(self, field: str, parse: Callable[[], T]) -> T | None:
        """Runs a parser that raises InvalidArgument; records its violations under `field`."""
        try:
            return parse()
        except InvalidArgument as exc:
            for violation in exc.violations:
                self.add(field, violation.description)
            return None

    def check(self) -> None:
        if self.found:
            raise InvalidArgument(self.found)


def _has(message: Message, field: str) -> bool:
    return message.HasField(field)


def _uuid(
    violations: Violations, field: str, raw: str, *, required: bool = True
) -> uuid.UUID | None:
    return violations.attempt(field, lambda: parse_uuid(field, raw, required=required))


def _duration(
    violations: Violations,
    field: str,
    value: duration_pb2.Duration,
    *,
    minimum: timedelta,
    maximum: timedelta,
) -> timedelta | None:
    return violations.attempt(
        field, lambda: read_duration(field, value, minimum=minimum, maximum=maximum)
    )


def _depth(value: Any) -> int:
    """How deep objects and lists nest in a JSON value (a scalar: 0)."""
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _struct(
    violations: Violations, field: str, value: struct_pb2.Struct, limit: int = MAX_METADATA_BYTES
) -> dict[str, Any]:
    if not value.fields:
        # Unset or empty, as most enqueues send it: nothing to walk, nothing to refuse.
        return {}
    try:
        data = from_struct(value)
    except ValueError:
        violations.add(field, "holds NaN or Infinity, which JSON cannot represent")
        return {}
    if _depth(data) > MAX_METADATA_DEPTH:
        violations.add(field, f"nests deeper than {MAX_METADATA_DEPTH} levels")
        return {}
    if _has_nul(data):
        # PostgreSQL cannot store U+0000 in JSONB text.
        violations.add(field, "holds a NUL character (U+0000)")
        return {}
    size = struct_json_size(data)
    if size > limit:
        violations.add(field, f"is {size} bytes as JSON; at most {limit} are allowed")
    return data


def clean_text(value: str) -> str:
    """Free text a worker reports (errors from Google, notes), made storable everywhere.

    A failure must always be recordable, so rather than refusing text with U+0000 (which
    PostgreSQL cannot store) the character is replaced.
    """
    return value.replace("\x00", "\ufffd")


def _sync_type(violations: Violations, field: str, value: pb.SyncType.ValueType) -> SyncType | None:
    if value == pb.SYNC_TYPE_UNSPECIFIED:
        violations.add(field, "is required: SYNC_TYPE_FULL or SYNC_TYPE_INCREMENTAL")
        return None
    if value not in SYNC_TYPES:
        violations.add(field, f"unknown sync type {value}")
        return None
    return SYNC_TYPES[value]


def _worker_id(violations: Violations, field: str, value: str) -> str:
    if not value.strip():
        violations.add(field, "is required (a name for this worker, e.g. host-pid)")
    elif not value.isprintable():
        violations.add(field, "must be printable text (no control characters)")
    elif len(value) > MAX_WORKER_ID:
        violations.add(field, f"is {len(value)} characters; at most {MAX_WORKER_ID} are allowed")
    return value.strip()


def _job_view(violations: Violations, view: int, *, refused: int, why: str) -> None:
    """A request's `view`: a JobView, and not the one this call refuses (`why` says why)."""
    if view not in JOB_VIEWS:
        violations.add("view", f"is not a JobView: {view}")
    elif view == refused:
        violations.add("view", why)


def enqueue_request(
    message: pb.EnqueueSyncRequest,
    *,
    now: datetime,
    default_max_attempts: int,
    trace_context: dict[str, str],
    violations: Violations | None = None,
) -> EnqueueRequest | None:
    own = violations is None
    v = violations or Violations()
    account_id = _uuid(v, "account_id", message.account_id)
    sync_type = _sync_type(v, "sync_type", message.sync_type)
    if not PRIORITY_MIN <= message.priority <= PRIORITY_MAX:
        v.add(
            "priority", f"must be between {PRIORITY_MIN} and {PRIORITY_MAX}, got {message.priority}"
        )
    max_attempts = message.max_attempts or default_max_attempts
    if not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
        v.add("max_attempts", f"must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {max_attempts}")
    scheduled_at = None
    if _has(message, "scheduled_at"):
        scheduled_at = _timestamp(v, "scheduled_at", message.scheduled_at)
        if scheduled_at is not None:
            if scheduled_at < now - SCHEDULE_PAST_LIMIT:
                v.add(
                    "scheduled_at", "is more than a day in the past; leave it unset to run at once"
                )
            elif scheduled_at > now + SCHEDULE_FUTURE_LIMIT:
                v.add("scheduled_at", "is more than a year ahead")
            elif scheduled_at <= now:
                scheduled_at = None  # already due: the same as "at once"
    metadata = _struct(v, "metadata", message.metadata)
    if own:
        v.check()
    if account_id is None or sync_type is None or v.found:
        return None
    return EnqueueRequest(
        account_id=account_id,
        sync_type=sync_type,
        priority=message.priority,
        scheduled_at=scheduled_at,
        max_attempts=max_attempts,
        metadata=metadata,
        trace_context=trace_context,
    )


def _timestamp(
    violations: Violations, field: str, value: timestamp_pb2.Timestamp
) -> datetime | None:
    return violations.attempt(field, lambda: read_timestamp(field, value))


def enqueue_batch(
    message: pb.EnqueueSyncBatchRequest,
    *,
    now: datetime,
    default_max_attempts: int,
    trace_context: dict[str, str],
) -> list[EnqueueRequest]:
    v = Violations()
    if not message.items:
        v.add("items", "must hold at least one request")
    elif len(message.items) > MAX_BATCH:
        v.add("items", f"holds {len(message.items)} requests; at most {MAX_BATCH} are allowed")
    _job_view(
        v,
        message.view,
        refused=pb.JOB_VIEW_WORKER,
        why="JOB_VIEW_WORKER is for leased jobs; use JOB_VIEW_ID or JOB_VIEW_FULL",
    )
    v.check()
    requests = []
    for index, item in enumerate(message.items):
        item_violations = Violations(prefix=f"items[{index}].")
        parsed = enqueue_request(
            item,
            now=now,
            default_max_attempts=default_max_attempts,
            trace_context=trace_context,
            violations=item_violations,
        )
        v.found.extend(item_violations.found)
        if parsed is not None:
            requests.append(parsed)
    v.check()
    return requests


def job_id(message: Any, field: str = "job_id") -> uuid.UUID:
    v = Violations()
    parsed = _uuid(v, field, getattr(message, field))
    v.check()
    assert parsed is not None
    return parsed


def _lease(v: Violations, message: Any, field: str, default: timedelta) -> timedelta:
    if not _has(message, field):
        return default
    return (
        _duration(v, field, getattr(message, field), minimum=LEASE_MIN, maximum=LEASE_MAX)
        or default
    )


def pick_request(message: pb.PickJobsRequest, *, default_lease: timedelta) -> dict[str, Any]:
    v = Violations()
    max_jobs = message.max_jobs or 1
    if not 1 <= max_jobs <= MAX_PICK:
        v.add("max_jobs", f"must be between 1 and {MAX_PICK}, got {message.max_jobs}")
    wait = timedelta(0)
    if _has(message, "wait"):
        wait = _duration(v, "wait", message.wait, minimum=timedelta(0), maximum=MAX_WAIT) or wait
    lease = _lease(v, message, "lease_duration", default_lease)
    worker_id = _worker_id(v, "worker_id", message.worker_id)
    run_id = _uuid(v, "worker_run_id", message.worker_run_id, required=False)
    _job_view(
        v,
        message.view,
        refused=pb.JOB_VIEW_ID,
        why="JOB_VIEW_ID leaves out the lease token a worker reports with; use JOB_VIEW_WORKER",
    )
    v.check()
    return {
        "max_jobs": max_jobs,
        "wait": wait,
        "lease": lease,
        "worker_id": worker_id,
        "worker_run_id": run_id,
    }


def lease_token(v: Violations, raw: str) -> uuid.UUID | None:
    if not raw:
        v.add("lease_token", "is required: the token PickJobs returned with the job")
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        v.add("lease_token", "is not a lease token this server issued")
        return None


def extend_request(
    message: pb.ExtendLeaseRequest, *, default_lease: timedelta
) -> tuple[uuid.UUID, uuid.UUID, timedelta]:
    v = Violations()
    job = _uuid(v, "job_id", message.job_id)
    token = lease_token(v, message.lease_token)
    lease = _lease(v, message, "lease_duration", default_lease)
    v.check()
    assert job is not None and token is not None
    return job, token, lease


# No sync runs for longer than this; a longer duration is not one a worker measured.
_MAX_SYNC_DURATION = timedelta(days=1)


def stored_sync_result(violations: Violations, field: str, value: pb.SyncResult) -> dict[str, Any]:
    """A typed SyncResult as the JSON result a worker stores: the keys of `SyncResult`, the
    duration as `duration_seconds`. Read field by field, without the generic Struct walk."""
    result: dict[str, Any] = {}
    for name in SYNC_RESULT_COUNTS:
        count = getattr(value, name)
        if count < 0:
            violations.add(f"{field}.{name}", f"is {count}; a count is never negative")
        result[name] = count
    duration = _duration(
        violations,
        f"{field}.duration",
        value.duration,
        minimum=timedelta(0),
        maximum=_MAX_SYNC_DURATION,
    )
    result["duration_seconds"] = round(duration.total_seconds(), 3) if duration else 0.0
    result["skipped_locations"] = [
        {"location_id": clean_text(s.location_id), "reason": clean_text(s.reason)}
        for s in value.skipped_locations
    ]
    result["resumed"] = value.resumed
    if result["skipped_locations"]:
        size = struct_json_size(result)
        if size > MAX_METADATA_BYTES:
            violations.add(
                field, f"is {size} bytes as JSON; at most {MAX_METADATA_BYTES} are allowed"
            )
    return result


def completion(message: pb.CompleteJobRequest, v: Violations | None = None) -> Completion | None:
    own = v is None
    v = v or Violations()
    job = _uuid(v, "job_id", message.job_id)
    token = lease_token(v, message.lease_token)
    if not message.HasField("sync_result"):
        result = _struct(v, "result", message.result)
    elif message.HasField("result"):
        v.add("sync_result", "give the result either as result or as sync_result, not both")
        result = {}
    else:
        result = stored_sync_result(v, "sync_result", message.sync_result)
    if own:
        v.check()
    if job is None or token is None:
        return None
    return Completion(job_id=job, lease_token=token, result=result)


def failure(message: pb.FailJobRequest, v: Violations | None = None) -> Failure | None:
    own = v is None
    v = v or Violations()
    job = _uuid(v, "job_id", message.job_id)
    token = lease_token(v, message.lease_token)
    if not message.error.strip():
        v.add("error", "is required: say what went wrong")
    elif len(message.error) > MAX_ERROR_INPUT:
        v.add("error", f"is {len(message.error)} characters; at most {MAX_ERROR_INPUT} are allowed")
    retry_after = None
    if _has(message, "retry_after"):
        retry_after = _duration(
            v, "retry_after", message.retry_after, minimum=timedelta(0), maximum=timedelta(days=1)
        )
    if own:
        v.check()
    if job is None or token is None:
        return None
    return Failure(
        job_id=job,
        lease_token=token,
        error=clean_text(message.error),
        permanent=message.permanent,
        retry_after=retry_after,
    )


def release_request(message: pb.ReleaseJobRequest, v: Violations | None = None) -> Release | None:
    own = v is None
    v = v or Violations()
    job = _uuid(v, "job_id", message.job_id)
    token = lease_token(v, message.lease_token)
    if len(message.reason) > MAX_ERROR_INPUT:
        v.add(
            "reason", f"is {len(message.reason)} characters; at most {MAX_ERROR_INPUT} are allowed"
        )
    delay = None
    if _has(message, "delay"):
        # The same bound as a failure's retry_after: a longer wait is an operator's decision.
        delay = _duration(
            v, "delay", message.delay, minimum=timedelta(0), maximum=MAX_RELEASE_DELAY
        )
    if own:
        v.check()
    if job is None or token is None:
        return None
    return Release(
        job_id=job, lease_token=token, reason=clean_text(message.reason.strip()), delay=delay
    )


def report_request(message: pb.ReportResultsRequest) -> list[Completion | Failure | Release]:
    v = Violations()
    if not message.results:
        v.add("results", "must hold at least one result")
    elif len(message.results) > MAX_BATCH:
        v.add("results", f"holds {len(message.results)} results; at most {MAX_BATCH} are allowed")
    v.check()
    parsed: list[Completion | Failure | Release] = []
    seen: set[uuid.UUID] = set()
    for index, item in enumerate(message.results):
        kind = item.WhichOneof("outcome")
        if kind is None:
            v.add(f"results[{index}]", "must set complete, fail or release")
            continue
        item_v = Violations(prefix=f"results[{index}].{kind}.")
        result: Completion | Failure | Release | None
        if kind == "complete":
            result = completion(item.complete, item_v)
        elif kind == "fail":
            result = failure(item.fail, item_v)
        else:
            result = release_request(item.release, item_v)
        v.found.extend(item_v.found)
        if result is not None:
            if result.job_id in seen:
                v.add(f"results[{index}].{kind}.job_id", "appears twice in one report")
            seen.add(result.job_id)
            parsed.append(result)
    v.check()
    return parsed


def page_size(value: int, field: str = "page_size") -> int:
    if value < 0 or value > MAX_PAGE_SIZE:
        raise InvalidArgument.field(field, f"must be between 1 and {MAX_PAGE_SIZE}, got {value}")
    return value or DEFAULT_PAGE_SIZE


def recent_limit(value: int, default: int, field: str = "recent_limit") -> int:
    if value < 0 or value > 100:
        raise InvalidArgument.field(field, f"must be between 0 and 100, got {value}")
    return value or default


def list_request(message: pb.ListJobsRequest) -> tuple[JobFilter, int, PageCursor | None]:
    v = Violations()
    status = None
    if message.status != pb.JOB_STATUS_UNSPECIFIED:
        status = JOB_STATUSES.get(message.status)
        if status is None:
            v.add("status", f"unknown job status {message.status}")
    account = _uuid(v, "account_id", message.account_id, required=False)
    user = _uuid(v, "user_id", message.user_id, required=False)
    size = v.attempt("page_size", lambda: page_size(message.page_size)) or DEFAULT_PAGE_SIZE
    job_filter = JobFilter(status=status, account_id=account, user_id=user)
    cursor = None
    if message.page_token:
        cursor = v.attempt("page_token", lambda: decode_page_token(message.page_token, job_filter))
    v.check()
    return job_filter, size, cursor


def _filter_fingerprint(job_filter: JobFilter) -> str:
    return "|".join(
        str(x or "") for x in (job_filter.status, job_filter.account_id, job_filter.user_id)
    )


def encode_page_token(cursor: PageCursor, job_filter: JobFilter) -> str:
    return page_tokens.encode_page_token(
        {
            "c": cursor.created_at.isoformat(),
            "i": str(cursor.job_id),
            "f": _filter_fingerprint(job_filter),
        }
    )


_NOT_OUR_TOKEN = "is not a token from a previous ListJobs response"


def decode_page_token(token: str, job_filter: JobFilter) -> PageCursor:
    payload = page_tokens.decode_page_token(token, _NOT_OUR_TOKEN)
    if not isinstance(payload, dict):
        raise InvalidArgument.field("page_token", _NOT_OUR_TOKEN)
    job, fingerprint = payload.get("i"), payload.get("f")
    if not isinstance(job, str) or not isinstance(fingerprint, str):
        raise InvalidArgument.field("page_token", _NOT_OUR_TOKEN)
    created_at = page_tokens.cursor_time(payload.get("c"), _NOT_OUR_TOKEN)
    try:
        job_id = uuid.UUID(job)
    except ValueError:
        raise InvalidArgument.field("page_token", _NOT_OUR_TOKEN) from None
    if fingerprint != _filter_fingerprint(job_filter):
        raise InvalidArgument.field(
            "page_token", "belongs to a listing with other filters; keep the filters of page one"
        )
    return PageCursor(created_at=created_at, job_id=job_id)


def stale_threshold(message: pb.MarkStaleJobsRequest, default: timedelta) -> timedelta:
    if not _has(message, "threshold"):
        return default
    v = Violations()
    value = _duration(v, "threshold", message.threshold, minimum=STALE_MIN, maximum=STALE_MAX)
    v.check()
    assert value is not None
    return value


def start_run_request(message: pb.StartWorkerRunRequest) -> tuple[str, dict[str, Any]]:
    v = Violations()
    worker = _worker_id(v, "worker_id", message.worker_id)
    meta = _struct(v, "metadata", message.metadata)
    v.check()
    return worker, meta


def finish_run_request(
    message: pb.FinishWorkerRunRequest,
) -> tuple[uuid.UUID, WorkerRunStatus, str | None, dict[str, Any]]:
    v = Violations()
    run = _uuid(v, "run_id", message.run_id)
    status = FINISHED_RUN_STATUSES.get(message.status)
    if status is None:
        v.add("status", "must be WORKER_RUN_STATUS_COMPLETED or WORKER_RUN_STATUS_FAILED")
    if len(message.notes) > MAX_ERROR_INPUT:
        v.add("notes", f"is {len(message.notes)} characters; at most {MAX_ERROR_INPUT} are allowed")
    meta = _struct(v, "metadata", message.metadata)
    v.check()
    assert run is not None and status is not None
    return run, status, clean_text(message.notes) or None, meta


def schedule_get_request(message: pb.GetSyncScheduleRequest) -> uuid.UUID:
    return job_id(message, "account_id")


def _interval(v: Violations, message: Any, field: str) -> timedelta | None:
    """An interval override: None if unset, DEFAULT_INTERVAL for zero (back to the default)."""
    if not _has(message, field):
        return None
    value = getattr(message, field)
    if value.seconds == 0 and value.nanos == 0:
        return DEFAULT_INTERVAL
    if value.nanos != 0:
        v.add(field, "must be a whole number of seconds")
        return None
    if not INTERVAL_MIN.total_seconds() <= value.seconds <= INTERVAL_MAX.total_seconds():
        v.add(
            field,
            f"must be between {INTERVAL_MIN.total_seconds():.0f}s (1 minute) and "
            f"{INTERVAL_MAX.total_seconds():.0f}s (30 days), or 0s for the service default; "
            f"got {value.seconds}s",
        )
        return None
    return value.ToTimedelta()


def schedule_set_request(message: pb.SetSyncScheduleRequest) -> tuple[uuid.UUID, ScheduleChange]:
    v = Violations()
    account_id = _uuid(v, "account_id", message.account_id)
    incremental = _interval(v, message, "incremental_interval")
    full = _interval(v, message, "full_interval")
    v.check()
    assert account_id is not None
    return account_id, ScheduleChange(
        incremental_interval=incremental,
        full_interval=full,
        enabled=message.enabled if message.HasField("enabled") else None,
    )


def pause_request(
    message: pb.PauseQueueRequest | pb.ResumeQueueRequest,
) -> tuple[uuid.UUID | None, str]:
    """The user a pause or resume is for (None: the whole queue) and its reason."""
    v = Violations()
    user = _uuid(v, "user_id", message.user_id, required=False)
    if user is not None and user.int == 0:
        v.add("user_id", "the nil UUID is no user; leave user_id empty for the whole queue")
    reason = message.reason.strip()
    if len(reason) > MAX_PAUSE_REASON:
        v.add("reason", f"is {len(reason)} characters; at most {MAX_PAUSE_REASON} are allowed")
    elif not reason.isprintable():
        v.add("reason", "must be printable text (no control characters)")
    v.check()
    return user, reason
