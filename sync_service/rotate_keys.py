"""`python -m sync_service.rotate_keys`: re-encrypts every stored OAuth token under the newest key.

TOKEN_ENCRYPTION_KEY lists Fernet keys newest first: the first encrypts, every one decrypts.
Tokens written before the newest key was added stay under an older one until something rewrites
them, so an old key could never be dropped. This command rewrites them (see docs/key-rotation.md
for the whole procedure).

It reads `oauth_tokens` in batches of `--batch-size` rows by account id, one transaction per
batch, and for each row:
- a token that opens with the newest key alone is left as it is (already current);
- a token that opens with an older key is re-encrypted under the newest (`MultiFernet.rotate`,
  which keeps its timestamp) and written back only if the row still holds exactly what was read:
  a token refresh that raced it is never overwritten; the row is read again and tried again;
- a token no configured key opens is counted and its account listed, and the row left alone.

Idempotent and resumable: a second run finds every row current and writes nothing, and an
interrupted run loses nothing (committed batches stay; the next run carries on). Tokens are
never printed, only counts and account ids.

It needs DATABASE_URL and TOKEN_ENCRYPTION_KEY, exactly as SyncService gets them. It never reads
the development key file: with no TOKEN_ENCRYPTION_KEY there is no list of keys to rotate
between, so that is a configuration error.

Exit codes: 0 every token is under the newest key; 1 some cannot be decrypted with any
configured key; 2 a configuration or database error (one line on stderr); 3 tokens remain to
re-encrypt (a `--dry-run`, or rows that kept changing while being rewritten): run it again;
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from service_runtime.config import ConfigError
from service_runtime.database import configure_sqlite, sync_url
from sync_service.crypto import TokenCipher, TokenDecryptError, parse_key_list
from sync_service.tables import oauth_tokens

DEFAULT_BATCH_SIZE = 500
MAX_BATCH_SIZE = 10_000
# A row whose compare-and-set keeps losing to token refreshes is tried this many times, then
# left for the next run (it is probably being refreshed under the newest key anyway).
MAX_TRIES = 3
# Undecryptable account ids listed in the report; the count is always exact.
MAX_LISTED = 100

_t = oauth_tokens
_COLUMNS = (_t.c.account_id, _t.c.refresh_token_encrypted, _t.c.access_token_encrypted)
if TYPE_CHECKING:
    # A row of the three _COLUMNS (SQLAlchemy 2.1 types a row by each of its columns).
    _TokenRow = Row[Any, Any, Any]


@dataclass
class RotationReport:
    """What a run found and did. In a dry run, `rotated` counts the rows it would rewrite."""

    dry_run: bool = False
    batches: int = 0
    scanned: int = 0
    rotated: int = 0
    already_current: int = 0
    changed_concurrently: int = 0
    undecryptable: int = 0
    left_for_next_run: int = 0
    undecryptable_account_ids: list[str] = field(default_factory=list)

    @property
    def all_current(self) -> bool:
        """True when every row seen is now under the newest key."""
        pending = self.rotated if self.dry_run else 0
        return not (self.undecryptable or self.left_for_next_run or pending)

    @property
    def exit_code(self) -> int:
        if self.undecryptable:
            return 1
        return 0 if self.all_current else 3

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "batches": self.batches,
            "scanned": self.scanned,
            "rotated": self.rotated,
            "already_current": self.already_current,
            "changed_concurrently": self.changed_concurrently,
            "undecryptable": self.undecryptable,
            "left_for_next_run": self.left_for_next_run,
            "undecryptable_account_ids": self.undecryptable_account_ids,
            "all_current": self.all_current,
            "exit_code": self.exit_code,
        }


class TokenRotator:
    """Re-encrypts the rows of `oauth_tokens` under the cipher's first key, batch by batch."""

    def __init__(
        self,
        engine: Engine,
        cipher: TokenCipher,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        dry_run: bool = False,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH_SIZE}")
        self.engine = engine
        self.cipher = cipher
        self.batch_size = batch_size
        self.dry_run = dry_run

    def run(self, on_batch: Callable[[RotationReport], None] | None = None) -> RotationReport:
        """Every row, in account id order; `on_batch` is called after each committed batch."""
        report = RotationReport(dry_run=self.dry_run)
        after: uuid.UUID | None = None
        while True:
            with self.engine.begin() as conn:
                rows = self.read_batch(conn, after)
                if not rows:
                    break
                self.rotate_rows(conn, rows, report)
            report.batches += 1
            after = rows[-1].account_id
            if on_batch is not None:
                on_batch(report)
        return report

    def read_batch(self, conn: Connection, after: uuid.UUID | None) -> Sequence[_TokenRow]:
        """The next batch after account id `after` (keyset: no OFFSET, so it stays fast and no
        row is skipped when others are added or deleted meanwhile). Read without locks: the
        write's compare-and-set, not a lock, keeps token refreshes from waiting on this."""
        query = sa.select(*_COLUMNS).order_by(_t.c.account_id).limit(self.batch_size)
        if after is not None:
            query = query.where(_t.c.account_id > after)
        return conn.execute(query).all()

    def rotate_rows(
        self, conn: Connection, rows: Sequence[_TokenRow], report: RotationReport
    ) -> None:
        """Rewrites what needs it among `rows` (read earlier in `conn`'s transaction)."""
        for row in rows:
            report.scanned += 1
            self._rotate_row(conn, row, report)

    def _rotate_row(self, conn: Connection, row: _TokenRow | None, report: RotationReport) -> None:
        raced = False
        for _ in range(MAX_TRIES):
            if row is None:  # deleted since it was read: nothing left to re-encrypt
                return
            try:
                refresh = self._rotated(row.refresh_token_encrypted)
                access = self._rotated(row.access_token_encrypted)
            except TokenDecryptError:
                report.undecryptable += 1
                if len(report.undecryptable_account_ids) < MAX_LISTED:
                    report.undecryptable_account_ids.append(str(row.account_id))
                return
            if refresh is None and access is None:
                report.already_current += 1
                return
            if self.dry_run:
                report.rotated += 1
                return
            if self._compare_and_set(conn, row, refresh, access):
                report.rotated += 1
                return
            # A token refresh, a reconnect or a deletion changed the row since it was read.
            if not raced:
                report.changed_concurrently += 1
                raced = True
            row = conn.execute(
                sa.select(*_COLUMNS).where(_t.c.account_id == row.account_id)
            ).first()
        if row is not None:
            report.left_for_next_run += 1

    def _rotated(self, ciphertext: str | None) -> str | None:
        """The ciphertext under the newest key, or None when it is already (or there is none)."""
        if ciphertext is None or self.cipher.is_current(ciphertext):
            return None
        return self.cipher.rotate(ciphertext)

    @staticmethod
    def _compare_and_set(
        conn: Connection, row: _TokenRow, refresh: str | None, access: str | None
    ) -> bool:
        """Writes the new ciphertexts only if both columns still hold what was read."""
        values = {}
        if refresh is not None:
            values["refresh_token_encrypted"] = refresh
        if access is not None:
            values["access_token_encrypted"] = access
        result = conn.execute(
            sa.update(_t)
            .where(
                _t.c.account_id == row.account_id,
                _t.c.refresh_token_encrypted == row.refresh_token_encrypted,
                _t.c.access_token_encrypted.is_not_distinct_from(row.access_token_encrypted),
            )
            .values(**values)
        )
        return result.rowcount == 1


