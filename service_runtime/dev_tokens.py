"""Development JWTs: the demo user of `make run`, its secrets file, and minting a token.

Shared by `python -m scripts.dev_token` and `gmbsync token` (and the CLI's own credentials when
only JWT_SECRET is known), so that an installed package can mint the tokens a checkout can.
Never for production: a token minted here is as strong as whoever holds JWT_SECRET.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from service_runtime.auth import Role, issue_token

# The user who owns the demo accounts of `make run`.
DEMO_USER_ID = uuid.UUID("00000000-0000-4000-8000-00000000de01")
# Where `make run` keeps its development secrets (relative to the repository root).
DEV_SECRETS_FILE = Path("var") / "dev-secrets.env"
DEV_TOKEN_TTL_SECONDS = 12 * 3600


def read_secrets_file(path: Path = DEV_SECRETS_FILE) -> dict[str, str]:
    """The KEY=value lines of a secrets file; empty when the file does not exist."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.strip().startswith("#"):
            values[key.strip()] = value.strip()
    return values


def find_jwt_secret(environ: Mapping[str, str], path: Path = DEV_SECRETS_FILE) -> str | None:
    """JWT_SECRET from the environment, else from the development secrets file; None if
    neither has one."""
    secret = environ.get("JWT_SECRET", "").strip()
    return secret or read_secrets_file(path).get("JWT_SECRET") or None


def mint_dev_token(
    secret: str,
    *,
    user_id: uuid.UUID | str = DEMO_USER_ID,
    role: Role | str = Role.AUTHENTICATED,
    ttl_seconds: int = DEV_TOKEN_TTL_SECONDS,
) -> tuple[str, datetime]:
    """A signed token and when it expires."""
    expires_at = datetime.fromtimestamp(int(time.time()) + ttl_seconds, UTC)
    return issue_token(secret, user_id=user_id, role=role, ttl_seconds=ttl_seconds), expires_at


__all__ = [
    "DEMO_USER_ID",
    "DEV_SECRETS_FILE",
    "DEV_TOKEN_TTL_SECONDS",
    "find_jwt_secret",
    "mint_dev_token",
    "read_secrets_file",
]
