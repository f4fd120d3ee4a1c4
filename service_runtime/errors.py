"""Rich gRPC errors: one place that turns a failure into a status a person can act on.

Field errors travel as `google.rpc.BadRequest` details (`grpc-status-details-bin`), so clients
and grpcurl see which field is wrong; the message repeats it for people reading logs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class InvalidArgument(Exception):
    """The request has one or more bad fields."""

    def __init__(self, violations: Iterable[FieldViolation]) -> None:
        self.violations = list(violations)
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])


@dataclass(frozen=True)
class ErrorInfo:
    """A `google.rpc.ErrorInfo`: a machine-readable reason a client can act on."""

    reason: str
    domain: str
    metadata: Mapping[str, str] = field(default_factory=dict)


def rich_status(
    code: grpc.StatusCode,
    message: str,
    *,
    violations: Iterable[FieldViolation] = (),
    retry_delay_seconds: float | None = None,
    error_info: ErrorInfo | None = None,
) -> grpc.Status:
    """A grpc.Status carrying google.rpc details (BadRequest, RetryInfo, ErrorInfo) in its
    trailers."""
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
    if error_info is not None:
        packed = any_pb2.Any()
        packed.Pack(
            error_details_pb2.ErrorInfo(
                reason=error_info.reason,
                domain=error_info.domain,
                metadata=dict(error_info.metadata),
            )
        )
        details.append(packed)
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    return rpc_status.to_status(status)


async def abort(
    context: grpc.aio.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    *,
    violations: Iterable[FieldViolation] = (),
    retry_delay_seconds: float | None = None,
    error_info: ErrorInfo | None = None,
) -> None:
    """Ends the RPC with a rich status. Never returns."""
    await context.abort_with_status(
        rich_status(
            code,
            message,
            violations=violations,
            retry_delay_seconds=retry_delay_seconds,
            error_info=error_info,
        )
    )


def field_violations(error: grpc.aio.AioRpcError | grpc.RpcError) -> list[FieldViolation]:
    """The BadRequest field violations a server sent with an error (client side)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
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
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta().total_seconds()
    return None


__all__ = [
    "FieldViolation",
    "InvalidArgument",
    "abort",
    "field_violations",
    "retry_delay",
    "rich_status",
]
