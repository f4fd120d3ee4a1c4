"""`python -m clients.healthcheck HOST:PORT [SERVICE]`: exit 0 if the server reports SERVING.

For container health checks and start-up scripts: it asks the standard `grpc.health.v1.Health`
service that both servers serve, needs no credentials and prints one line. It dials with TLS
when the client TLS settings say so (GRPC_TLS, GRPC_TLS_CA_FILE, ...; see docs/tls.md); a bad
setting exits 2 with one line.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc
from grpc_health.v1 import health_pb2

from clients.channel import create_channel
from service_runtime.config import ConfigError
from service_runtime.tls import ClientTls


def health_check_rpc(
    channel: grpc.aio.Channel,
) -> grpc.aio.UnaryUnaryMultiCallable[
    health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
]:
    """`grpc.health.v1.Health/Check` on `channel`, typed (the published stubs of
    `health_pb2_grpc.HealthStub` declare none of its methods)."""
    return channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )


async def check_health(
    target: str, service: str = "", *, timeout: float = 3.0, tls: ClientTls | None = None
) -> bool:
    """Whether the server at `target` reports `service` ("" = the whole server) as SERVING."""
    async with create_channel(target, tracing=False, tls=tls) as channel:
        check = health_check_rpc(channel)
        try:
            response = await check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.healthcheck", description=__doc__)
    parser.add_argument("target", help="host:port of a gmbsync gRPC server")
    parser.add_argument("service", nargs="?", default="", help="service name (default: server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    args = parser.parse_args(argv)
    try:
        tls = ClientTls.from_env()
    except ConfigError as exc:
        print(f"{parser.prog}: configuration error: {exc}", file=sys.stderr)
        return 2
    healthy = asyncio.run(check_health(args.target, args.service, timeout=args.timeout, tls=tls))
    print(f"{args.target}: {'SERVING' if healthy else 'NOT SERVING'}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
