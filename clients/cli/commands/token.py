"""`gmbsync token`: mint a development JWT (for grpcurl, GMBSYNC_TOKEN or a script).

Signed with JWT_SECRET from the environment, else from `var/dev-secrets.env` (written by
`make run`). Never for production: whoever holds JWT_SECRET can mint any role.
"""

from __future__ import annotations

import argparse
import uuid

from clients.cli.context import AddCommon, Context, UsageError
from clients.cli.exitcodes import ExitCode
from service_runtime.auth import Role
from service_runtime.config import ConfigError, parse_duration
from service_runtime.dev_tokens import DEMO_USER_ID, find_jwt_secret, mint_dev_token


def register(groups: argparse._SubParsersAction, add_common: AddCommon) -> None:
    parser = groups.add_parser(
        "token",
        help="mint a development JWT",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Not the connection options: this command connects nowhere, and its --role is the token's.
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--role",
        dest="token_role",
        choices=[r.value for r in Role],
        default=Role.AUTHENTICATED.value,
        help="the token's role (default authenticated)",
    )
    parser.add_argument(
        "--user",
        default=str(DEMO_USER_ID),
        metavar="UUID",
        help="the token's sub (default: the demo user)",
    )
    parser.add_argument("--ttl", default="12h", metavar="DURATION", help="lifetime (default 12h)")
    parser.set_defaults(run=token)


def token(context: Context) -> int:
    args = context.args
    try:
        user = uuid.UUID(args.user)
    except ValueError:
        raise UsageError(f"--user: {args.user!r} is not a UUID") from None
    try:
        ttl = parse_duration("--ttl", args.ttl)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if ttl.total_seconds() < 1:
        raise UsageError("--ttl must be at least 1s")
    secret = find_jwt_secret(context.environ)
    if not secret:
        raise UsageError(
            "JWT_SECRET is not set and var/dev-secrets.env has none (`make run` writes it)"
        )
    minted, expires_at = mint_dev_token(
        secret, user_id=user, role=args.token_role, ttl_seconds=int(ttl.total_seconds())
    )

    def render() -> None:
        # The bare token, so that `export GMBSYNC_TOKEN=$(gmbsync token)` works.
        context.out.console.file.write(minted + "\n")

    context.out.emit(
        {
            "token": minted,
            "user_id": str(user),
            "role": args.token_role,
            "expires_at": expires_at.isoformat().replace("+00:00", "Z"),
        },
        render,
    )
    return ExitCode.OK
