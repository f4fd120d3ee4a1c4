"""`gmbsync enqueue`: sync one account, or many from a file or stdin (one account id a line).

Many accounts go in batches of EnqueueSyncBatch (one transaction each) behind a progress bar on
stderr. Every id is checked before anything is sent, so a typo in line 900 enqueues nothing.
`--wait` waits for a single account's job to finish (exit 0 succeeded, 5 failed or cancelled).
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from rich.progress import Progress

from clients import errors
from clients.cli.context import AddCommon, Context, UsageError
from clients.cli.exitcodes import ExitCode
from clients.cli.output import message_dict
from clients.cli.render import job_detail, jobs_table
from gmbsync.queue.v1 import queue_service_pb2 as pb
from service_runtime.config import ConfigError, parse_duration

# Items per EnqueueSyncBatch call (the server takes up to 1,000).
BATCH_SIZE = 200


def register(groups: argparse._SubParsersAction, add_common: AddCommon) -> None:
    parser = groups.add_parser(
        "enqueue",
        help="enqueue syncs of one or many accounts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(parser)
    parser.add_argument("accounts", metavar="ACCOUNT_ID", nargs="*", help="account UUIDs")
    parser.add_argument(
        "--file",
        "-f",
        metavar="PATH",
        help="read account ids from this file, one a line ('-' for stdin; '#' starts a comment)",
    )
    parser.add_argument(
        "--type",
        dest="sync_type",
        choices=("incremental", "full"),
        default="incremental",
        help="how much to sync (default incremental)",
    )
    parser.add_argument(
        "--full", dest="sync_type", action="store_const", const="full", help="same as --type full"
    )
    parser.add_argument(
        "--priority", type=int, default=0, help="-100..100, higher first (default 0)"
    )
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--at", metavar="TIME", help="not before this ISO 8601 time (UTC if no zone)")
    when.add_argument(
        "--in", dest="delay", metavar="DURATION", help="not before this long from now (10m, 2h)"
    )
    parser.add_argument(
        "--max-attempts", type=int, default=0, help="1..25 (default the server's, 3)"
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="wait for the job to finish (one account only); see --wait-timeout",
    )
    parser.add_argument(
        "--wait-timeout", type=float, default=600.0, metavar="SECONDS", help="default 600"
    )
    parser.set_defaults(run=enqueue)


def read_accounts(context: Context) -> list[str]:
    """The account ids of the command line and of --file, each checked to be a UUID."""
    sources: list[tuple[str, str]] = [
        (f"argument {i + 1}", a) for i, a in enumerate(context.args.accounts)
    ]
    if context.args.file:
        sources.extend(_lines(context.args.file))
    if not sources:
        raise UsageError("name an account id, or --file PATH (- for stdin)")
    accounts = []
    for where, text in sources:
        try:
            accounts.append(str(uuid.UUID(text)))
        except ValueError:
            raise UsageError(f"{where}: {text!r} is not an account id (a UUID)") from None
    return accounts


def _lines(path: str) -> Iterable[tuple[str, str]]:
    name = "stdin" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"--file {path}: {exc.strerror}") from None
    for number, line in enumerate(text.splitlines(), 1):
        value = line.split("#", 1)[0].strip()
        if value:
            yield f"{name} line {number}", value


def scheduled_at(context: Context) -> datetime | None:
    args = context.args
    if args.at:
        try:
            moment = datetime.fromisoformat(args.at)
        except ValueError:
            raise UsageError(f"--at: {args.at!r} is not an ISO 8601 time") from None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if args.delay:
        try:
            return datetime.now(UTC) + parse_duration("--in", args.delay)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
    return None


def enqueue(context: Context) -> int:
    args = context.args
    accounts = read_accounts(context)
    if args.wait and len(accounts) != 1:
        raise UsageError("--wait waits for one account's job; name exactly one")
    start = scheduled_at(context)
    queue = context.queue()
    if len(accounts) == 1:
        answers = [
            queue.enqueue_sync(
                accounts[0],
                args.sync_type,
                priority=args.priority,
                scheduled_at=start,
                max_attempts=args.max_attempts,
            )
        ]
    else:
        answers = enqueue_many(context, accounts, start)
    if args.wait:
        job = queue.wait_for_job(answers[0].job.id, timeout=args.wait_timeout)
        context.out.emit(
            {"results": [message_dict(answers[0])], "job": message_dict(job)},
            lambda: job_detail(context.out, job),
        )
        return ExitCode.OK if job.status == pb.JOB_STATUS_SUCCEEDED else ExitCode.JOB_UNSUCCESSFUL
    duplicates = sum(1 for a in answers if a.duplicate)
    context.out.emit(
        {
            "results": [message_dict(a) for a in answers],
            "enqueued": len(answers) - duplicates,
            "duplicates": duplicates,
        },
        lambda: render(context, answers, duplicates),
    )
    return ExitCode.OK


def render(context: Context, answers: list[pb.EnqueueSyncResponse], duplicates: int) -> None:
    jobs_table(context.out, (a.job for a in answers))
    context.out.line(
        f"{len(answers) - duplicates} enqueued, {duplicates} already queued (duplicates)"
    )


def enqueue_many(
    context: Context, accounts: list[str], start: datetime | None
) -> list[pb.EnqueueSyncResponse]:
    args = context.args
    queue = context.queue()
    items = [
        pb.EnqueueSyncRequest(
            account_id=account,
            sync_type=pb.SYNC_TYPE_FULL if args.sync_type == "full" else pb.SYNC_TYPE_INCREMENTAL,
            priority=args.priority,
            max_attempts=args.max_attempts,
        )
        for account in accounts
    ]
    if start is not None:
        for item in items:
            item.scheduled_at.FromDatetime(start)
    answers: list[pb.EnqueueSyncResponse] = []
    with Progress(
        console=context.out.stderr, transient=True, disable=not context.out.stderr.is_terminal
    ) as bar:
        task = bar.add_task("enqueueing", total=len(items))
        for first in range(0, len(items), BATCH_SIZE):
            try:
                answers.extend(queue.enqueue_sync_batch(items[first : first + BATCH_SIZE]))
            except errors.ClientError:
                if answers:
                    # Earlier batches are committed: say so, and where `items[i]` counts from.
                    context.out.note(
                        f"the first {len(answers)} of {len(items)} accounts were enqueued; the "
                        f"batch from account {first + 1} on (items[0]) was refused as a whole"
                    )
                raise
            bar.update(task, advance=len(items[first : first + BATCH_SIZE]))
    return answers
