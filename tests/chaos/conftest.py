"""The chaos suite's system (one per session: started once, healed between faults) and its table.

Sizes come from the environment so that CI runs a bounded suite and a person a larger one:
`CHAOS_JOBS` (jobs per fault, default 100) and `CHAOS_SYNC_DOWN` (seconds SyncService stays
dead, default 10). At the end of the session the table of every fault is printed and written to
`var/chaos-report.json`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator, Iterator

import pytest

import migrations
from clients import Credentials, SyncClient
from tests.chaos.cluster import ROOT, Cluster
from tests.chaos.oracle import FaultReport
from tests.conftest import TEST_TRIGGER_SECRET
from tests.e2e.conftest import OWNER
from tests.faults.private_postgres import PrivatePostgres, private_postgres

DATABASE = "chaos"
CHAOS_JOBS = int(os.environ.get("CHAOS_JOBS", "100"))
CHAOS_SYNC_DOWN = float(os.environ.get("CHAOS_SYNC_DOWN", "10"))
REPORT_PATH = ROOT / "var" / "chaos-report.json"
# Every process's log, kept after the session for whoever reads a failure.
LOG_DIR = ROOT / "var" / "chaos-logs"

# Every fault's line, in the order run; printed by pytest_terminal_summary.
REPORTS: list[FaultReport] = []

COLUMNS = [
    ("fault", "fault", "{}"),
    ("jobs", "jobs", "{}"),
    ("succeeded", "ok", "{}"),
    ("failed", "failed", "{}"),
    ("pending_with_attempts_left", "pending", "{}"),
    ("lost", "lost", "{}"),
    ("run_twice", "run twice", "{}"),
    ("stale_accepted", "stale accepted", "{}"),
    ("stale_refused", "stale refused", "{}"),
    ("resynced", "resynced", "{}"),
    ("recover_s", "recover s", "{:.2f}"),
    ("drain_s", "drain s", "{:.1f}"),
]


def chaos_table(reports: list[FaultReport]) -> list[str]:
    rows = [[fmt.format(getattr(r, key)) for key, _title, fmt in COLUMNS] for r in reports]
    titles = [title for _key, title, _fmt in COLUMNS]
    widths = [max(len(t), *(len(row[i]) for row in rows)) for i, t in enumerate(titles)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return [line(titles), *(line(row) for row in rows)]


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    if not REPORTS:
        return
    terminalreporter.section("chaos: every fault, every job")
    for text in chaos_table(REPORTS):
        terminalreporter.write_line(text)
    notes = [f"{r.fault}: {r.note}" for r in REPORTS if r.note]
    for note in notes:
        terminalreporter.write_line(note)
    REPORT_PATH.parent.mkdir(exist_ok=True)
    REPORT_PATH.write_text(
        json.dumps(
            {"jobs_per_fault": CHAOS_JOBS, "faults": [r.as_dict() for r in REPORTS]}, indent=2
        )
        + "\n"
    )
    terminalreporter.write_line(
        f"written to {REPORT_PATH.relative_to(ROOT)}; process logs in {LOG_DIR.relative_to(ROOT)}/"
    )


@pytest.fixture(scope="session")
def chaos_pg() -> Iterator[PrivatePostgres]:
    # No fsync wait per commit: the faults restart PostgreSQL cleanly (`-m fast` writes every
    # commit out) and never crash it, so no acknowledged commit can be lost, and a disk shared
    # with other work does not set the pace of the whole suite.
    with private_postgres(synchronous_commit="off") as server:
        server.create_database(DATABASE)
        migrations.upgrade(server.url(DATABASE))
        yield server


@pytest.fixture(scope="session")
async def cluster(chaos_pg: PrivatePostgres) -> AsyncIterator[Cluster]:
    """The system, started once; every account of the emulator connected to it."""
    shutil.rmtree(LOG_DIR, ignore_errors=True)
    LOG_DIR.mkdir(parents=True)
    running = Cluster(pg=chaos_pg, database=DATABASE, logs=LOG_DIR, accounts=CHAOS_JOBS)
    running.build()
    try:
        await asyncio.to_thread(running.start)
        running.account_ids = await _connect_accounts(running)
        yield running
    finally:
        await asyncio.to_thread(running.stop)


async def _connect_accounts(running: Cluster) -> list[str]:
    sync = SyncClient.connect(running.sync_addr, Credentials.trigger_secret(TEST_TRIGGER_SECRET))
    try:
        gate = asyncio.Semaphore(16)

        async def connect(n: int) -> str:
            async with gate:
                response = await sync.connect_account(
                    user_id=str(OWNER),
                    account_name=f"Chaos Business {n}",
                    google_account_id=f"accounts/{n}",
                    refresh_token=f"emulator-refresh-token-{n}",
                )
                return response.account.id

        return list(await asyncio.gather(*(connect(n) for n in range(1, running.accounts + 1))))
    finally:
        await sync.close()
