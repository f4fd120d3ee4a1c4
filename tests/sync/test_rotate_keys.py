"""`python -m sync_service.rotate_keys`: every stored token ends under the newest key, safely.

On PostgreSQL and SQLite: rows are seeded straight into `oauth_tokens` under an old key, then
rotated after a new key is put first, as an operator would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from sqlalchemy.engine import Engine

from service_runtime.database import configure_sqlite, sync_url
from sync_service.crypto import TokenCipher
from sync_service.rotate_keys import RotationReport, TokenRotator
from sync_service.tables import gmb_accounts, oauth_tokens

ROOT = Path(__file__).resolve().parents[2]
OLD = Fernet.generate_key().decode()
NEW = Fernet.generate_key().decode()
STRAY = Fernet.generate_key().decode()  # a key nobody configured any more


@dataclass(frozen=True)
class Seeded:
    account_id: uuid.UUID
    refresh: str
    access: str | None


@pytest.fixture
def engine(any_db_url: str) -> Iterator[Engine]:
    url = sync_url(any_db_url)
    engine = sa.create_engine(url)
    if url.get_backend_name() == "sqlite":
        configure_sqlite(engine)
    yield engine
    engine.dispose()


def seed(
    engine: Engine,
    n: int,
    *,
    refresh_key: str = OLD,
    access_key: str | None = OLD,
    prefix: str = "",
) -> list[Seeded]:
    """`n` accounts with tokens: the refresh token under `refresh_key`, the access token under
    `access_key` (None: no access token)."""
    now = datetime.now(UTC)
    seeded = []
    with engine.begin() as conn:
        for i in range(n):
            account_id = uuid.uuid4()
            refresh = f"{prefix}refresh-token-{account_id.hex[:8]}"
            access = f"{prefix}access-token-{i}" if access_key else None
            conn.execute(
                sa.insert(gmb_accounts).values(
                    id=account_id,
                    user_id=uuid.uuid4(),
                    account_name=f"Account {i}",
                    google_account_id=f"accounts/{account_id.int % 10**12}",
                    is_active=True,
                    created_at=now,
                    updated_at=now,
                )
            )
            conn.execute(
                sa.insert(oauth_tokens).values(
                    account_id=account_id,
                    refresh_token_encrypted=Fernet(refresh_key).encrypt(refresh.encode()).decode(),
                    access_token_encrypted=(
                        Fernet(access_key).encrypt(access.encode()).decode()
                        if access_key and access
                        else None
                    ),
                    created_at=now,
                    updated_at=now,
                )
            )
            seeded.append(Seeded(account_id, refresh, access))
    return sorted(seeded, key=lambda s: s.account_id)


def stored(engine: Engine) -> dict[uuid.UUID, tuple[str, str | None]]:
    """account_id -> (refresh ciphertext, access ciphertext), straight from the table."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                oauth_tokens.c.account_id,
                oauth_tokens.c.refresh_token_encrypted,
                oauth_tokens.c.access_token_encrypted,
            )
        ).all()
    return {row[0]: (row[1], row[2]) for row in rows}


def readable_with(key: str, engine: Engine) -> dict[uuid.UUID, tuple[str, str | None]]:
    """Every row decrypted with `key` alone (fails if one is not under it)."""
    alone = TokenCipher([key])
    return {
        account_id: (alone.decrypt(refresh), alone.decrypt(access) if access else None)
        for account_id, (refresh, access) in stored(engine).items()
    }


def rotator(engine: Engine, *keys: str, **options: Any) -> TokenRotator:
    return TokenRotator(engine, TokenCipher(list(keys)), **options)


def counts(report: RotationReport) -> tuple[int, int, int, int, int]:
    return (
        report.scanned,
        report.rotated,
        report.already_current,
        report.changed_concurrently,
        report.undecryptable,
    )


def test_after_a_new_key_is_put_first_every_token_reads_with_the_new_key_alone(engine):
    rows = seed(engine, 4) + seed(engine, 2, access_key=None, prefix="no-access-")
    before = stored(engine)

    report = rotator(engine, NEW, OLD, batch_size=2).run()

    assert counts(report) == (6, 6, 0, 0, 0)
    assert report.batches == 3
    assert report.exit_code == 0 and report.all_current
    expected = {r.account_id: (r.refresh, r.access) for r in rows}
    assert readable_with(NEW, engine) == expected
    # MultiFernet.rotate keeps a token's timestamp: a rotation is not a new token.
    for account_id, (refresh, _) in stored(engine).items():
        old_refresh = before[account_id][0]
        assert refresh != old_refresh
        assert Fernet(NEW).extract_timestamp(refresh.encode()) == Fernet(OLD).extract_timestamp(
            old_refresh.encode()
        )


def test_a_second_run_rewrites_nothing(engine):
    seed(engine, 3)
    rotator(engine, NEW, OLD).run()
    after_first = stored(engine)

    report = rotator(engine, NEW, OLD).run()

    assert counts(report) == (3, 0, 3, 0, 0)
    assert report.exit_code == 0
    assert stored(engine) == after_first  # not even re-encrypted again