# --- the command --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where to rotate and with which keys; `database` is safe to print (no password)."""

    engine: Engine
    cipher: TokenCipher
    database: str


def configure(environ: Mapping[str, str]) -> Target:
    """The engine and cipher from DATABASE_URL and TOKEN_ENCRYPTION_KEY; ConfigError if unusable.

    Messages name the variable, never its value: both hold secrets.
    """
    raw_url = environ.get("DATABASE_URL", "").strip()
    if not raw_url:
        raise ConfigError("DATABASE_URL is not set: name the database SyncService uses")
    keys = parse_key_list(environ.get("TOKEN_ENCRYPTION_KEY", ""))
    if not keys:
        raise ConfigError(
            "TOKEN_ENCRYPTION_KEY is not set: give the Fernet keys newest first, "
            "comma-separated, as SyncService gets them (the development key file is never used)"
        )
    try:
        cipher = TokenCipher(keys)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        url = sync_url(make_url(raw_url))
    except (ArgumentError, ValueError):
        raise ConfigError(
            "DATABASE_URL is not a PostgreSQL or SQLite URL "
            "(postgresql+psycopg://user:password@host/db or sqlite:///path/to/file.db)"
        ) from None
    if url.get_backend_name() == "sqlite":
        path = url.database or ""
        if path in ("", ":memory:") or not Path(path).is_file():
            raise ConfigError(f"DATABASE_URL: no SQLite database file at {path or '(none)'!r}")
        engine = sa.create_engine(url)
        configure_sqlite(engine)
    else:
        engine = sa.create_engine(url, pool_size=1, max_overflow=0)
    return Target(engine=engine, cipher=cipher, database=url.render_as_string(hide_password=True))


