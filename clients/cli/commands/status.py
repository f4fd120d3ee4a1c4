"""`gmbsync status`: the queue's counts and most recent jobs; with --account, that account's
sync status from SyncService (last sync, failures, locations and reviews)."""

from __future__ import annotations

import argparse

from clients.cli.context import AddCommon, Context
from clients.cli.exitcodes import ExitCode
from clients.cli.output import enum_label, message_dict, when
from clients.cli.render import jobs_table
from clients.sync import SyncType


def register(groups: argparse._SubParsersAction, add_common: AddCommon) -> None:
    parser = groups.add_parser("status", help="queue counts and recent jobs", description=__doc__)
    add_common(parser)
    parser.add_argument(
        "--recent", type=int, default=10, help="recent jobs to show, 0..100 (default 10)"
    )
    parser.add_argument("--account", metavar="UUID", help="show this account's sync status instead")
    parser.set_defaults(run=status)


def status(context: Context) -> int:
    if context.args.account:
        return account_status(context)
    # recent_limit 0 means the server's default: ask for one job and drop it instead.
    recent = context.args.recent
    answer = context.queue().get_queue_status(recent_limit=recent or 1)
    jobs = list(answer.jobs)[:recent]
    data = message_dict(answer)
    data["jobs"] = data["jobs"][:recent]

    def render() -> None:
        stats = answer.stats
        context.out.table(
            ("pending", "processing", "succeeded", "failed", "cancelled", "total"),
            [
                (
                    stats.pending,
                    stats.processing,
                    stats.succeeded,
                    stats.failed,
                    stats.cancelled,
                    stats.total,
                )
            ],
            title="jobs by status",
        )
        if jobs:
            jobs_table(context.out, jobs, title="most recent jobs")

    context.out.emit(data, render)
    return ExitCode.OK


def account_status(context: Context) -> int:
    answer = context.sync().get_sync_status_details(context.args.account)
    state = answer.status

    def render() -> None:
        context.out.fields(
            [
                ("account", state.account_id),
                ("last sync", when(state, "last_sync_at")),
                ("last sync type", enum_label(SyncType.Name(state.last_sync_type), "SYNC_TYPE_")),
                ("locations", state.locations_count),
                ("locations skipped", state.locations_skipped),
                ("reviews", state.reviews_count),
                ("consecutive failures", state.consecutive_failures),
                ("last error", state.last_error or "-"),
                ("last error at", when(state, "last_error_at")),
            ],
            title="sync status",
        )

    context.out.emit(message_dict(answer), render)
    return ExitCode.OK
