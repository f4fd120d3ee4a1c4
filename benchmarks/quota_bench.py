"""Three SyncService replicas share one Google quota: do they keep within it, and how much of
it do they use?

Every part runs as its own process, as in production, on a scratch PostgreSQL database: the
Google emulator, QueueService, 3 SyncService replicas and 4 workers (`python -m clients.worker`,
spread over the replicas). Google's quota is per API with a short window (300 requests per 30 s
by default), enforced in the emulator process by a gate in front of it that also stamps every
API request on arrival. 200 accounts x 5 locations x 5 reviews are connected and one full sync
is enqueued for each: 200 locations.list and 1,000 reviews.list calls, so the reviews quota is
the bottleneck. The run ends when every job has finished (or at the time limit); then:

- jobs succeeded, failed, retried;
- 429s: requests the quota rejected (the gate's per-API windows and the emulator's own);
- per API: accepted requests per window over its busy period (first to last request) as a
  share of the quota, and the most requests any one window held.

    python -m benchmarks --quota-only         # or: python -m benchmarks.quota_bench (JSON)

Progress and the processes' own output go to stderr; Ctrl-C or SIGTERM stops every process.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import functools
import json
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from cryptography.fernet import Fernet

from clients import Credentials, QueueClient
from gmbsync.queue.v1 import queue_service_pb2 as qpb
from migrations.scratch import scratch_database
from scripts.run_local import (
    DEMO_USER_ID,
    Child,
    _wait_for_health,
    _wait_for_port,
    connect_demo_accounts,
)
from service_runtime.auth import Role, issue_token
from sync_service.emulator import EmulatorServer
from sync_service.emulator.server import google_error
from sync_service.quota import BucketShape, GoogleApiName

ROOT = Path(__file__).resolve().parents[1]
CLIENT_ID = "bench-client.apps.googleusercontent.com"
_SERVICES = {
    GoogleApiName.ACCOUNT_MANAGEMENT: "mybusinessaccountmanagement.googleapis.com",
    GoogleApiName.BUSINESS_INFORMATION: "mybusinessbusinessinformation.googleapis.com",
    GoogleApiName.REVIEWS: "mybusiness.googleapis.com",
}
PROGRESS_EVERY = 5.0


@dataclass(frozen=True)
class Workload:
    """The size of a run."""

    accounts: int = 200
    locations: int = 5
    reviews: int = 5  # one page per location
    quota: int = 300  # requests per window per API, at the emulator and in SyncService
    # Google's window is a minute; half of it keeps the run under two minutes while the 1 s
    # latency allowance costs what it would in production (a 10 s window would cost 10 %).
    window: float = 30.0
    replicas: int = 3
    workers: int = 4
    time_limit: float = 600.0


def _progress(message: str) -> None:
    print(f"[quota-bench] {message}", file=sys.stderr, flush=True)


# --- The emulator process ------------------------------------------------------------------------


def _api_of(path: str) -> GoogleApiName | None:
    if path.startswith("/v4/") and path.endswith("/reviews"):
        return GoogleApiName.REVIEWS
    if path.startswith("/v1/accounts"):
        if path.endswith("/locations"):
            return GoogleApiName.BUSINESS_INFORMATION
        return GoogleApiName.ACCOUNT_MANAGEMENT
    return None


class QuotaGate:
    """Google's per-API quota in front of the emulator: a sliding window of `window` seconds per
    API (one project in this benchmark), counted on arrival, as Google counts. It records every
    API request (API, arrival, status) for the figures."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.started = time.monotonic()
        self._windows = {api: collections.deque[float]() for api in GoogleApiName}
        self.calls: list[tuple[str, float, int]] = []

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        api = _api_of(request.path)
        if api is None:
            return await handler(request)
        now = time.monotonic()
        window = self._windows[api]
        while window and window[0] <= now - self.window:
            window.popleft()
        if len(window) >= self.limit:
            response: web.StreamResponse = self._rejection(api)
        else:
            window.append(now)
            response = await handler(request)
        self.calls.append((api.value, now - self.started, response.status))
        return response

    def _rejection(self, api: GoogleApiName) -> web.Response:
        service = _SERVICES[api]
        return google_error(
            429,
            f"Quota exceeded for quota metric 'Requests' and limit 'Requests per minute' of "
            f"service '{service}' for consumer 'project_number:{CLIENT_ID}'.",
            details=[
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "RATE_LIMIT_EXCEEDED",
                    "domain": "googleapis.com",
                    "metadata": {"service": service, "quota_limit_value": str(self.limit)},
                }
            ],
        )

    async def report(self, request: web.Request) -> web.Response:
        """GET /__bench/calls: every API request so far ([api, seconds, status])."""
        return web.json_response({"window": self.window, "limit": self.limit, "calls": self.calls})


