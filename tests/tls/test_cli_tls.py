"""The `gmbsync` CLI and the blocking clients dial a TLS QueueService with the GRPC_TLS_*
settings the worker reads; plain text when none is set."""

from __future__ import annotations

import asyncio

import pytest

from clients import Credentials
from clients.blocking import BlockingQueueClient
from clients.cli.exitcodes import ExitCode
from clients.errors import Unavailable
from service_runtime.auth import Role
from tests.cli.conftest import run_cli, token_for
from tests.conftest import ADMIN_USER, TEST_TRIGGER_SECRET
from tests.tls.conftest import Pki


def _env(address: str, **tls: str) -> dict[str, str]:
    return {"QUEUE_ADDR": address, "GMBSYNC_TOKEN": token_for(ADMIN_USER, Role.ADMIN), **tls}


async def test_the_cli_reaches_a_tls_server_trusting_the_ca_it_is_given(
    pki: Pki, tls_queue: str
) -> None:
    result = await run_cli(
        "status", "--json", env=_env(tls_queue, GRPC_TLS_CA_FILE=str(pki.ca.cert_file))
    )

    assert result.code == ExitCode.OK, result.stderr
    assert result.json()["stats"]["total"] == 0


async def test_the_cli_without_tls_settings_cannot_reach_a_tls_server(tls_queue: str) -> None:
    result = await run_cli("status", "--timeout", "3", env=_env(tls_queue))

    assert result.code == ExitCode.UNAVAILABLE, result.stderr


async def test_the_cli_presents_its_client_certificate_under_mutual_tls(
    pki: Pki, mtls_queue: str
) -> None:
    env = _env(
        mtls_queue,
        GRPC_TLS_CA_FILE=str(pki.ca.cert_file),
        GRPC_TLS_CERT_FILE=str(pki.client.cert_file),
        GRPC_TLS_KEY_FILE=str(pki.client.key_file),
    )

    result = await run_cli("status", "--json", env=env)

    assert result.code == ExitCode.OK, result.stderr


@pytest.mark.parametrize(
    ("tls", "named"),
    [
        ({"GRPC_TLS_CA_FILE": "/nonexistent/ca.pem"}, "GRPC_TLS_CA_FILE"),
        ({"GRPC_TLS_CERT_FILE": "/nonexistent/client.pem"}, "GRPC_TLS_KEY_FILE"),
    ],
)
async def test_a_bad_tls_setting_is_a_usage_error_naming_it(
    tls_queue: str, tls: dict[str, str], named: str
) -> None:
    result = await run_cli("status", env=_env(tls_queue, **tls))

    assert result.code == ExitCode.USAGE
    assert named in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_blocking_client_with_tls_is_served_and_one_without_is_not(
    pki: Pki, tls_queue: str
) -> None:
    credentials = Credentials.trigger_secret(TEST_TRIGGER_SECRET)

    def status(tls: bool) -> int:
        with BlockingQueueClient.connect(
            tls_queue, credentials, timeout=3, tls=pki.client_tls() if tls else None
        ) as queue:
            return queue.get_queue_status().stats.total

    # In threads: the server runs on this test's event loop.
    assert await asyncio.to_thread(status, True) == 0
    with pytest.raises(Unavailable):
        await asyncio.to_thread(status, False)
