"""`python -m sync_service.emulator [--port N] [--seed S] [--accounts K] [--locations L]
[--reviews R] [--quota Q] [--api-quota API=N ...] [--messy]`: serve the Google emulator until
SIGTERM or SIGINT.

Each option also reads its environment variable (EMULATOR_PORT, EMULATOR_SEED,
EMULATOR_ACCOUNTS, EMULATOR_LOCATIONS, EMULATOR_REVIEWS, EMULATOR_QUOTA_PER_MINUTE,
EMULATOR_API_QUOTAS as `api=n,api=n`, EMULATOR_MESSY, EMULATOR_HOST); an option on the
command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys

from service_runtime.cli import environment_epilog
from service_runtime.config import ConfigError, Env
from sync_service.emulator.faults import Api
from sync_service.emulator.server import EmulatorServer

log = logging.getLogger("sync_service.emulator")


def _parser(env: Env) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sync_service.emulator",
        description="A local emulator of Google's Business Profile APIs. Each option also "
        "reads its environment variable; an option on the command line wins.",
        epilog=environment_epilog(
            [
                ("EMULATOR_HOST", "127.0.0.1"),
                ("EMULATOR_PORT", "8085"),
                ("EMULATOR_SEED", "1"),
                ("EMULATOR_ACCOUNTS", "3"),
                ("EMULATOR_LOCATIONS", "5"),
                ("EMULATOR_REVIEWS", "50"),
                ("EMULATOR_QUOTA_PER_MINUTE", "300"),
                ("EMULATOR_API_QUOTAS", "api=n,api=n"),
                ("EMULATOR_MESSY", "false"),
            ]
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host", default=env.parsed("EMULATOR_HOST", "127.0.0.1", kind="host", parse=_host)
    )
    parser.add_argument(
        "--port", type=int, default=env.int("EMULATOR_PORT", 8085, minimum=0, maximum=65535)
    )
    parser.add_argument(
        "--seed", type=int, default=env.int("EMULATOR_SEED", 1, minimum=0, maximum=2**31)
    )
    parser.add_argument(
        "--accounts",
        type=int,
        default=env.int("EMULATOR_ACCOUNTS", 3, minimum=0, maximum=10_000),
        help="accounts/1 .. accounts/K",
    )
    parser.add_argument(
        "--locations",
        type=int,
        default=env.int("EMULATOR_LOCATIONS", 5, minimum=0, maximum=10_000),
        help="locations per account",
    )
    parser.add_argument(
        "--reviews",
        type=int,
        default=env.int("EMULATOR_REVIEWS", 50, minimum=0, maximum=100_000),
        help="reviews per location",
    )
    parser.add_argument(
        "--quota",
        type=int,
        default=env.int("EMULATOR_QUOTA_PER_MINUTE", 300, minimum=1, maximum=1_000_000),
        help="requests per minute per Google Cloud project (OAuth client id), for each API",
    )
    parser.add_argument(
        "--api-quota",
        action="append",
        metavar="API=N",
        default=None,
        help=f"another quota for one API ({', '.join(a.value for a in Api)}); repeatable",
    )
    parser.add_argument(
        "--messy",
        action=argparse.BooleanOptionalAction,
        default=env.bool("EMULATOR_MESSY", False),
        help="also give each seeded account an unverified, a suspended, a duplicate and a "
        "closed location",
    )
    return parser


_HOST = re.compile(r"^[A-Za-z0-9.:\-\[\]]+$")


def _host(raw: str) -> str:
    if not _HOST.match(raw):
        raise ConfigError(f"EMULATOR_HOST={raw!r} is not a host name or IP address")
    return raw


def _api_quotas(entries: list[str], source: str = "--api-quota") -> dict[str, int]:
    """`["reviews=100", "business_information=50"]` -> {"reviews": 100, ...}."""
    quotas: dict[str, int] = {}
    for entry in entries:
        api, _, limit = entry.partition("=")
        api = api.strip()
        if api not in {a.value for a in Api}:
            raise ConfigError(f"{source}: unknown API {api!r} in quota {entry!r}")
        try:
            quotas[api] = int(limit)
        except ValueError:
            raise ConfigError(f"{source}: quota {entry!r} is not API=N") from None
        if quotas[api] < 0:
            raise ConfigError(f"{source}: quota {entry!r} is negative")
    return quotas


def _env_api_quotas(raw: str) -> dict[str, int]:
    return _api_quotas([e for e in raw.split(",") if e.strip()], "EMULATOR_API_QUOTAS")


async def _serve(args: argparse.Namespace) -> None:
    server = EmulatorServer(
        seed=args.seed,
        accounts=args.accounts,
        locations_per_account=args.locations,
        reviews_per_location=args.reviews,
        quota_per_minute=args.quota,
        api_quotas=args.api_quotas,
        messy=args.messy,
    )
    port = await server.start(args.host, args.port)
    log.info(
        "Google emulator on http://%s:%d (seed %d: %d accounts x %d locations x %d reviews%s, "
        "quota %s); set GBP_API_ROOT=http://%s:%d",
        args.host,
        port,
        args.seed,
        args.accounts,
        args.locations,
        args.reviews,
        ", messy" if args.messy else "",
        ", ".join(f"{a.value} {server.state.quota_for(a)}/min" for a in Api),
        args.host,
        port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def parse_args(argv: list[str] | None, env: Env) -> argparse.Namespace:
    """The options, from the command line over the environment; raises ConfigError."""
    args = _parser(env).parse_args(argv)
    if args.api_quota is not None:
        args.api_quotas = _api_quotas(args.api_quota)
    else:
        quotas: dict[str, int] = env.parsed(
            "EMULATOR_API_QUOTAS", {}, kind="api_quotas", parse=_env_api_quotas
        )
        args.api_quotas = quotas
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        args = parse_args(argv, Env())
    except ConfigError as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(args))
    except OSError as exc:  # the address is taken, or not one of this machine's
        print(
            f"emulator: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