async def serve_emulator(args: argparse.Namespace) -> None:
    """The emulator with the quota gate, until SIGTERM or SIGINT."""
    # The emulator's own quota counts a project's APIs together: three APIs' worth of it, so
    # that only the gate's per-API windows bind (as Google's do).
    server = EmulatorServer(
        seed=1,
        accounts=args.accounts,
        locations_per_account=args.locations,
        reviews_per_location=args.reviews,
        quota_per_minute=3 * args.quota,
        quota_window=args.window,
    )
    gate = QuotaGate(args.quota, args.window)
    server.app.middlewares.append(gate.middleware)
    server.app.router.add_get("/__bench/calls", gate.report)
    await server.start("127.0.0.1", args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


# --- The run ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def most_in_a_window(times: list[float], window: float) -> int:
    """The most of `times` in one window (t - window, t], as the gate counts."""
    ordered = sorted(times)
    most, start = 0, 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window:
            start += 1
        most = max(most, end - start + 1)
    return most


async def run_quota_benchmark(workload: Workload | None = None) -> dict[str, Any]:
    """Runs the benchmark; returns its figures. Everything it started is stopped on return,
    on error and on cancellation (Ctrl-C)."""
    workload = workload or Workload()
    # SIGTERM cancels the run as Ctrl-C does, so that the processes are stopped, not orphaned
    # (each has a session of its own: a signal to this one does not reach them).
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    terminated = asyncio.Event()

    def on_sigterm() -> None:
        terminated.set()
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    # The processes' output (forwarded by run_local's Child) goes to stderr with the progress:
    # stdout is for the figures.
    try:
        with contextlib.redirect_stdout(sys.stderr), scratch_database("gmbsync_bench_quota") as url:
            return await _run(url, workload)
    except asyncio.CancelledError:
        if terminated.is_set():
            _progress("terminated; every process was stopped")
            raise SystemExit(128 + signal.SIGTERM) from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def _run(database_url: str, workload: Workload) -> dict[str, Any]:
    python = sys.executable
    trigger, jwt_secret = secrets.token_urlsafe(24), secrets.token_urlsafe(48)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "DATABASE_URL": database_url,
        "JWT_SECRET": jwt_secret,
        "TRIGGER_SECRET": trigger,
        "TOKEN_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "LOG_LEVEL": "WARNING",
        "OTEL_TRACES_EXPORTER": "none",
    }
    emulator_port, queue_port = _free_port(), _free_port()
    emulator_url = f"http://127.0.0.1:{emulator_port}"
    queue_addr = f"127.0.0.1:{queue_port}"
    sync_addrs = [f"127.0.0.1:{_free_port()}" for _ in range(workload.replicas)]
    sync_env = {
        **env,
        "GBP_API_ROOT": emulator_url,
        "GOOGLE_OAUTH_CLIENT_ID": CLIENT_ID,
        "GOOGLE_OAUTH_CLIENT_SECRET": "bench-secret",
        "GBP_QUOTA_PER_MINUTE": str(workload.quota),
        "GBP_QUOTA_WINDOW": f"{workload.window}s",
    }
    emulator_argv = [
        *(python, "-m", "benchmarks.quota_bench", "--serve-emulator"),
        *("--port", str(emulator_port), "--accounts", str(workload.accounts)),
        *("--locations", str(workload.locations), "--reviews", str(workload.reviews)),
        *("--quota", str(workload.quota), "--window", str(workload.window)),
    ]
    started: list[Child] = []

    async def start(child: Child, ready: Callable[[Child], Awaitable[None]] | None) -> None:
        await child.start()
        started.append(child)
        if ready is not None:
            await ready(child)

    try:
        _progress(f"starting the emulator, QueueService and {workload.replicas} SyncServices")
        await start(
            Child("emulator", emulator_argv, env),
            lambda c: _wait_for_port("127.0.0.1", emulator_port, c),
        )
        await start(
            Child(
                "queue",
                [python, "-m", "queue_service"],
                # Only the benchmark's own jobs: no periodic syncs of the connected accounts.
                # Its user enqueues every account in batches of 1000: no per-user rate limit.
                {
                    **env,
                    "QUEUE_LISTEN_ADDR": queue_addr,
                    "SCHEDULER_ENABLED": "false",
                    "ENQUEUE_RATE_PER_USER": "0",
                },
            ),
            lambda c: _wait_for_health(queue_addr, c),
        )
        for n, addr in enumerate(sync_addrs, 1):
            await start(
                Child(
                    f"sync-{n}",
                    [python, "-m", "sync_service"],
                    {**sync_env, "SYNC_LISTEN_ADDR": addr},
                ),
                functools.partial(_wait_for_health, addr),
            )
        _progress(f"connecting {workload.accounts} accounts")
        account_ids = await connect_demo_accounts(sync_addrs[0], trigger, workload.accounts)
        token = issue_token(jwt_secret, user_id=DEMO_USER_ID, role=Role.AUTHENTICATED)
        async with QueueClient.connect(queue_addr, Credentials.bearer(token)) as queue:
            items = [
                qpb.EnqueueSyncRequest(account_id=a, sync_type=qpb.SYNC_TYPE_FULL)
                for a in account_ids
            ]
            for first in range(0, len(items), 1000):
                await queue.enqueue_sync_batch(items[first : first + 1000], timeout=30)
            _progress(f"{len(items)} full syncs enqueued; starting {workload.workers} workers")
            for n in range(workload.workers):
                worker_env = {
                    **env,
                    "WORKER_ID": f"bench-worker-{n + 1}",
                    "QUEUE_ADDR": queue_addr,
                    "SYNC_ADDR": sync_addrs[n % len(sync_addrs)],
                }
                worker = Child(f"worker-{n + 1}", [python, "-m", "clients.worker"], worker_env)
                await start(worker, None)
            began = time.monotonic()
            async with httpx.AsyncClient(base_url=emulator_url, timeout=30) as emulator:
                finished = await _wait_for_jobs(queue, emulator, workload, began, started)
                wall = time.monotonic() - began
                jobs = await _job_figures(queue)
                calls = (await emulator.get("/__bench/calls")).json()["calls"]
                state = (await emulator.get("/__control/state")).json()
        return _figures(workload, jobs, calls, state, wall, finished)
    finally:
        _progress("stopping every process")
        for child in reversed(started):
            await child.stop()


