"""`python -m sync_service.emulator [--port N] [--seed S] [--accounts K] [--locations L]
[--reviews R] [--quota Q]`: serve the Google emulator until SIGTERM or SIGINT.

Each option also reads its environment variable (EMULATOR_PORT, EMULATOR_SEED,
EMULATOR_ACCOUNTS, EMULATOR_LOCATIONS, EMULATOR_REVIEWS, EMULATOR_QUOTA_PER_MINUTE,
EMULATOR_HOST); an option on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from service_runtime.config import ConfigError, Env
from sync_service.emulator.server import EmulatorServer

log = logging.getLogger("sync_service.emulator")


def _parser(env: Env) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sync_service.emulator",
        description="A local emulator of Google's Business Profile APIs.",
    )
    parser.add_argument("--host", default=env.str("EMULATOR_HOST", "127.0.0.1"))
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
        help="requests per minute per Google Cloud project (OAuth client id)",
    )
    return parser


async def _serve(args: argparse.Namespace) -> None:
    server = EmulatorServer(
        seed=args.seed,
        accounts=args.accounts,
        locations_per_account=args.locations,
        reviews_per_location=args.reviews,
        quota_per_minute=args.quota,
    )
    port = await server.start(args.host, args.port)
    log.info(
        "Google emulator on http://%s:%d (seed %d: %d accounts x %d locations x %d reviews, "
        "quota %d/min); set GBP_API_ROOT=http://%s:%d",
        args.host,
        port,
        args.seed,
        args.accounts,
        args.locations,
        args.reviews,
        args.quota,
        args.host,
        port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        args = _parser(Env()).parse_args(argv)
    except ConfigError as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
