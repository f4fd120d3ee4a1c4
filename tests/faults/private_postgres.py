"""A PostgreSQL server of a test's own, to restart and to cut off without touching the shared one.

The cluster lives in a temporary directory: `initdb`, then `pg_ctl start` on a free loopback
port with its socket in the same directory. PostgreSQL refuses to run as root, so when the tests
run as root the server runs as the `postgres` system user (`runuser`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import psycopg

# A start or restart on a loaded 2-core machine: generous, never waited for in full on success.
PG_CTL_TIMEOUT = 60


def postgres_bin_dir() -> Path | None:
    """The newest `/usr/lib/postgresql/<version>/bin` holding initdb and pg_ctl, if any."""
    found = [
        Path(d)
        for d in glob.glob("/usr/lib/postgresql/*/bin")
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists()
    ]
    if not found:
        return None
    return max(found, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivatePostgres:
    """One private cluster: start, restart (fast), terminate the backends of a database, stop."""

    def __init__(self, bin_dir: Path, settings: Mapping[str, str] | None = None) -> None:
        self.bin_dir = bin_dir
        # Server settings (`-c name=value`) beyond the defaults.
        self.settings = dict(settings or {})
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="gmbsync-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]

    @property
    def admin_conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _pg(self, program: str, *args: str) -> None:
        # Output to a file, not a pipe: a server started by pg_ctl would hold a pipe open.
        with (self.root / "pg_ctl.out").open("ab") as out:
            subprocess.run(
                [*self._as_user, str(self.bin_dir / program), *args],
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=PG_CTL_TIMEOUT,
            )

    def start(self) -> None:
        self._pg("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=100"
        )
        options += "".join(f" -c {name}={value}" for name, value in self.settings.items())
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def restart(self) -> float:
        """`pg_ctl restart -m fast`: every session is ended, the server comes back on the same
        port. Returns how long it took (seconds)."""
        began = time.monotonic()
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w", "restart")
        return time.monotonic() - began

    def terminate_backends(self, database: str) -> int:
        """pg_terminate_backend() of every session on `database`; how many were ended."""
        with psycopg.connect(self.admin_conninfo, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            ).fetchone()
        return int(row[0]) if row else 0

    def create_database(self, name: str) -> None:
        with psycopg.connect(self.admin_conninfo, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_postgres(**settings: str) -> Iterator[PrivatePostgres]:
    """A started private server (skips the test without PostgreSQL's binaries); `settings` are
    server settings, e.g. `synchronous_commit="off"`."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        import pytest

        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    server = PrivatePostgres(bin_dir, settings)
    try:
        server.start()
        yield server
    finally:
        server.stop()
