"""Domain errors of the queue. The servicer maps each class to one gRPC status code.

Each class's docstring is its default message, as in procrastinate's exceptions module.
"""

from __future__ import annotations


class QueueError(Exception):
    """The queue refused the operation."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class JobNotFound(QueueError):
    """No such job."""


class AccountNotFound(QueueError):
    """No such account."""


class WorkerRunNotFound(QueueError):
    """No such worker run."""


class AccountInactive(QueueError):
    """The account is deactivated: reconnect it before syncing."""


class LeaseLost(QueueError):
    """The lease on this job is no longer held: it expired and the job was recovered."""


class LeaseExpired(LeaseLost):
    """The lease on this job ran out: its holder may no longer extend it or report on the job."""


class IllegalTransition(QueueError):
    """The job is not in a state that allows this operation."""


class ActiveJobExists(QueueError):
    """The account already has a pending or processing job."""