def _database_error(exc: SQLAlchemyError) -> str:
    """One line about a database failure; driver messages name hosts and tables, not passwords."""
    cause = exc.orig if isinstance(exc, DBAPIError) else exc
    first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return f"database error: {first_line} (is DATABASE_URL right, and migrated?)"


def summary_text(report: RotationReport, target: Target) -> str:
    """The human-readable report."""
    rotated_label = "to re-encrypt" if report.dry_run else "re-encrypted"
    lines = [
        f"oauth_tokens in {target.database} "
        f"({target.cipher.key_count} key(s) configured; the first is the newest)"
        + (" [dry run: nothing written]" if report.dry_run else ""),
        f"  {'rows scanned':<26}{report.scanned:>9}",
        f"  {rotated_label:<26}{report.rotated:>9}",
        f"  {'already under newest key':<26}{report.already_current:>9}",
        f"  {'changed concurrently':<26}{report.changed_concurrently:>9}",
        f"  {'undecryptable':<26}{report.undecryptable:>9}",
        f"  {'left for the next run':<26}{report.left_for_next_run:>9}",
    ]
    if report.undecryptable:
        listed = ", ".join(report.undecryptable_account_ids)
        more = report.undecryptable - len(report.undecryptable_account_ids)
        lines.append(
            f"{report.undecryptable} row(s) open with no configured key: add back the key that "
            "encrypted them, or have their accounts reconnected. Accounts: "
            + listed
            + (f" and {more} more" if more > 0 else "")
        )
    if report.dry_run and report.rotated:
        lines.append(f"{report.rotated} row(s) are under an older key: run without --dry-run.")
    if report.left_for_next_run:
        lines.append(
            f"{report.left_for_next_run} row(s) kept changing while being re-encrypted: run again."
        )
    if report.all_current:
        lines.append(
            "Every stored token is under the newest key. Older keys can be dropped from "
            "TOKEN_ENCRYPTION_KEY once every SyncService runs with this key list."
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    summary, _, rest = (__doc__ or "").partition("\n")
    purpose = summary.split(": ", 1)[-1]
    parser = argparse.ArgumentParser(
        prog="python -m sync_service.rotate_keys",
        description=purpose[:1].upper() + purpose[1:],
        epilog=rest.strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"rows per batch and transaction, 1..{MAX_BATCH_SIZE} (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="count what would be re-encrypted; write nothing"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the report as one JSON object on stdout"
    )
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not 1 <= args.batch_size <= MAX_BATCH_SIZE:
        parser.error(f"--batch-size must be 1..{MAX_BATCH_SIZE}")
    try:
        target = configure(os.environ if environ is None else environ)
    except ConfigError as exc:
        print(f"rotate_keys: configuration error: {exc}", file=sys.stderr)
        return 2

    def progress(report: RotationReport) -> None:
        print(
            f"batch {report.batches}: {report.scanned} rows scanned, {report.rotated} "
            f"{'to re-encrypt' if report.dry_run else 're-encrypted'}",
            file=sys.stderr,
            flush=True,
        )

    rotator = TokenRotator(
        target.engine, target.cipher, batch_size=args.batch_size, dry_run=args.dry_run
    )
    try:
        report = rotator.run(None if args.json else progress)
    except SQLAlchemyError as exc:
        print(f"rotate_keys: {_database_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "rotate_keys: interrupted; the batches committed so far stay re-encrypted: "
            "run it again to finish",
            file=sys.stderr,
        )
        return 130
    finally:
        target.engine.dispose()
    if args.json:
        document = {
            "database": target.database,
            "keys": target.cipher.key_count,
            **report.as_dict(),
        }
        print(json.dumps(document))
    else:
        print(summary_text(report, target))
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