async def _wait_for_jobs(
    queue: QueueClient,
    emulator: httpx.AsyncClient,
    workload: Workload,
    began: float,
    children: list[Child],
) -> bool:
    """Polls until every job has finished (True) or the time limit passed (False)."""
    last_report = 0.0
    while True:
        stats = (await queue.get_queue_status(timeout=10)).stats
        done = stats.succeeded + stats.failed + stats.cancelled
        elapsed = time.monotonic() - began
        if done >= workload.accounts:
            _progress(f"all {done} jobs finished in {elapsed:.0f} s")
            return True
        dead = [c.name for c in children if not c.running]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited during the run")
        if elapsed > workload.time_limit:
            _progress(f"time limit of {workload.time_limit:.0f} s reached with {done} jobs done")
            return False
        if elapsed - last_report >= PROGRESS_EVERY:
            last_report = elapsed
            calls = (await emulator.get("/__bench/calls")).json()["calls"]
            now = max((t for _api, t, _status in calls), default=0.0)
            recent = collections.Counter(
                api for api, t, status in calls if status != 429 and t > now - workload.window
            )
            rejected = sum(1 for _api, _t, status in calls if status == 429)
            _progress(
                f"{elapsed:5.0f} s: {stats.succeeded} succeeded, {stats.failed} failed, "
                f"{stats.processing} running, {stats.pending} pending; last window: "
                f"{recent['reviews']} reviews, {recent['business_information']} locations "
                f"requests (quota {workload.quota}); 429s so far: {rejected}"
            )
        await asyncio.sleep(0.5)


