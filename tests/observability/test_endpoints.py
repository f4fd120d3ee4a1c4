"""The metrics endpoints and what they hold: settings, ports, the hot path's own counters, and
the queue's state exported by the leading replica only."""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from clients.worker.config import load_config
from queue_service import metrics as queue_metrics
from queue_service.metrics import GaugeRefresher, MeteredScheduler
from queue_service.scheduler import ScheduleConfig
from queue_service.settings import QueueSettings
from service_runtime.config import ConfigError, Env, parse_metrics_addr
from service_runtime.metrics import LoopCounter, LoopHistogram, MetricsServer
from service_runtime.processes import PROCESS_INDEX_VAR
from sync_service.settings import SyncSettings
from tests.observability.conftest import scrape, total, value
from tests.queue.conftest import queue_settings, start_queue, stop_queue


def test_metrics_are_off_unless_an_address_is_set() -> None:
    assert QueueSettings.from_env(Env({})).metrics_addr is None
    assert SyncSettings.from_env(Env({})).metrics_addr is None
    assert load_config([], {"TRIGGER_SECRET": "s"}).metrics_addr == ""
    assert QueueSettings.from_env(Env({"QUEUE_METRICS_ADDR": "0.0.0.0:9464"})).metrics_addr == (
        "0.0.0.0",
        9464,
    )
    assert parse_metrics_addr("X", "off") is None
    assert parse_metrics_addr("X", "[::1]:9464") == ("::1", 9464)


@pytest.mark.parametrize("raw", ["9464", "localhost", "host:port", "host:70000", ":9464"])
def test_a_bad_metrics_address_names_its_setting(raw: str) -> None:
    with pytest.raises(ConfigError, match="QUEUE_METRICS_ADDR"):
        QueueSettings.from_env(Env({"QUEUE_METRICS_ADDR": raw}))
    with pytest.raises(ConfigError, match="SYNC_METRICS_ADDR"):
        SyncSettings.from_env(Env({"SYNC_METRICS_ADDR": raw}))
    with pytest.raises(ConfigError, match="WORKER_METRICS_ADDR"):
        load_config([], {"TRIGGER_SECRET": "s", "WORKER_METRICS_ADDR": raw})
    with pytest.raises(ConfigError, match="QUEUE_METRICS_REFRESH"):
        QueueSettings.from_env(Env({"QUEUE_METRICS_REFRESH": "1ms"}))


def two_free_ports_in_a_row() -> int:
    """A port p with p and p + 1 both free right now."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    pytest.fail("no two free ports in a row")


async def test_a_supervised_copy_serves_on_the_port_plus_its_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = two_free_ports_in_a_row()
    monkeypatch.setenv(PROCESS_INDEX_VAR, "1")
    server = MetricsServer(("127.0.0.1", port))
    try:
        assert server.start() == port + 1
        assert value(await scrape(port + 1), "grpc_server_handled_total") == 0  # it answers
    finally:
        server.stop()


def test_loop_metrics_expose_cumulative_buckets_sums_and_counts() -> None:
    registry = CollectorRegistry()
    counter = LoopCounter("t_things_total", "Things.", ("kind",), registry=registry)
    histogram = LoopHistogram("t_wait_seconds", "Waits.", buckets=(0.1, 1.0), registry=registry)
    counter.labels("a").inc()
    counter.labels("a").inc(2)
    for seconds in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(seconds)

    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    [things] = families["t_things"].samples
    assert (things.name, things.labels, things.value) == ("t_things_total", {"kind": "a"}, 3.0)
    samples = {(s.name, s.labels.get("le")): s.value for s in families["t_wait_seconds"].samples}
    assert samples[("t_wait_seconds_bucket", "0.1")] == 2  # le is inclusive
    assert samples[("t_wait_seconds_bucket", "1.0")] == 3
    assert samples[("t_wait_seconds_bucket", "+Inf")] == 4
    assert samples[("t_wait_seconds_count", None)] == 4
    assert samples[("t_wait_seconds_sum", None)] == pytest.approx(3.65)


async def test_only_the_leading_replica_exports_the_queue_state(pg_url: str, auth_settings) -> None:  # type: ignore[no-untyped-def]
    # The app's own refresher waits out the test: this one, driven by the test, is watched.
    queue = await start_queue(
        queue_settings(pg_url, auth_settings, metrics_refresh=timedelta(minutes=10))
    )
    leading = asyncio.Event()
    refresher = GaugeRefresher(queue.app.store, leading, timedelta(milliseconds=20))
    task = asyncio.create_task(refresher.run())
    server = MetricsServer(("127.0.0.1", 0))
    port = server.start()
    assert port is not None
    try:
        account = await queue.add_account()
        await queue.enqueue(account, priority=-3)
        queue_metrics.QUEUE_STATE.latest = None
        await asyncio.sleep(0)  # let the refresher run while not leading
        assert total(await scrape(port), "gmbsync_queue_jobs") == 0
        assert value(await scrape(port), "gmbsync_queue_state_read_timestamp_seconds") == 0

        leading.set()
        deadline = asyncio.get_running_loop().time() + 30
        while queue_metrics.QUEUE_STATE.latest is None:
            assert asyncio.get_running_loop().time() < deadline, "never exported"
            await asyncio.sleep(0.02)
        samples = await scrape(port)
        assert value(samples, "gmbsync_queue_jobs", status="pending", band="low") == 1
        assert value(samples, "gmbsync_queue_state_read_timestamp_seconds") > 0

        leading.clear()
        while queue_metrics.QUEUE_STATE.latest is not None:
            assert asyncio.get_running_loop().time() < deadline, "never withdrawn"
            await asyncio.sleep(0.02)
        assert total(await scrape(port), "gmbsync_queue_jobs") == 0
    finally:
        task.cancel()
        server.stop()
        await stop_queue(queue)


async def test_periodic_syncs_are_counted_apart_from_rpc_enqueues(pg_url, auth_settings) -> None:  # type: ignore[no-untyped-def]
    queue = await start_queue(queue_settings(pg_url, auth_settings))
    scheduler = MeteredScheduler(
        queue.app.store,
        ScheduleConfig(incremental_interval=timedelta(minutes=1), tick=timedelta(minutes=10)),
    )
    by_rpc = queue_metrics.ENQUEUED_RPC.value
    by_scheduler = queue_metrics.ENQUEUED_SCHEDULER.value
    try:
        for _ in range(3):
            await queue.add_account()
        report = await scheduler.run_pass()
    finally:
        await stop_queue(queue)
    assert report.enqueued == 3
    assert queue_metrics.ENQUEUED_SCHEDULER.value - by_scheduler == 3
    assert queue_metrics.ENQUEUED_RPC.value == by_rpc
