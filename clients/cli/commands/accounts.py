"""`gmbsync accounts list|connect`: the Google Business Profile accounts SyncService holds.

`connect` stores (or updates) an account and its OAuth refresh token (admin or worker
credentials). Pass the refresh token as `--refresh-token -` to read it from stdin, so that it
does not show in the process list or the shell history.
"""

from __future__ import annotations

import argparse
import sys

from clients.cli.context import AddCommon, Context, UsageError
from clients.cli.exitcodes import ExitCode
from clients.cli.output import message_dict, when
from clients.sync import Account


def register(groups: argparse._SubParsersAction, add_common: AddCommon) -> None:
    accounts = groups.add_parser(
        "accounts",
        help="list or connect Google accounts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(accounts)
    actions = accounts.add_subparsers(dest="accounts_command", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="a user's accounts, oldest first")
    add_common(listing)
    listing.add_argument("--user", metavar="UUID", help="whose accounts (default: the caller's)")
    listing.add_argument(
        "--include-inactive", action="store_true", help="also deactivated accounts"
    )
    listing.set_defaults(run=list_accounts)

    connect = actions.add_parser("connect", help="store an account and its refresh token")
    add_common(connect)
    connect.add_argument("--user", metavar="UUID", required=True, help="the owner")
    connect.add_argument("--name", required=True, help="display name")
    connect.add_argument(
        "--google-account", metavar="accounts/N", required=True, help="Google's account name"
    )
    connect.add_argument(
        "--refresh-token", required=True, metavar="TOKEN", help="OAuth refresh token ('-': stdin)"
    )
    connect.set_defaults(run=connect_account)


def list_accounts(context: Context) -> int:
    sync = context.sync()
    accounts: list[Account] = []
    token = ""
    while True:
        page = sync.list_accounts(
            user_id=context.args.user or "",
            page_token=token,
            include_inactive=context.args.include_inactive,
        )
        accounts.extend(page.accounts)
        token = page.next_page_token
        if not token:
            break

    def render() -> None:
        context.out.table(
            ("id", "name", "google account", "user", "active", "created"),
            (
                (
                    a.id,
                    a.account_name,
                    a.google_account_id,
                    a.user_id,
                    "yes" if a.is_active else "no",
                    when(a, "created_at"),
                )
                for a in accounts
            ),
        )

    context.out.emit({"accounts": [message_dict(a) for a in accounts]}, render)
    return ExitCode.OK


def connect_account(context: Context) -> int:
    args = context.args
    refresh_token = args.refresh_token
    if refresh_token == "-":
        refresh_token = sys.stdin.readline().strip()
        if not refresh_token:
            raise UsageError("--refresh-token -: stdin gave no token")
    answer = context.sync().connect_account(
        user_id=args.user,
        account_name=args.name,
        google_account_id=args.google_account,
        refresh_token=refresh_token,
    )
    account = answer.account

    def render() -> None:
        verb = "updated" if answer.updated else "connected"
        context.out.line(f"{verb} account {account.id} ({account.account_name})")

    context.out.emit(message_dict(answer), render)
    return ExitCode.OK
