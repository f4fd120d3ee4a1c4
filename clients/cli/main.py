"""The `gmbsync` console script: parse, run one command, map its outcome to an exit code."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Mapping, Sequence
from typing import IO

from clients import errors
from clients.cli import commands
from clients.cli.context import Context, UsageError, add_connection_options
from clients.cli.exitcodes import ExitCode, exit_code_of
from clients.cli.output import Output

DESCRIPTION = """\
Operate gmb-sync-queue: enqueue syncs, inspect and steer jobs, read diagnostics, manage
accounts and schedules, mint development tokens. Tables by default, JSON with --json.

exit codes: 0 ok, 1 the server refused (not found, bad input, wrong state), 2 usage,
3 unavailable or timed out (try again), 4 not authenticated or not allowed,
5 a waited-for job failed or was cancelled, 6 diagnostics --check found alerts,
7 an unexpected failure (the server's or the CLI's), 130 interrupted.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gmbsync",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_connection_options(parser)
    groups = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in commands.MODULES:
        module.register(groups, add_connection_options)
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Runs one command and returns its exit code; never raises."""
    parser = build_parser()
    try:
        # argparse prints help and usage errors itself, to sys.stdout / sys.stderr.
        with (
            contextlib.redirect_stdout(stdout or sys.stdout),
            contextlib.redirect_stderr(stderr or sys.stderr),
        ):
            args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2)
        return exit_.code if isinstance(exit_.code, int) else ExitCode.USAGE
    out = Output(json_mode=bool(getattr(args, "json", False)), stdout=stdout, stderr=stderr)
    context = Context(args, out) if environ is None else Context(args, out, dict(environ))
    try:
        return int(args.run(context))
    except UsageError as exc:
        out.error(str(exc))
        return ExitCode.USAGE
    except errors.ClientError as exc:
        out.error(describe(exc))
        return exit_code_of(exc)
    except KeyboardInterrupt:
        out.error("interrupted")
        return ExitCode.INTERRUPTED
    except Exception as exc:
        # A defect of the CLI itself: still one line, the traceback only when asked for.
        if context.environ.get("GMBSYNC_DEBUG"):
            raise
        out.error(f"unexpected {type(exc).__name__}: {exc} (GMBSYNC_DEBUG=1 shows where)")
        return ExitCode.INTERNAL
    finally:
        context.close()


def describe(error: errors.ClientError) -> str:
    """One line for a failed call: the method, what the server said, the fields it named."""
    text = str(error)
    named = [v for v in error.violations if v.field not in text]
    if named:
        text += " (" + "; ".join(f"{v.field}: {v.description}" for v in named) + ")"
    if isinstance(error, errors.Unavailable) and error.infrastructure:
        text += " - is the service running at that address?"
    return text


def entry_point() -> None:
    """The console script's entry point."""
    sys.exit(main())
