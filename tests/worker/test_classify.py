"""What a SyncService error means for the job and for the circuit breaker."""

from __future__ import annotations

import grpc
import pytest

from clients import errors
from clients.worker.job import Verdict, classify


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
