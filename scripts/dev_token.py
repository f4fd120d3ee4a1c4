"""`python -m scripts.dev_token [--role R] [--user UUID]`: a development JWT for grpcurl.

Signed with JWT_SECRET from the environment or `var/dev-secrets.env` (what `make run` uses), for
the demo user of `make run` unless `--user` says otherwise. Valid 12 hours. Never for production.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid

from scripts.run_local import DEMO_USER_ID, load_dev_secrets
from service_runtime.auth import Role, issue_token


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.dev_token", description=__doc__)
    parser.add_argument("--role", choices=[r.value for r in Role], default=Role.AUTHENTICATED)
    parser.add_argument("--user", type=uuid.UUID, default=DEMO_USER_ID, help="the token's sub")
    args = parser.parse_args(argv)
    secret = load_dev_secrets(dict(os.environ))["JWT_SECRET"]
    print(issue_token(secret, user_id=args.user, role=args.role, ttl_seconds=12 * 3600))
    return 0


if __name__ == "__main__":
    sys.exit(main())