def test_an_interrupted_run_is_finished_by_the_next(engine):
    seed(engine, 5)
    # A half-refreshed row: a token refresh already wrote the access token under the new key.
    [mixed] = seed(engine, 1, refresh_key=OLD, access_key=NEW, prefix="mixed-")
    mixed_access_before = stored(engine)[mixed.account_id][1]

    def stop_after_first_batch(report: RotationReport) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rotator(engine, NEW, OLD, batch_size=2).run(stop_after_first_batch)
    alone = TokenCipher([NEW])
    current = [a for a, (refresh, _) in stored(engine).items() if alone.is_current(refresh)]
    assert len(current) == 2  # the committed first batch, and nothing else

    report = rotator(engine, NEW, OLD, batch_size=2).run()

    assert counts(report) == (6, 4, 2, 0, 0)
    assert report.exit_code == 0
    assert readable_with(NEW, engine)[mixed.account_id] == (mixed.refresh, mixed.access)
    # Only the column under the old key was rewritten.
    assert stored(engine)[mixed.account_id][1] == mixed_access_before


def test_an_undecryptable_row_is_reported_left_alone_and_fails_the_run(engine):
    good = seed(engine, 2)
    [lost] = seed(engine, 1, refresh_key=STRAY, access_key=STRAY, prefix="lost-")
    lost_before = stored(engine)[lost.account_id]

    report = rotator(engine, NEW, OLD).run()

    assert counts(report) == (3, 2, 0, 0, 1)
    assert report.undecryptable_account_ids == [str(lost.account_id)]
    assert report.exit_code == 1 and not report.all_current
    assert stored(engine)[lost.account_id] == lost_before
    readable = TokenCipher([NEW])
    for row in good:
        assert readable.decrypt(stored(engine)[row.account_id][0]) == row.refresh


def test_a_dry_run_counts_and_writes_nothing(engine):
    seed(engine, 3)
    before = stored(engine)

    report = rotator(engine, NEW, OLD, dry_run=True).run()

    assert counts(report) == (3, 3, 0, 0, 0)
    assert report.exit_code == 3  # work remains
    assert stored(engine) == before


def test_a_token_refresh_racing_the_rotation_is_never_overwritten(engine):
    """A row changed between the batch's read and its write is read again, never overwritten.

    On PostgreSQL the change comes from another connection, as a SyncService token refresh
    would. SQLite's batch holds the database's write lock from its first statement, so no other
    writer can come in between; there the change is made inside the batch's transaction, which
    is the same stale read as far as the compare-and-set is concerned.
    """
    a, b, c, d = seed(engine, 4)
    postgres = engine.dialect.name == "postgresql"
    # a: refreshed by a SyncService on the new key list; b: by one still on the old list;
    # c: disconnected (its row deleted); d: untouched.
    a_new = (
        Fernet(NEW).encrypt(b"refresh-a2").decode(),
        Fernet(NEW).encrypt(b"access-a2").decode(),
    )
    b_new = (
        Fernet(OLD).encrypt(b"refresh-b2").decode(),
        Fernet(OLD).encrypt(b"access-b2").decode(),
    )

    def change(conn: sa.Connection) -> None:
        for account_id, (refresh, access) in ((a.account_id, a_new), (b.account_id, b_new)):
            conn.execute(
                sa.update(oauth_tokens)
                .where(oauth_tokens.c.account_id == account_id)
                .values(refresh_token_encrypted=refresh, access_token_encrypted=access)
            )
        conn.execute(sa.delete(oauth_tokens).where(oauth_tokens.c.account_id == c.account_id))

    subject = rotator(engine, NEW, OLD)
    report = RotationReport()
    with engine.begin() as conn:
        rows = subject.read_batch(conn, None)
        if postgres:
            with engine.begin() as other:  # commits before the batch writes
                change(other)
        else:
            change(conn)
        subject.rotate_rows(conn, rows, report)

    assert counts(report) == (4, 2, 1, 3, 0)  # b and d rotated, a found current
    assert report.left_for_next_run == 0 and report.exit_code == 0
    after = stored(engine)
    assert after[a.account_id] == a_new  # the refresh's own ciphertext, byte for byte
    assert c.account_id not in after
    readable = readable_with(NEW, engine)
    assert readable[b.account_id] == ("refresh-b2", "access-b2")  # the new token, now rotated
    assert readable[d.account_id] == (d.refresh, d.access)


# --- the command -------------------------------------------------------------------------------


