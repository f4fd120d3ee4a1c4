"""`python -m scripts.dev_token [--role R] [--user UUID]`: a development JWT for grpcurl.

Signed with JWT_SECRET from the environment or `var/dev-secrets.env` (what `make run` uses; made
here if missing), for the demo user of `make run` unless `--user` says otherwise. Valid 12 hours.
Never for production. The installed `gmbsync token` command mints the same tokens.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid

from scripts.run_local import load_dev_secrets
from service_runtime.auth import Role
from service_runtime.dev_tokens import DEMO_USER_ID, mint_dev_token


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.dev_token", description=__doc__)
    parser.add_argument("--role", choices=[r.value for r in Role], default=Role.AUTHENTICATED)
    parser.add_argument("--user", type=uuid.UUID, default=DEMO_USER_ID, help="the token's sub")
    args = parser.parse_args(argv)
    secret = load_dev_secrets(dict(os.environ))["JWT_SECRET"]
    token, _expires_at = mint_dev_token(secret, user_id=args.user, role=args.role)
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
