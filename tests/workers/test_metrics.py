"""Worker metrics: what a pool reports to its observer, the queue gauges read on scrape, /metrics served."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from bus.errors import ConfigError
from bus.keys import Keys
from bus.partitions import partition_of
from bus.settings import Settings
from tests.conftest import make_settings
from tests.live import free_port
from tests.support import FAST_POOL, H, load, publish, publish_many, start_worker, write_routing
from workers.metrics import WorkerMetrics
from workers.ops.status import collect_status
from workers.supervision.runner import run_pool

pytestmark = pytest.mark.anyio

ROUTING = f"""
pools:
  alpha: {{{FAST_POOL}}}
routes:
  test.ok: {{alpha: ["{H}record"]}}
  test.poison: {{alpha: ["{H}always_fail"]}}
  test.permanent: {{alpha: ["{H}permanent"]}}
  test.later: {{alpha: ["{H}defer_once"]}}
"""


def sample(metrics: WorkerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_a_pool_reports_each_handler_run_with_its_outcome_and_duration(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, ROUTING)
    table = load(routing)
    await publish_many(aredis, keys, table, "test.ok", ["evt_1", "evt_2"])
    await publish(aredis, keys, table, "test.poison", "evt_bad")
    await publish(aredis, keys, table, "test.permanent", "evt_perm")
    await publish(aredis, keys, table, "test.later", "evt_later")
    metrics = WorkerMetrics()
    await run_pool(make_settings(prefix, routing_file=routing), "alpha", redis=aredis, burst=True,
                   observer=metrics)

    def outcome(handler: str, what: str) -> float | None:
        return sample(metrics, "fanout_handler_outcomes_total", pool="alpha", handler=H + handler,
                      outcome=what)

    assert outcome("record", "ok") == 2
    # max_attempts 3: two failed runs, then the third dead-letters the entry.
    assert outcome("always_fail", "failed") == 2
    assert outcome("always_fail", "dead") == 1
    assert outcome("permanent", "dead") == 1
    assert outcome("defer_once", "retry") == 1
    assert outcome("defer_once", "ok") == 1
    runs = sample(metrics, "fanout_handler_duration_seconds_count", pool="alpha", handler=H + "always_fail")
    assert runs == 3
    assert sample(metrics, "fanout_entries_in_flight", pool="alpha") == 0
    assert (sample(metrics, "fanout_read_batch_size_sum", pool="alpha") or 0) >= 5


async def test_queue_gauges_are_read_from_redis_and_match_status(
    aredis: aioredis.Redis, keys: Keys, tmp_path: Path
) -> None:
    table = load(write_routing(tmp_path, ROUTING))
    await publish_many(aredis, keys, table, "test.ok", ["evt_1", "evt_2", "evt_3"])
    await aredis.xreadgroup("alpha", "someone", {keys.stream("alpha"): ">"}, count=1)
    await aredis.xadd(keys.dead("alpha"), {"id": "evt_old"})
    metrics = WorkerMetrics()
    metrics.watch_pools(aredis, keys, ["alpha"])
    await metrics.refresh()
    status = (await collect_status(aredis, keys, ["alpha"], int(time.time() * 1000)))["pools"]["alpha"]

    def gauge(name: str) -> float | None:
        return sample(metrics, name, pool="alpha", partition="0")

    assert gauge("fanout_pool_stream_length") == status["stream_length"] == 3
    assert gauge("fanout_pool_pending") == status["pending"] == 1
    assert gauge("fanout_pool_lag") == status["lag"] == 2
    assert gauge("fanout_pool_consumers") == 1
    assert gauge("fanout_pool_dead_letters") == 1
    assert 0 <= (gauge("fanout_pool_oldest_pending_seconds") or -1) < 60


def ids_in_partitions(partitions: int, per_partition: int) -> dict[int, list[str]]:
    """Event ids whose objects (obj_<suffix>, as tests.support.event_body names them) land in each partition."""
    out: dict[int, list[str]] = {p: [] for p in range(partitions)}
    n = 0
    while any(len(ids) < per_partition for ids in out.values()):
        n += 1
        p = partition_of(f"obj_part{n}", partitions)
        if len(out[p]) < per_partition:
            out[p].append(f"evt_part{n}")
    return out


async def test_queue_gauges_have_one_series_per_partition(
    aredis: aioredis.Redis, prefix: str, tmp_path: Path
) -> None:
    keys = Keys(prefix, 2)
    table = load(write_routing(tmp_path, ROUTING))
    by_partition = ids_in_partitions(2, 2)
    await publish_many(aredis, keys, table, "test.ok", by_partition[0] + by_partition[1][:1])
    await aredis.xadd(keys.dead("alpha", 1), {"id": "evt_old"})
    metrics = WorkerMetrics()
    metrics.watch_pools(aredis, keys, ["alpha"])
    await metrics.refresh()
    assert sample(metrics, "fanout_pool_stream_length", pool="alpha", partition="0") == 2
    assert sample(metrics, "fanout_pool_stream_length", pool="alpha", partition="1") == 1
    assert sample(metrics, "fanout_pool_lag", pool="alpha", partition="1") == 1
    assert sample(metrics, "fanout_pool_dead_letters", pool="alpha", partition="0") == 0
    assert sample(metrics, "fanout_pool_dead_letters", pool="alpha", partition="1") == 1


async def test_a_pool_with_no_stream_yet_shows_zeros(aredis: aioredis.Redis, keys: Keys) -> None:
    metrics = WorkerMetrics()
    metrics.watch_pools(aredis, keys, ["nothing"])
    await metrics.refresh()
    assert sample(metrics, "fanout_pool_stream_length", pool="nothing", partition="0") == 0
    assert sample(metrics, "fanout_pool_dead_letters", pool="nothing", partition="0") == 0


def test_the_metrics_port_setting_must_be_a_port() -> None:
    assert Settings.from_env({"FANOUT_METRICS_PORT": "9101"}).metrics_port == 9101
    assert Settings.from_env({}).metrics_port is None
    with pytest.raises(ConfigError, match="FANOUT_METRICS_PORT must be a TCP port"):
        Settings.from_env({"FANOUT_METRICS_PORT": "ninety"})


async def test_fanout_worker_serves_metrics_on_the_port_from_the_environment(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, ROUTING)
    await publish(aredis, keys, load(routing), "test.ok", "evt_1")
    port = free_port()
    worker = start_worker(prefix, routing, tmp_path / "worker.log", "alpha",
                          FANOUT_METRICS_PORT=str(port))
    ok = {"pool": "alpha", "handler": H + "record", "outcome": "ok"}
    try:
        deadline = time.monotonic() + 15
        families: dict[str, Any] = {}
        # Until the worker has run the event's handler and says so.
        while not any(s.labels == ok and s.value == 1
                      for s in families.get("fanout_handler_outcomes", Empty).samples):
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            await asyncio.sleep(0.1)
            try:
                async with httpx.AsyncClient() as client:
                    answer = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
            except httpx.HTTPError:
                continue
            assert answer.status_code == 200
            families = {f.name: f for f in text_string_to_metric_families(answer.text)}
        lengths = families["fanout_pool_stream_length"].samples
        assert [(s.labels, s.value) for s in lengths] == [({"pool": "alpha", "partition": "0"}, 1)]
        assert "fanout_handler_duration_seconds" in families
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/other", timeout=1)).status_code == 404
    finally:
        worker.terminate()
        assert worker.wait(timeout=30) == 0


class Empty:
    samples: tuple[Any, ...] = ()


def test_a_taken_metrics_port_stops_the_worker_with_exit_2(prefix: str, tmp_path: Path) -> None:
    import socket

    routing = write_routing(tmp_path, ROUTING)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        log = tmp_path / "worker.log"
        worker = start_worker(prefix, routing, log, "alpha", "--metrics-port", str(port),
                              "--metrics-host", "127.0.0.1")
        try:
            assert worker.wait(timeout=30) == 2
        except subprocess.TimeoutExpired:
            worker.kill()
            raise
    assert f"cannot serve metrics on 127.0.0.1:{port}" in log.read_text()
