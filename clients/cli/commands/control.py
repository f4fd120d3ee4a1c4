"""`gmbsync pause|resume [--user UUID] [--reason TEXT]`: stop or restart picking (admin or
worker credentials).

Without `--user` the whole queue is paused: workers get no job at all until `resume`. With
`--user`, only that user's jobs wait; everyone else's go on. Enqueueing works while paused.
Both print every pause still active; `resume` of what is not paused says so and exits 0.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from clients.cli.context import AddCommon, Context
from clients.cli.exitcodes import ExitCode
from clients.cli.output import message_dict, when
from gmbsync.queue.v1 import queue_service_pb2 as pb


def register(groups: argparse._SubParsersAction, add_common: AddCommon) -> None:
    for name, help_text, run in (
        ("pause", "stop picking, for the whole queue or one user", pause),
        ("resume", "restart picking, for the whole queue or one user", resume),
    ):
        parser = groups.add_parser(
            name,
            help=help_text,
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_common(parser)
        parser.add_argument("--user", metavar="UUID", help="only this user's jobs (default: all)")
        parser.add_argument("--reason", default="", help="why (shown with the pause, logged)")
        parser.set_defaults(run=run)


def pause(context: Context) -> int:
    args = context.args
    answer = context.queue().pause_queue(args.user, reason=args.reason)

    def render() -> None:
        context.out.line(f"paused {_scope(answer.pause)} (reason: {answer.pause.reason or '-'})")
        pauses_table(context, answer.active_pauses)

    context.out.emit(message_dict(answer), render)
    return ExitCode.OK


def resume(context: Context) -> int:
    args = context.args
    answer = context.queue().resume_queue(args.user, reason=args.reason)
    scope = f"user {args.user}" if args.user else "the whole queue"

    def render() -> None:
        context.out.line(f"resumed {scope}" if answer.resumed else f"{scope} was not paused")
        pauses_table(context, answer.active_pauses)

    context.out.emit(message_dict(answer), render)
    return ExitCode.OK


def pauses_table(context: Context, pauses: Sequence[pb.QueuePause]) -> None:
    if not pauses:
        context.out.line("nothing is paused")
        return
    context.out.table(
        ("paused", "reason", "by", "since"),
        ((_scope(p), p.reason or "-", p.paused_by or "-", when(p, "paused_at")) for p in pauses),
        title="active pauses",
    )


def _scope(pause: pb.QueuePause) -> str:
    return f"user {pause.user_id}" if pause.user_id else "the whole queue"
