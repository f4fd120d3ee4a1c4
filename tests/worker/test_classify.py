"""What a SyncService error means for the job and for the circuit breaker."""

from __future__ import annotations

import grpc
import pytest

from clients import errors
from clients.worker.job import MAX_DEFER_SECONDS, Deferral, Verdict, classify, deferral
from service_runtime.errors import (
    SERVICE_ERROR_DOMAIN,
    SYNC_ERROR_DOMAIN,
    ErrorReason,
    ServiceReason,
)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            errors.FailedPrecondition("reconnect", code=grpc.StatusCode.FAILED_PRECONDITION),
            Verdict(permanent=True, infrastructure=False, retry_after=None),
        ),
        (
            errors.NotFound("no account", code=grpc.StatusCode.NOT_FOUND),
            Verdict(permanent=True, infrastructure=False, retry_after=None),
        ),
        (
            errors.InvalidArgument("bad", code=grpc.StatusCode.INVALID_ARGUMENT),
            Verdict(permanent=True, infrastructure=False, retry_after=None),
        ),
        (
            errors.ResourceExhausted(
                "quota", code=grpc.StatusCode.RESOURCE_EXHAUSTED, retry_delay=90.0
            ),
            Verdict(permanent=False, infrastructure=False, retry_after=90.0),
        ),
        (
            errors.Unavailable(
                "google 503",
                code=grpc.StatusCode.UNAVAILABLE,
                retry_delay=5.0,
                server_details=True,
            ),
            Verdict(permanent=False, infrastructure=False, retry_after=5.0),
        ),
        (
            errors.Unavailable("connection refused", code=grpc.StatusCode.UNAVAILABLE),
            Verdict(permanent=False, infrastructure=True, retry_after=None),
        ),
        (
            errors.DeadlineExceeded("slow", code=grpc.StatusCode.DEADLINE_EXCEEDED),
            Verdict(permanent=False, infrastructure=True, retry_after=None),
        ),
        (
            errors.DeadlineExceeded(
                "google too slow", code=grpc.StatusCode.DEADLINE_EXCEEDED, server_details=True
            ),
            Verdict(permanent=False, infrastructure=False, retry_after=None),
        ),
        (
            errors.Unauthenticated("bad secret", code=grpc.StatusCode.UNAUTHENTICATED),
            Verdict(permanent=False, infrastructure=True, retry_after=None),
        ),
        (
            errors.Internal("bug", code=grpc.StatusCode.INTERNAL),
            Verdict(permanent=False, infrastructure=False, retry_after=None),
        ),
    ],
)
def test_classify(error: errors.ClientError, expected: Verdict) -> None:
    assert classify(error) == expected


def rich(
    cls: type[errors.ClientError],
    code: grpc.StatusCode,
    reason: str | None,
    *,
    delay: float | None = 10.0,
    domain: str | None = SYNC_ERROR_DOMAIN,
    server_details: bool = True,
) -> errors.ClientError:
    return cls(
        "come back later",
        code=code,
        retry_delay=delay,
        server_details=server_details,
        reason=reason,
        error_domain=domain if reason else None,
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            rich(errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, "GOOGLE_QUOTA"),
            Deferral(ErrorReason.GOOGLE_QUOTA, 10.0, hold_dispatch=False),
        ),
        (
            rich(errors.Aborted, grpc.StatusCode.ABORTED, "SYNC_INCOMPLETE", delay=1.0),
            Deferral(ErrorReason.SYNC_INCOMPLETE, 1.0, hold_dispatch=False),
        ),
        (
            rich(errors.Unavailable, grpc.StatusCode.UNAVAILABLE, "GOOGLE_API_DISABLED"),
            Deferral(ErrorReason.GOOGLE_API_DISABLED, 10.0, hold_dispatch=True),
        ),
        # No RetryInfo: a default delay per reason.
        (
            rich(
                errors.ResourceExhausted,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "GOOGLE_QUOTA",
                delay=None,
            ),
            Deferral(ErrorReason.GOOGLE_QUOTA, 60.0, hold_dispatch=False),
        ),
        (
            rich(
                errors.Unavailable, grpc.StatusCode.UNAVAILABLE, "GOOGLE_API_DISABLED", delay=None
            ),
            Deferral(ErrorReason.GOOGLE_API_DISABLED, 300.0, hold_dispatch=True),
        ),
        # SyncService's database blipped (the serving runtime's answer, in its own domain).
        (
            rich(
                errors.Unavailable,
                grpc.StatusCode.UNAVAILABLE,
                "DATABASE_UNAVAILABLE",
                delay=0.5,
                domain=SERVICE_ERROR_DOMAIN,
            ),
            Deferral(ServiceReason.DATABASE_UNAVAILABLE, 0.5, hold_dispatch=False),
        ),
        (
            rich(
                errors.Unavailable,
                grpc.StatusCode.UNAVAILABLE,
                "DATABASE_BUSY",
                delay=None,
                domain=SERVICE_ERROR_DOMAIN,
            ),
            Deferral(ServiceReason.DATABASE_BUSY, 1.0, hold_dispatch=False),
        ),
        # More than QueueService accepts: a day.
        (
            rich(errors.Aborted, grpc.StatusCode.ABORTED, "SYNC_INCOMPLETE", delay=10 * 86400.0),
            Deferral(ErrorReason.SYNC_INCOMPLETE, MAX_DEFER_SECONDS, hold_dispatch=False),
        ),
    ],
)
def test_deferral_of_come_back_later_answers(error: errors.ClientError, expected: Deferral) -> None:
    assert deferral(error) == expected


@pytest.mark.parametrize(
    "error",
    [
        # A reason under a code it does not go with.
        rich(errors.Unavailable, grpc.StatusCode.UNAVAILABLE, "GOOGLE_QUOTA"),
        rich(errors.Internal, grpc.StatusCode.INTERNAL, "SYNC_INCOMPLETE"),
        # Another domain's reason of the same name.
        rich(
            errors.ResourceExhausted,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "GOOGLE_QUOTA",
            domain="googleapis.com",
        ),
        # A database reason in SyncService's own domain, or under another code.
        rich(errors.Unavailable, grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE"),
        rich(
            errors.Internal,
            grpc.StatusCode.INTERNAL,
            "DATABASE_UNAVAILABLE",
            domain=SERVICE_ERROR_DOMAIN,
        ),
        # An unknown reason, and none at all.
        rich(errors.Unavailable, grpc.StatusCode.UNAVAILABLE, "SOMETHING_NEW"),
        rich(errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, None),
        # No rich status: the transport's error.
        rich(
            errors.Unavailable,
            grpc.StatusCode.UNAVAILABLE,
            "GOOGLE_API_DISABLED",
            server_details=False,
        ),
    ],
)
def test_other_errors_are_not_deferrals(error: errors.ClientError) -> None:
    assert deferral(error) is None
