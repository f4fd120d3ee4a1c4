"""The small exception hierarchy of the clients, translated once from `grpc.aio.AioRpcError`.

Callers of QueueClient and SyncClient catch these instead of inspecting gRPC status codes:
`ClientError` is the base; `retryable` says whether trying again later may succeed; the rich
`google.rpc` details a server sent (field violations, a retry delay, an ErrorInfo reason with its
metadata) are carried as attributes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc

from service_runtime.errors import (
    ErrorInfo,
    FieldViolation,
    error_info,
    field_violations,
    retry_delay,
)

# The trailer in which servers send a rich google.rpc.Status.
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class ClientError(Exception):
    """A call to a gmbsync service failed."""

    #: Whether the same call may succeed if tried again later.
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        method: str = "",
        retry_delay: float | None = None,
        violations: Sequence[FieldViolation] = (),
        server_details: bool = False,
        reason: str | None = None,
        error_domain: str | None = None,
        error_metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.message = message
        self.code = code
        self.method = method
        #: The delay in seconds the server asked for (google.rpc.RetryInfo), if any.
        self.retry_delay = retry_delay
        #: The bad fields the server named (google.rpc.BadRequest), if any.
        self.violations = list(violations)
        #: True when the server sent a rich status: the error came from the service's own code,
        #: not from the transport (connection refused, reset, or a proxy in between).
        self.server_details = server_details
        #: The machine-readable reason the server gave (google.rpc.ErrorInfo.reason), if any:
        #: branch on this, never on the message text.
        self.reason = reason
        #: The domain `reason` belongs to (ErrorInfo.domain), e.g. "gmbsync.sync.v1".
        self.error_domain = error_domain
        #: ErrorInfo's metadata: facts about the reason (e.g. `activation_url`); empty if none.
        self.error_metadata: dict[str, str] = dict(error_metadata or {})
        prefix = f"{method}: " if method else ""
        super().__init__(f"{prefix}{code.name}: {message}")


class InvalidArgument(ClientError):
    """The request has bad fields; `violations` names them."""


class NotFound(ClientError):
    """The job or account does not exist, or the caller may not see it."""


class AlreadyExists(ClientError):
    """The resource exists already."""


class PermissionDenied(ClientError):
    """The caller's role may not make this call."""


class Unauthenticated(ClientError):
    """The call carried no credentials, or credentials that are not valid."""


class FailedPrecondition(ClientError):
    """The system is not in a state that allows the call (a finished job, a revoked grant)."""


class LeaseLost(FailedPrecondition):
    """The worker no longer holds the job's lease: it expired or another worker took the job."""


class Unavailable(ClientError):
    """The service could not be reached or cannot serve right now; try again later."""

    retryable = True

    @property
    def infrastructure(self) -> bool:
        """True unless the service's own code chose this answer (a rich status, e.g. RetryInfo).

        A refused or reset connection, a proxy's answer, or a server whose database is down all
        come without details: the service itself is in trouble, not the one request.
        """
        return not self.server_details


class ResourceExhausted(ClientError):
    """A quota or rate limit was hit; `retry_delay` says when to try again."""

    retryable = True


class DeadlineExceeded(ClientError):
    """The call did not finish within its deadline; it may or may not have taken effect."""

    retryable = True


class JobWaitTimeout(DeadlineExceeded):
    """`wait_for_job` gave up: the job did not finish in time. `job` is its last state seen."""

    def __init__(self, message: str, *, job: object = None, method: str = "") -> None:
        super().__init__(message, code=grpc.StatusCode.DEADLINE_EXCEEDED, method=method)
        #: The job as last seen (a gmbsync.queue.v1.Job), or None if none was read.
        self.job = job


class Aborted(ClientError):
    """The call was aborted by a conflict; trying again may succeed."""

    retryable = True


class Cancelled(ClientError):
    """The call was cancelled."""


class Internal(ClientError):
    """The service failed unexpectedly (it logged an incident id)."""


class Unimplemented(ClientError):
    """The service does not implement this call (an older server?)."""


_BY_CODE: dict[grpc.StatusCode, type[ClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.DATA_LOSS: Internal,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
}


def _has_status_details(error: grpc.aio.AioRpcError) -> bool:
    metadata = error.trailing_metadata() or ()
    return any(key == _STATUS_DETAILS_KEY for key, _ in metadata)


def translate(error: grpc.aio.AioRpcError, *, method: str = "", lease: bool = False) -> ClientError:
    """The ClientError for a failed call. `lease` marks calls that need a held lease."""
    code = error.code()
    message = error.details() or ""
    info: ErrorInfo | None
    try:
        delay = retry_delay(error)
        violations = field_violations(error)
        info = error_info(error)
    except ValueError:
        # A status-details trailer whose code disagrees with the call's: ignore the details.
        delay, violations, info = None, [], None
    cls = _BY_CODE.get(code, ClientError)
    if lease and code == grpc.StatusCode.FAILED_PRECONDITION:
        cls = LeaseLost
    return cls(
        message,
        code=code,
        method=method,
        retry_delay=delay,
        violations=violations,
        server_details=_has_status_details(error),
        reason=info.reason if info else None,
        error_domain=info.domain if info else None,
        error_metadata=info.metadata if info else None,
    )


__all__ = [
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "ClientError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "JobWaitTimeout",
    "LeaseLost",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "translate",
]