def run_cli(*args: str, **env: str | None) -> subprocess.CompletedProcess[str]:
    environ = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TOKEN_ENCRYPTION_KEY")
    }
    environ.update({k: v for k, v in env.items() if v is not None})
    return subprocess.run(
        [sys.executable, "-m", "sync_service.rotate_keys", *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def reported(stdout: str, label: str) -> int:
    """A count of the human-readable report, by its label."""
    match = re.search(rf"^  {re.escape(label)}\s+(\d+)$", stdout, re.MULTILINE)
    assert match, stdout
    return int(match.group(1))


def assert_no_secret(result: subprocess.CompletedProcess[str], rows: list[Seeded], db: Engine):
    output = result.stdout + result.stderr
    for secret in (OLD, NEW, STRAY):
        assert secret not in output
    for row in rows:
        assert row.refresh not in output
        assert row.access is None or row.access not in output
    for refresh, access in stored(db).values():
        assert refresh not in output and (access is None or access not in output)


def test_cli_rotates_and_reports_in_words_then_json(engine, any_db_url):
    rows = seed(engine, 3)

    first = run_cli(
        "--batch-size", "2", DATABASE_URL=any_db_url, TOKEN_ENCRYPTION_KEY=f"{NEW},{OLD}"
    )

    assert first.returncode == 0, first.stderr
    assert reported(first.stdout, "re-encrypted") == 3
    assert reported(first.stdout, "already under newest key") == 0
    assert "Every stored token is under the newest key" in first.stdout
    assert "batch 2: 3 rows scanned" in first.stderr  # progress goes to stderr
    assert_no_secret(first, rows, engine)

    second = run_cli("--json", DATABASE_URL=any_db_url, TOKEN_ENCRYPTION_KEY=f" {NEW} , {OLD} ")

    assert second.returncode == 0, second.stderr
    document = json.loads(second.stdout)
    assert document["keys"] == 2
    assert (document["scanned"], document["rotated"], document["already_current"]) == (3, 0, 3)
    assert document["all_current"] is True and document["exit_code"] == 0
    assert "password" not in document["database"]
    assert_no_secret(second, rows, engine)


def test_cli_dry_run_and_undecryptable_rows_have_their_own_exit_codes(engine, any_db_url):
    rows = seed(engine, 2) + seed(engine, 1, refresh_key=STRAY, access_key=None, prefix="lost-")
    lost = next(r for r in rows if r.refresh.startswith("lost-"))
    before = stored(engine)
    keys = f"{NEW},{OLD}"

    dry = run_cli("--dry-run", "--json", DATABASE_URL=any_db_url, TOKEN_ENCRYPTION_KEY=keys)

    document = json.loads(dry.stdout)
    assert (document["dry_run"], document["rotated"], document["undecryptable"]) == (True, 2, 1)
    assert dry.returncode == 1  # undecryptable wins over "work remains"
    assert stored(engine) == before

    real = run_cli(DATABASE_URL=any_db_url, TOKEN_ENCRYPTION_KEY=keys)

    assert real.returncode == 1
    assert str(lost.account_id) in real.stdout
    assert reported(real.stdout, "undecryptable") == 1
    assert reported(real.stdout, "re-encrypted") == 2
    assert_no_secret(real, rows, engine)

    # After the old key is dropped, a dry run is the verification: still only the lost row.
    verify = run_cli("--dry-run", "--json", DATABASE_URL=any_db_url, TOKEN_ENCRYPTION_KEY=NEW)
    assert json.loads(verify.stdout)["already_current"] == 2
    assert verify.returncode == 1


def test_cli_dry_run_with_work_left_exits_3(engine, any_db_url):
    seed(engine, 1)
    result = run_cli("--dry-run", DATABASE_URL=any_db_url, TOKEN_ENCRYPTION_KEY=f"{NEW},{OLD}")
    assert result.returncode == 3
    assert reported(result.stdout, "to re-encrypt") == 1
    assert "run without --dry-run" in result.stdout


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"TOKEN_ENCRYPTION_KEY": None}, "TOKEN_ENCRYPTION_KEY is not set"),
        ({"TOKEN_ENCRYPTION_KEY": f"{NEW},not-a-key"}, "key #2 is not a Fernet key"),
        ({"DATABASE_URL": None}, "DATABASE_URL is not set"),
        ({"DATABASE_URL": "mysql://u:hunter2@db/x"}, "not a PostgreSQL or SQLite URL"),
        ({"DATABASE_URL": "sqlite:///does/not/exist.db"}, "no SQLite database file"),
        (
            {"DATABASE_URL": "postgresql+psycopg://postgres:hunter2@127.0.0.1:1/none"},
            "database error",
        ),
    ],
)
def test_cli_configuration_errors_are_one_line_and_exit_2(tmp_path, env, says):
    values = {"DATABASE_URL": f"sqlite:///{tmp_path / 'absent.db'}", "TOKEN_ENCRYPTION_KEY": NEW}
    values.update(env)

    result = run_cli(**values)

    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert says in line
    assert "Traceback" not in result.stderr
    assert "hunter2" not in line and NEW not in line and "not-a-key" not in line


def test_cli_help_describes_the_exit_codes():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "--batch-size" in result.stdout and "--dry-run" in result.stdout
    assert "Exit codes: 0 every token is under the newest key" in result.stdout
