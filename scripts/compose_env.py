"""`python -m scripts.compose_env`: writes compose.env, the secrets of docker-compose.yml.

JWT_SECRET, TRIGGER_SECRET and TOKEN_ENCRYPTION_KEY each keep the value compose.env already
gives them, else get a new random one; anything else in the file is kept as it is. The file is
left readable by its owner only (0600) and is ignored by git; compose.env.example says what each
variable is. Secrets are never printed.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet

COMPOSE_ENV = Path("compose.env")
GENERATORS: dict[str, Callable[[], str]] = {
    "JWT_SECRET": lambda: secrets.token_urlsafe(48),
    "TRIGGER_SECRET": lambda: secrets.token_urlsafe(32),
    "TOKEN_ENCRYPTION_KEY": lambda: Fernet.generate_key().decode(),
}


def fill(path: Path) -> list[str]:
    """Gives every secret missing from `path` a new value; the names it set."""
    lines = path.read_text().splitlines() if path.exists() else []
    present = {
        key.strip()
        for key, sep, value in (line.partition("=") for line in lines)
        if sep and value.strip() and not key.lstrip().startswith("#")
    }
    added = [name for name in GENERATORS if name not in present]
    # A name that is there but empty (as in the example file) is replaced, not repeated.
    kept = [line for line in lines if line.partition("=")[0].strip() not in added]
    body = "\n".join([*kept, *(f"{name}={GENERATORS[name]()}" for name in added)]) + "\n"
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(body)
    return added


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.compose_env", description=__doc__)
    parser.add_argument("--path", type=Path, default=COMPOSE_ENV, help="default ./compose.env")
    args = parser.parse_args(argv)
    added = fill(args.path)
    print(f"{args.path}: " + (f"new {', '.join(added)}" if added else "every secret already set"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
