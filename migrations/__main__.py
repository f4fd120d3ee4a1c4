"""`python -m migrations [upgrade [REV] | downgrade REV | current | history]` on DATABASE_URL."""

from __future__ import annotations

import logging
import sys

from alembic import command

from migrations import alembic_config, downgrade, upgrade
from service_runtime.cli import DATABASE_VARIABLE, parser_with_environment
from service_runtime.database import database_url_from_env, sync_url


def main(argv: list[str] | None = None) -> int:
    parser = parser_with_environment(
        "python -m migrations", __doc__ or "", [DATABASE_VARIABLE, ("LOG_LEVEL", "INFO")]
    )
    sub = parser.add_subparsers(dest="action")
    up = sub.add_parser("upgrade", help="upgrade to REV (default: head)")
    up.add_argument("revision", nargs="?", default="head")
    down = sub.add_parser("downgrade", help="downgrade to REV (base drops everything)")
    down.add_argument("revision")
    sub.add_parser("current", help="show the revision the database is at")
    sub.add_parser("history", help="list the revisions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    url = database_url_from_env()
    target = sync_url(url).render_as_string(hide_password=True)
    action = args.action or "upgrade"
    if action == "upgrade":
        revision = getattr(args, "revision", "head")
        upgrade(url, revision)
        print(f"{target}: at {revision}")
    elif action == "downgrade":
        downgrade(url, args.revision)
        print(f"{target}: at {args.revision}")
    elif action == "current":
        command.current(alembic_config(url), verbose=False)
    else:
        command.history(alembic_config(url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