async def _job_figures(queue: QueueClient) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    page_token = ""
    while True:
        page = await queue.list_jobs(page_size=500, page_token=page_token, timeout=30)
        for job in page.jobs:
            counts[qpb.JobStatus.Name(job.status).removeprefix("JOB_STATUS_").lower()] += 1
            counts["retried"] += job.attempts > 1
        page_token = page.next_page_token
        if not page_token:
            break
    return {
        "succeeded": counts["succeeded"],
        "failed": counts["failed"],
        "unfinished": counts["pending"] + counts["processing"],
        "retried": counts["retried"],
    }


def _figures(
    workload: Workload,
    jobs: dict[str, int],
    calls: list[list[Any]],
    state: dict[str, Any],
    wall: float,
    finished: bool,
) -> dict[str, Any]:
    shape = BucketShape.for_quota(workload.quota, workload.window, 1.0)
    per_api: dict[str, Any] = {}
    gate_rejections = 0
    for api in GoogleApiName:
        accepted = [t for name, t, status in calls if name == api.value and status != 429]
        rejected = sum(1 for name, _t, status in calls if name == api.value and status == 429)
        gate_rejections += rejected
        if not accepted and not rejected:
            continue
        busy = max(accepted) - min(accepted) if len(accepted) > 1 else 0.0
        per_window = len(accepted) / busy * workload.window if busy else float(len(accepted))
        per_api[api.value] = {
            "requests_accepted": len(accepted),
            "rejected_429": rejected,
            "busy_seconds": round(busy, 1),
            "accepted_per_window": round(per_window, 1),
            "share_of_quota_pct": round(100 * per_window / workload.quota, 1),
            "most_in_one_window": most_in_a_window(accepted, workload.window),
        }
    return {
        "workload": {
            **{k: v for k, v in dataclasses.asdict(workload).items() if k != "time_limit"},
            "finished_within_time_limit": int(finished),
        },
        "wall_seconds": round(wall, 1),
        "jobs": jobs,
        "quota_rejections_429": gate_rejections + int(state["stats"]["quotaRejections"]),
        # The most a bucket can sustain (default 1 s latency allowance): the ceiling of the shares.
        "bucket_rate_share_of_quota_pct": round(
            100 * shape.rate * workload.window / workload.quota, 1
        ),
        "per_api": per_api,
    }


def _parser() -> argparse.ArgumentParser:
    defaults = Workload()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quota_bench", description=__doc__)
    parser.add_argument("--accounts", type=int, default=defaults.accounts)
    parser.add_argument("--locations", type=int, default=defaults.locations)
    parser.add_argument("--reviews", type=int, default=defaults.reviews)
    parser.add_argument("--quota", type=int, default=defaults.quota, help="per window per API")
    parser.add_argument("--window", type=float, default=defaults.window, help="seconds")
    parser.add_argument("--serve-emulator", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.serve_emulator:
        asyncio.run(serve_emulator(args))
        return 0
    workload = Workload(
        accounts=args.accounts,
        locations=args.locations,
        reviews=args.reviews,
        quota=args.quota,
        window=args.window,
    )
    try:
        figures = asyncio.run(run_quota_benchmark(workload))
    except KeyboardInterrupt:
        _progress("interrupted; every process was stopped")
        return 130
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
