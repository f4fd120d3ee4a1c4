"""`gmbsync schedule show|set`: an account's periodic syncs (admin or worker credentials).

`show` gives when the account's next incremental and full syncs fall, and its overrides. `set`
overrides its intervals (`--incremental 30m`, `--full 2d`; `0` returns to the service default)
or opts it out of periodic syncs and back in (`--disable`, `--enable`).
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Literal

from clients.cli.context import AddCommon, Context, UsageError
from clients.cli.exitcodes import ExitCode
from clients.cli.output import message_dict, span, when
from clients.cli.render import sync_type
from clients.queue import SyncSchedule
from service_runtime.config import ConfigError, parse_duration


def register(groups: argparse._SubParsersAction, add_common: AddCommon) -> None:
    schedule = groups.add_parser(
        "schedule",
        help="an account's next periodic syncs; override or opt out",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(schedule)
    actions = schedule.add_subparsers(dest="schedule_command", metavar="ACTION", required=True)

    show = actions.add_parser("show", help="accounts' next scheduled syncs")
    add_common(show)
    show.add_argument("accounts", metavar="ACCOUNT_ID", nargs="+")
    show.set_defaults(run=show_schedules)

    change = actions.add_parser("set", help="override intervals, or opt out / back in")
    add_common(change)
    change.add_argument("account", metavar="ACCOUNT_ID")
    change.add_argument(
        "--incremental", metavar="DURATION", help="incremental interval (0: default)"
    )
    change.add_argument("--full", metavar="DURATION", help="full interval (0: default)")
    enabled = change.add_mutually_exclusive_group()
    enabled.add_argument("--enable", dest="enabled", action="store_const", const=True)
    enabled.add_argument("--disable", dest="enabled", action="store_const", const=False)
    change.set_defaults(run=set_schedule)


def _duration(option: str, raw: str | None) -> timedelta | None:
    if raw is None:
        return None
    try:
        return parse_duration(option, raw)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def show_schedules(context: Context) -> int:
    queue = context.queue()
    schedules = [queue.get_sync_schedule(account) for account in context.args.accounts]
    context.out.emit(
        {"schedules": [message_dict(s) for s in schedules]}, lambda: render(context, schedules)
    )
    return ExitCode.OK


def set_schedule(context: Context) -> int:
    args = context.args
    incremental = _duration("--incremental", args.incremental)
    full = _duration("--full", args.full)
    if incremental is None and full is None and args.enabled is None:
        raise UsageError("nothing to change: give --incremental, --full, --enable or --disable")
    schedule = context.queue().set_sync_schedule(
        args.account, incremental_interval=incremental, full_interval=full, enabled=args.enabled
    )
    context.out.emit({"schedules": [message_dict(schedule)]}, lambda: render(context, [schedule]))
    return ExitCode.OK


def render(context: Context, schedules: list[SyncSchedule]) -> None:
    def interval(
        schedule: SyncSchedule, field: Literal["incremental_interval", "full_interval"]
    ) -> str:
        return span(schedule, field) if schedule.HasField(field) else "default"

    context.out.table(
        (
            "account",
            "periodic",
            "next incremental",
            "next full",
            "incremental every",
            "full every",
            "last enqueued",
            "last type",
        ),
        (
            (
                s.account_id,
                ("on" if s.enabled else "off") + ("" if s.account_active else " (inactive)"),
                when(s, "next_incremental_at"),
                when(s, "next_full_at"),
                f"{span(s, 'incremental_period')} ({interval(s, 'incremental_interval')})",
                f"{span(s, 'full_period')} ({interval(s, 'full_interval')})",
                when(s, "last_enqueued_at"),
                sync_type(s.last_sync_type),
            )
            for s in schedules
        ),
    )
