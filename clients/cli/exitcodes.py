"""The exit codes of `gmbsync`, which scripts may rely on (docs/cli.md lists them)."""

from __future__ import annotations

import enum

from clients import errors


class ExitCode(enum.IntEnum):
    OK = 0
    #: The server refused the request: not found, bad input, a state that does not allow it.
    REFUSED = 1
    #: The command line is wrong, or a setting it needs is missing (argparse also exits 2).
    USAGE = 2
    #: The service could not be reached or did not answer in time: trying again may work.
    UNAVAILABLE = 3
    #: No valid credentials, or a role that may not make the call.
    AUTH = 4
    #: `--wait` / `jobs wait`: the job finished, but failed or was cancelled.
    JOB_UNSUCCESSFUL = 5
    #: `diagnostics --check`: the queue has active alerts.
    ALERTS = 6
    #: Something failed unexpectedly: the service (INTERNAL, UNKNOWN, DATA_LOSS) or the CLI.
    INTERNAL = 7
    #: Interrupted by Ctrl-C (128 + SIGINT, as shells report it).
    INTERRUPTED = 130


_BY_ERROR: tuple[tuple[type[errors.ClientError], ExitCode], ...] = (
    (errors.Unavailable, ExitCode.UNAVAILABLE),
    (errors.DeadlineExceeded, ExitCode.UNAVAILABLE),
    (errors.ResourceExhausted, ExitCode.UNAVAILABLE),
    (errors.Aborted, ExitCode.UNAVAILABLE),
    (errors.Unauthenticated, ExitCode.AUTH),
    (errors.PermissionDenied, ExitCode.AUTH),
    (errors.InvalidArgument, ExitCode.REFUSED),
    (errors.NotFound, ExitCode.REFUSED),
    (errors.AlreadyExists, ExitCode.REFUSED),
    (errors.FailedPrecondition, ExitCode.REFUSED),
    (errors.Unimplemented, ExitCode.REFUSED),
)


def exit_code_of(error: errors.ClientError) -> ExitCode:
    for kind, code in _BY_ERROR:
        if isinstance(error, kind):
            return code
    return ExitCode.INTERNAL
