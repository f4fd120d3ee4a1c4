"""Rich gRPC errors: one place that turns a failure into a status a person can act on.

Field errors travel as `google.rpc.BadRequest` details (`grpc-status-details-bin`), so clients
and grpcurl see which field is wrong; the message repeats it for people reading logs.
`google.rpc.RetryInfo` says when to try again, and `google.rpc.ErrorInfo` says why, as a stable
machine-readable `reason` in a `domain` with string `metadata`: programs branch on the reason,
never on the message text.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import cast

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


#: The ErrorInfo domain of SyncService's own reasons.
SYNC_ERROR_DOMAIN = "gmbsync.sync.v1"


class ErrorReason(enum.StrEnum):
    """ErrorInfo reasons of SyncService's "come back later" answers (domain SYNC_ERROR_DOMAIN).

    Each comes with a RetryInfo delay; none is a failure of the sync's own making, so a worker
    hands the job back without spending an attempt.
    """

    #: RESOURCE_EXHAUSTED: Google's quota (or SyncService's shared quota) has no room before the
    #: call's deadline. Metadata: `api`.
    GOOGLE_QUOTA = "GOOGLE_QUOTA"
    #: ABORTED: the sync made progress but ran out of time; its checkpoint is stored and the next
    #: attempt resumes. Metadata: `locations_done`, `locations_total`.
    SYNC_INCOMPLETE = "SYNC_INCOMPLETE"
    #: UNAVAILABLE: Google says the API is disabled for the whole Cloud project, so every account
    #: fails the same way. Metadata: `service`, `activation_url`.
    GOOGLE_API_DISABLED = "GOOGLE_API_DISABLED"


#: The ErrorInfo domain of answers the shared serving runtime gives for either service.
SERVICE_ERROR_DOMAIN = "gmbsync.service.v1"


class ServiceReason(enum.StrEnum):
    """ErrorInfo reasons (domain SERVICE_ERROR_DOMAIN) of a service's transient trouble with its
    own database, the same for QueueService and SyncService.

    Both come as UNAVAILABLE with a RetryInfo delay: the request was not served, the service is
    up, and the same request is worth sending again after the delay.
    """

    #: The database could not be reached, or the connection to it was lost (a restart, a
    #: failover, a network blip).
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    #: Every database connection of this server stayed busy for the pool's timeout: the
    #: server is overloaded for the moment.
    DATABASE_BUSY = "DATABASE_BUSY"


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A google.rpc.ErrorInfo: why a call failed, for programs."""

    reason: str
    domain: str = SYNC_ERROR_DOMAIN
    metadata: Mapping[str, str] = field(default_factory=dict)


class InvalidArgument(Exception):
    """The request has one or more bad fields."""

    def __init__(self, violations: Iterable[FieldViolation]) -> None:
        self.violations = list(violations)
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])


def rich_status(
    code: grpc.StatusCode,
    message: str,
    *,
    violations: Iterable[FieldViolation] = (),
    retry_delay_seconds: float | None = None,
    reason: str | None = None,
    domain: str = SYNC_ERROR_DOMAIN,
    error_metadata: Mapping[str, object] | None = None,
) -> grpc.Status:
    """A grpc.Status carrying google.rpc details in its trailers.

    BadRequest when there are `violations`; RetryInfo when `retry_delay_seconds` is given;
    ErrorInfo(`reason`, `domain`, `error_metadata`) when `reason` is given. Metadata values are
    sent as strings (ErrorInfo's map is string to string), so `{"locations_done": 120}` works.
    """
    details: list[any_pb2.Any] = []
    violations = list(violations)
    if violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        details.append(packed)
    if retry_delay_seconds is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_delay_seconds * 1e9))
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(packed)
    if reason is not None:
        packed = any_pb2.Any()
        packed.Pack(
            error_details_pb2.ErrorInfo(
                reason=str(reason),
                domain=domain,
                metadata={str(k): str(v) for k, v in (error_metadata or {}).items()},
            )
        )
        details.append(packed)
    elif error_metadata:
        raise ValueError("error_metadata needs a reason: ErrorInfo is sent only with one")
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    return rpc_status.to_status(status)


async def abort(
    context: grpc.aio.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    *,
    violations: Iterable[FieldViolation] = (),
    retry_delay_seconds: float | None = None,
    reason: str | None = None,
    domain: str = SYNC_ERROR_DOMAIN,
    error_metadata: Mapping[str, object] | None = None,
) -> None:
    """Ends the RPC with a rich status (see `rich_status` for the details). Never returns.

    For instance a sync out of time: code ABORTED, `retry_delay_seconds=1`,
    `reason=ErrorReason.SYNC_INCOMPLETE`, `error_metadata={"locations_done": 120, ...}`.
    """
    await context.abort_with_status(
        rich_status(
            code,
            message,
            violations=violations,
            retry_delay_seconds=retry_delay_seconds,
            reason=reason,
            domain=domain,
            error_metadata=error_metadata,
        )
    )


def _status_of(error: grpc.aio.AioRpcError | grpc.RpcError) -> status_pb2.Status | None:
    """The google.rpc.Status a server sent with an error, if any (client side)."""
    # from_call reads only code(), details() and trailing_metadata(): an AioRpcError has them,
    # as does the grpc.Call that a synchronous call raises; its stubs ask for a grpc.Call.
    return rpc_status.from_call(cast(grpc.Call, error))


def field_violations(error: grpc.aio.AioRpcError | grpc.RpcError) -> list[FieldViolation]:
    """The BadRequest field violations a server sent with an error (client side)."""
    status = _status_of(error)
    if status is None:
        return []
    found: list[FieldViolation] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            found.extend(
                FieldViolation(v.field, v.description) for v in bad_request.field_violations
            )
    return found


def retry_delay(error: grpc.aio.AioRpcError | grpc.RpcError) -> float | None:
    """The RetryInfo delay in seconds a server sent with an error, if any (client side)."""
    status = _status_of(error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta().total_seconds()
    return None


def error_info(error: grpc.aio.AioRpcError | grpc.RpcError) -> ErrorInfo | None:
    """The ErrorInfo a server sent with an error, if any (client side)."""
    status = _status_of(error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return ErrorInfo(reason=info.reason, domain=info.domain, metadata=dict(info.metadata))
    return None


__all__ = [
    "SERVICE_ERROR_DOMAIN",
    "SYNC_ERROR_DOMAIN",
    "ErrorInfo",
    "ErrorReason",
    "FieldViolation",
    "InvalidArgument",
    "ServiceReason",
    "abort",
    "error_info",
    "field_violations",
    "retry_delay",
    "rich_status",
]
