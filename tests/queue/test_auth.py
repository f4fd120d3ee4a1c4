"""Who may call what: credentials, roles, and ownership, over a real channel and as a unit.

No credentials or bad ones: UNAUTHENTICATED. The wrong role: PERMISSION_DENIED. Another user's
account or job: NOT_FOUND, exactly as if it did not exist. Health and reflection are open.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid

import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gmbsync.queue.v1 import queue_service_pb2 as pb
from service_runtime.auth import AuthError, AuthSettings, Principal, Role, authenticate
from tests.conftest import (
    ADMIN_USER,
    TEST_JWT_SECRET,
    TEST_TRIGGER_SECRET,
    WORKER_METADATA,
    bearer,
)
from tests.queue.helpers import job_row, rpc_error

SETTINGS = AuthSettings(jwt_secret=TEST_JWT_SECRET, trigger_secret=TEST_TRIGGER_SECRET)
USER_A = uuid.UUID("00000000-0000-4000-8000-0000000000a1")
USER_B = uuid.UUID("00000000-0000-4000-8000-0000000000b2")


def _b64(data: dict[str, object]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def claims(**overrides: object) -> dict[str, object]:
    values: dict[str, object] = {
        "sub": str(USER_A),
        "role": "authenticated",
        "iat": int(time.time()),
        "exp": int(time.time()) + 3600,
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def signed(secret: str = TEST_JWT_SECRET, **overrides: object) -> str:
    return jwt.encode(claims(**overrides), secret, algorithm="HS256")


def unsigned_alg_none() -> str:
    """A token that claims `alg: none`, crafted by hand: header.claims. with no signature."""
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims(role='admin'))}."


def with_token(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


BAD_CREDENTIALS: dict[str, tuple[tuple[str, str], ...]] = {
    "no credentials": (),
    "bad signature": with_token(signed("another-secret-that-is-long-enough-for-hs256")),
    "expired token": with_token(signed(exp=int(time.time()) - 3600)),
    "alg none token": with_token(unsigned_alg_none()),
    "unknown role": with_token(signed(role="superuser")),
    "sub not a uuid": with_token(signed(sub="alice")),
    "missing exp": with_token(signed(exp=None)),
    "not a bearer scheme": (("authorization", f"Basic {signed()}"),),
    "wrong trigger secret": (("x-trigger-secret", "not-the-secret"),),
    "empty trigger secret": (("x-trigger-secret", ""),),
}


# -- authenticate(), as a unit ------------------------------------------------------------------


@pytest.mark.parametrize("case", list(BAD_CREDENTIALS))
def test_authenticate_refuses_bad_credentials(case):
    with pytest.raises(AuthError):
        authenticate(BAD_CREDENTIALS[case], SETTINGS)


def test_authenticate_reads_a_valid_user_token():
    principal = authenticate(with_token(signed()), SETTINGS)

    assert principal == Principal(role=Role.AUTHENTICATED, user_id=USER_A)
    assert not principal.sees_everything


@pytest.mark.parametrize("role", [Role.ADMIN, Role.SERVICE])
def test_authenticate_lets_admins_and_service_tokens_see_everything(role):
    principal = authenticate(with_token(signed(role=role.value)), SETTINGS)

    assert principal.role == role
    assert principal.sees_everything


def test_authenticate_counts_the_trigger_secret_as_service_role():
    principal = authenticate(WORKER_METADATA, SETTINGS)

    assert principal == Principal(role=Role.SERVICE, user_id=None)


def test_authenticate_accepts_a_token_expired_within_the_clock_skew_leeway():
    principal = authenticate(with_token(signed(exp=int(time.time()) - 5)), SETTINGS)

    assert principal.user_id == USER_A


def test_authenticate_refuses_any_trigger_secret_when_none_is_configured():
    no_trigger = AuthSettings(jwt_secret=TEST_JWT_SECRET, trigger_secret="")

    with pytest.raises(AuthError):
        authenticate((("x-trigger-secret", ""),), no_trigger)


def test_authenticate_refuses_tokens_when_no_jwt_secret_is_configured():
    no_jwt = AuthSettings(jwt_secret="", trigger_secret=TEST_TRIGGER_SECRET)
    # Signed by hand with the empty key an attacker would guess (PyJWT refuses to).
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(claims(role='admin'))}"
    mac = hmac.new(b"", signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"

    with pytest.raises(AuthError):
        authenticate(with_token(token), no_jwt)


def test_authenticate_says_an_alg_none_token_is_not_valid():
    with pytest.raises(AuthError, match="not valid"):
        authenticate(with_token(unsigned_alg_none()), SETTINGS)


# -- credentials over a real channel ------------------------------------------------------------


@pytest.mark.parametrize("case", list(BAD_CREDENTIALS))
@pytest.mark.parametrize("rpc", ["GetQueueStatus", "PickJobs", "GetDiagnostics"])
async def test_bad_credentials_are_unauthenticated(pg_queue, case, rpc):
    request = getattr(pb, f"{rpc}Request")()

    err = await rpc_error(getattr(pg_queue.stub, rpc)(request, metadata=BAD_CREDENTIALS[case]))

    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_valid_credentials_of_each_kind_are_accepted(pg_queue):
    for metadata in (bearer(USER_A), bearer(ADMIN_USER, Role.ADMIN), WORKER_METADATA):
        response = await pg_queue.stub.GetQueueStatus(pb.GetQueueStatusRequest(), metadata=metadata)
        assert response.stats.total == 0


# -- ownership: another user's things are NOT_FOUND -----------------------------------------------


async def _two_users(queue) -> tuple[pb.Job, pb.Job]:
    """A pending job of USER_A's account and one of USER_B's."""
    job_a = await queue.enqueue(await queue.add_account(USER_A))
    job_b = await queue.enqueue(await queue.add_account(USER_B))
    return job_a, job_b


async def test_a_user_reading_another_users_job_gets_not_found_like_a_missing_job(queue):
    _, job_b = await _two_users(queue)

    err = await rpc_error(
        queue.stub.GetJob(pb.GetJobRequest(job_id=job_b.id), metadata=bearer(USER_A))
    )
    missing_id = str(uuid.uuid4())
    missing = await rpc_error(
        queue.stub.GetJob(pb.GetJobRequest(job_id=missing_id), metadata=bearer(USER_A))
    )

    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details().replace(job_b.id, "ID") == missing.details().replace(missing_id, "ID")
    own = await queue.stub.GetJob(pb.GetJobRequest(job_id=job_b.id), metadata=bearer(USER_B))
    assert own.job.id == job_b.id


async def test_a_user_enqueueing_for_another_users_account_gets_not_found(queue):
    account_b = await queue.add_account(USER_B)

    err = await rpc_error(
        queue.stub.EnqueueSync(
            pb.EnqueueSyncRequest(account_id=str(account_b), sync_type=pb.SYNC_TYPE_FULL),
            metadata=bearer(USER_A),
        )
    )

    assert err.code() == grpc.StatusCode.NOT_FOUND
    listed = await queue.stub.ListJobs(pb.ListJobsRequest(), metadata=WORKER_METADATA)
    assert list(listed.jobs) == []


async def test_a_user_batch_enqueueing_another_users_account_gets_not_found(queue):
    account_a = await queue.add_account(USER_A)
    account_b = await queue.add_account(USER_B)
    items = [
        pb.EnqueueSyncRequest(account_id=str(a), sync_type=pb.SYNC_TYPE_FULL)
        for a in (account_a, account_b)
    ]

    err = await rpc_error(
        queue.stub.EnqueueSyncBatch(
            pb.EnqueueSyncBatchRequest(items=items), metadata=bearer(USER_A)
        )
    )

    assert err.code() == grpc.StatusCode.NOT_FOUND
    listed = await queue.stub.ListJobs(pb.ListJobsRequest(), metadata=WORKER_METADATA)
    assert list(listed.jobs) == []


async def test_a_user_enqueues_for_their_own_account(queue):
    account_a = await queue.add_account(USER_A)

    response = await queue.stub.EnqueueSync(
        pb.EnqueueSyncRequest(account_id=str(account_a), sync_type=pb.SYNC_TYPE_FULL),
        metadata=bearer(USER_A),
    )

    assert response.job.user_id == str(USER_A)
    assert response.message == "Sync job enqueued successfully"


async def test_a_user_cancelling_another_users_job_gets_not_found_and_the_job_stays(queue):
    _, job_b = await _two_users(queue)

    err = await rpc_error(
        queue.stub.CancelJob(pb.CancelJobRequest(job_id=job_b.id), metadata=bearer(USER_A))
    )

    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert (await job_row(queue.app.engine, job_b.id))["status"] == "pending"


async def test_a_user_retrying_another_users_job_gets_not_found(queue):
    _, job_b = await _two_users(queue)
    await queue.stub.CancelJob(pb.CancelJobRequest(job_id=job_b.id), metadata=bearer(USER_B))

    err = await rpc_error(
        queue.stub.RetryJob(pb.RetryJobRequest(job_id=job_b.id), metadata=bearer(USER_A))
    )

    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert (await job_row(queue.app.engine, job_b.id))["status"] == "cancelled"


async def test_list_jobs_shows_a_user_only_their_own_jobs(queue):
    job_a, job_b = await _two_users(queue)

    mine = await queue.stub.ListJobs(pb.ListJobsRequest(), metadata=bearer(USER_A))
    by_account = await queue.stub.ListJobs(
        pb.ListJobsRequest(account_id=job_b.account_id), metadata=bearer(USER_A)
    )
    everyone = await queue.stub.ListJobs(
        pb.ListJobsRequest(), metadata=bearer(ADMIN_USER, Role.ADMIN)
    )

    assert [j.id for j in mine.jobs] == [job_a.id]
    assert list(by_account.jobs) == []
    assert {j.id for j in everyone.jobs} == {job_a.id, job_b.id}


async def test_queue_status_counts_only_the_users_own_jobs(queue):
    job_a, _ = await _two_users(queue)

    status = await queue.stub.GetQueueStatus(pb.GetQueueStatusRequest(), metadata=bearer(USER_A))
    admin = await queue.stub.GetQueueStatus(
        pb.GetQueueStatusRequest(), metadata=bearer(ADMIN_USER, Role.ADMIN)
    )

    assert status.stats.total == 1
    assert status.stats.pending == 1
    assert [j.id for j in status.jobs] == [job_a.id]
    assert admin.stats.total == 2


async def test_a_user_listing_another_users_jobs_is_permission_denied(queue):
    await _two_users(queue)

    err = await rpc_error(
        queue.stub.ListJobs(pb.ListJobsRequest(user_id=str(USER_B)), metadata=bearer(USER_A))
    )
    own = await queue.stub.ListJobs(
        pb.ListJobsRequest(user_id=str(USER_A)), metadata=bearer(USER_A)
    )
    as_admin = await queue.stub.ListJobs(
        pb.ListJobsRequest(user_id=str(USER_B)), metadata=bearer(ADMIN_USER, Role.ADMIN)
    )

    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert len(own.jobs) == 1
    assert [j.user_id for j in as_admin.jobs] == [str(USER_B)]


# -- roles ----------------------------------------------------------------------------------------

WORKER_RPCS = [
    "PickJobs",
    "ExtendLease",
    "CompleteJob",
    "FailJob",
    "ReleaseJob",
    "ReportResults",
    "StartWorkerRun",
    "FinishWorkerRun",
]
OPERATOR_RPCS = ["GetDiagnostics", "MarkStaleJobs"]


@pytest.mark.parametrize("rpc", WORKER_RPCS)
@pytest.mark.parametrize("role", [Role.AUTHENTICATED, Role.ADMIN])
async def test_worker_rpcs_are_permission_denied_to_users_and_admins(pg_queue, rpc, role):
    request = getattr(pb, f"{rpc}Request")()

    err = await rpc_error(getattr(pg_queue.stub, rpc)(request, metadata=bearer(USER_A, role)))

    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_user_cannot_pick_and_no_job_is_leased(pg_queue):
    job = await pg_queue.enqueue(await pg_queue.add_account(USER_A))

    err = await rpc_error(
        pg_queue.stub.PickJobs(pb.PickJobsRequest(worker_id="sneaky"), metadata=bearer(USER_A))
    )

    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await job_row(pg_queue.app.engine, job.id))["status"] == "pending"


@pytest.mark.parametrize("rpc", OPERATOR_RPCS)
async def test_operator_rpcs_are_permission_denied_to_users(pg_queue, rpc):
    request = getattr(pb, f"{rpc}Request")()

    err = await rpc_error(getattr(pg_queue.stub, rpc)(request, metadata=bearer(USER_A)))

    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("rpc", OPERATOR_RPCS)
@pytest.mark.parametrize("who", ["admin token", "service_role token", "trigger secret"])
async def test_operator_rpcs_are_open_to_admins_and_workers(pg_queue, rpc, who):
    metadata = {
        "admin token": bearer(ADMIN_USER, Role.ADMIN),
        "service_role token": bearer(ADMIN_USER, Role.SERVICE),
        "trigger secret": WORKER_METADATA,
    }[who]
    request = getattr(pb, f"{rpc}Request")()

    response = await getattr(pg_queue.stub, rpc)(request, metadata=metadata)

    assert response.IsInitialized()
    if rpc == "GetDiagnostics":
        assert response.HasField("generated_at")
    else:
        assert response.requeued == 0


@pytest.mark.parametrize("who", ["service_role token", "trigger secret"])
async def test_workers_pick_and_complete(pg_queue, who):
    metadata = bearer(ADMIN_USER, Role.SERVICE) if who == "service_role token" else WORKER_METADATA
    job = await pg_queue.enqueue(await pg_queue.add_account(USER_A))

    picked = await pg_queue.stub.PickJobs(pb.PickJobsRequest(worker_id="w1"), metadata=metadata)
    [leased] = picked.jobs
    done = await pg_queue.stub.CompleteJob(
        pb.CompleteJobRequest(job_id=leased.id, lease_token=leased.lease_token), metadata=metadata
    )

    assert leased.id == job.id
    assert done.job.status == pb.JOB_STATUS_SUCCEEDED


async def test_the_trigger_secret_sees_every_users_jobs(queue):
    job_a, job_b = await _two_users(queue)

    listed = await queue.stub.ListJobs(pb.ListJobsRequest(), metadata=WORKER_METADATA)

    assert {j.id for j in listed.jobs} == {job_a.id, job_b.id}


# -- open services --------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["", "gmbsync.queue.v1.QueueService"])
async def test_health_check_needs_no_credentials(pg_queue, service):
    stub = health_pb2_grpc.HealthStub(pg_queue.channel)

    response = await stub.Check(health_pb2.HealthCheckRequest(service=service))

    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_needs_no_credentials(pg_queue):
    stub = reflection_pb2_grpc.ServerReflectionStub(pg_queue.channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )

    responses = [response async for response in call]

    [answer] = responses
    names = {s.name for s in answer.list_services_response.service}
    assert {"gmbsync.queue.v1.QueueService", "grpc.health.v1.Health"} <= names
