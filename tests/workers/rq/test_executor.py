"""`executor: rq` on the real Redis: the stream consumer enqueues, an RQ SimpleWorker (burst) runs.

Plain functions, not anyio: SimpleWorker runs each job in this (main) thread, and
the job calls asyncio.run. The thread timeout method, because RQ's own hard
timeout uses SIGALRM, which pytest-timeout's default method also uses.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from rq.job import Job

from bus import defaults
from bus.envelope import entry_body
from bus.keys import Keys
from bus.routing import RoutingTable
from tests.conftest import TEST_REDIS_URL, make_settings
from tests.handlers_for_tests import runs_key, where_key
from tests.rq_support import drain_rq, pending, rq_queue_of, work_burst
from tests.support import H, load, publish_many, start_worker, write_routing
from workers.ops.deadletter import list_dead
from workers.ops.status import collect_status
from workers.rq.queue import enqueue, entry_payload, job_id, job_kwargs, queue_name
from workers.supervision.runner import run_pool

pytestmark = pytest.mark.timeout(90, method="thread")

FAST = "concurrency: 8, max_attempts: 3, timeout_s: 1, backoff_base_s: 0.05, backoff_max_s: 0.2"
ROUTING = f"""
pools:
  iso: {{executor: rq, {FAST}}}
routes:
  test.many: {{iso: ["{H}record", "{H}sync_record"]}}
  test.retry: {{iso: ["{H}fail_twice", "{H}record"]}}
  test.slow: {{iso: ["{H}too_slow"]}}
  test.block: {{iso: ["{H}sync_too_slow"]}}
  test.defer: {{iso: ["{H}defer_once"]}}
  test.permanent: {{iso: ["{H}permanent", "{H}record"]}}
"""


def routing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str = ROUTING) -> Path:
    path = write_routing(tmp_path, text)
    monkeypatch.setenv("ROUTING_FILE", str(path))
    return path


def publish(keys: Keys, table: RoutingTable, event_type: str, ids: list[str], **obj: object) -> None:
    async def go() -> None:
        client = aioredis.Redis.from_url(TEST_REDIS_URL)
        try:
            await publish_many(client, keys, table, event_type, ids, **obj)
        finally:
            await client.aclose()

    asyncio.run(go())


def runs(client: redis.Redis, prefix: str, handler: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(runs_key(prefix, H + handler)).items()}


def stats(client: redis.Redis, keys: Keys, pool: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(keys.pool_stats(pool)).items()}


def test_every_event_runs_exactly_once_as_one_json_job_and_is_acked(
    sync_client: redis.Redis, prefix: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    routing = routing_file(tmp_path, monkeypatch)
    settings = make_settings(prefix, routing_file=routing)
    ids = [f"evt_{i:03d}" for i in range(40)]
    publish(keys, load(routing), "test.many", ids)

    asyncio.run(run_pool(settings, "iso", burst=True))
    queue = rq_queue_of(sync_client, prefix, "iso")
    assert queue.name == f"{prefix}-iso"
    assert queue.count == len(ids)
    assert pending(sync_client, keys, "iso") == len(ids)  # in RQ's hands, not acked yet
    assert runs(sync_client, prefix, "record") == {}
    first_entry = sync_client.xrange(keys.stream("iso"), count=1)[0]
    raw = sync_client.hgetall(Job.key_for(job_id(prefix, "iso", first_entry[0].decode(), 1)))
    payload = json.loads(zlib.decompress(raw[b"data"]))  # the JSON serializer: no pickle
    # The raw body, as text (the stream holds it compressed: the job gets it decoded).
    assert payload[3]["entry"]["body"] == entry_body(first_entry[1]).decode()
    assert "body_encoding" not in payload[3]["entry"]
    # The pool's timeout_s, plus the time the job keeps to record its outcome.
    assert raw[b"timeout"] == str(1 + defaults.RQ_RECORDING_MARGIN_S).encode()
    assert b"evt_" in raw[b"description"] and first_entry[1][b"body"] not in raw[b"description"]

    work_burst(sync_client, prefix, "iso")
    assert runs(sync_client, prefix, "record") == dict.fromkeys(ids, 1)
    assert runs(sync_client, prefix, "sync_record") == dict.fromkeys(ids, 1)
    assert pending(sync_client, keys, "iso") == 0
    assert stats(sync_client, keys, "iso") == {"processed": len(ids)}
    assert len(queue.finished_job_registry) == len(ids)
    assert drain_rq(settings, "iso", sync_client) == 1  # nothing left to do


def test_a_failed_job_is_retried_as_a_new_attempt_running_only_the_failed_handler(
    sync_client: redis.Redis, prefix: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    routing = routing_file(tmp_path, monkeypatch)
    settings = make_settings(prefix, routing_file=routing)
    publish(keys, load(routing), "test.retry", ["evt_retry"])
    started = time.monotonic()
    drain_rq(settings, "iso", sync_client)
    # Each round's consumer is new, yet a failed job's entry is retried after its backoff
    # (at most 0.2 s), not after a takeover's wait (timeout_s + 2 s): nobody is running it.
    assert time.monotonic() - started < 5
    assert runs(sync_client, prefix, "fail_twice") == {"evt_retry": 3}
    assert runs(sync_client, prefix, "record") == {"evt_retry": 1}  # the completion ledger
    assert stats(sync_client, keys, "iso") == {"processed": 1, "failed": 2, "retried": 2}
    entry_id = sync_client.xrange(keys.stream("iso"))[0][0].decode()
    queue = rq_queue_of(sync_client, prefix, "iso")
    assert sorted(queue.failed_job_registry.get_job_ids()) == [
        job_id(prefix, "iso", entry_id, 1), job_id(prefix, "iso", entry_id, 2)]
    assert queue.finished_job_registry.get_job_ids() == [job_id(prefix, "iso", entry_id, 3)]
    assert sync_client.exists(keys.ledger("iso", "evt_retry"), keys.retry_at("iso")) == 0
    # RQ logs each failure with the job's arguments attached to the record: never the raw body.
    failures = [r for r in caplog.records if r.name == "rq.worker" and hasattr(r, "kwargs")]
    assert len(failures) == 2
    assert all(r.kwargs == "[redacted]" for r in failures)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("event_type", "handler"), [("test.slow", "too_slow"), ("test.block", "sync_too_slow")])
def test_a_handler_that_times_out_is_retried_then_dead_lettered(
    sync_client: redis.Redis, prefix: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    event_type: str, handler: str,
) -> None:
    # sync_too_slow blocks in time.sleep(30): only RQ's hard timeout can stop it.
    routing = routing_file(tmp_path, monkeypatch, ROUTING.replace("max_attempts: 3", "max_attempts: 2"))
    settings = make_settings(prefix, routing_file=routing)
    publish(keys, load(routing), event_type, ["evt_slow"])
    started = time.monotonic()
    drain_rq(settings, "iso", sync_client)
    assert time.monotonic() - started < 15
    assert runs(sync_client, prefix, handler) == {"evt_slow": 2}
    [dead] = asyncio.run(_list_dead(keys, "iso"))
    assert (dead.event_id, dead.attempts, dead.reason) == ("evt_slow", 2, "max attempts reached")
    assert dead.error.startswith("TimeoutError")
    assert dead.handlers == (H + handler,)
    assert pending(sync_client, keys, "iso") == 0
    assert stats(sync_client, keys, "iso") == {"failed": 2, "retried": 1, "dead": 1}


async def _list_dead(keys: Keys, pool: str) -> list:  # type: ignore[type-arg]
    client = aioredis.Redis.from_url(TEST_REDIS_URL)
    try:
        return await list_dead(client, keys, pool)
    finally:
        await client.aclose()


def test_killing_the_stream_consumer_between_enqueue_and_ack_duplicates_nothing(
    sync_client: redis.Redis, prefix: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    routing = routing_file(tmp_path, monkeypatch)
    settings = make_settings(prefix, routing_file=routing)
    ids = [f"evt_{i:03d}" for i in range(60)]
    publish(keys, load(routing), "test.many", ids)
    queue = rq_queue_of(sync_client, prefix, "iso")
    consumer = start_worker(prefix, routing, tmp_path / "consumer.log", "iso")
    try:
        deadline = time.monotonic() + 30
        while queue.count < len(ids) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert queue.count == len(ids), (tmp_path / "consumer.log").read_text()
        os.kill(consumer.pid, signal.SIGKILL)  # every entry enqueued, none acked
        assert consumer.wait() == -signal.SIGKILL
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait()
    assert pending(sync_client, keys, "iso") == len(ids)

    # Two more entries were read by a consumer that died before it could enqueue them.
    lost = [f"evt_lost{i}" for i in range(2)]
    publish(keys, load(routing), "test.many", lost)
    read = sync_client.xreadgroup("iso", "gone", {keys.stream("iso"): ">"}, count=2)
    lost_entries = [e.decode() for e, _ in read[0][1]]
    sync_client.xclaim(keys.stream("iso"), "iso", "gone", min_idle_time=0, message_ids=lost_entries,
                       idle=3_600_000, justid=True)
    # Enqueueing an attempt's job again (after a crash, say) adds nothing.
    entry_id, fields = sync_client.xrange(keys.stream("iso"), count=1)[0]
    kwargs = job_kwargs(prefix, "iso", entry_id.decode(), 1, load(routing).pools["iso"],
                        entry_payload(fields))
    assert enqueue(queue, kwargs, load(routing).pools["iso"]) is False
    assert queue.count == len(ids)

    drain_rq(settings, "iso", sync_client)  # a peer consumer, then the RQ worker
    everything = ids + lost
    assert runs(sync_client, prefix, "record") == dict.fromkeys(everything, 1)
    assert runs(sync_client, prefix, "sync_record") == dict.fromkeys(everything, 1)
    assert stats(sync_client, keys, "iso")["processed"] == len(everything)
    assert pending(sync_client, keys, "iso") == 0
    # One job per entry: the lost ones got their first attempt's job, nothing got a second.
    assert len(queue.finished_job_registry) == len(everything)
    for entry in lost_entries:
        assert job_id(prefix, "iso", entry, 1) in queue.finished_job_registry.get_job_ids()


MOVE = f"""
pools:
  fast: {{{FAST}}}
  iso: {{executor: rq, {FAST}}}
routes:
  test.move: {{POOL: ["{H}record_where"]}}
"""


def test_the_same_handler_moved_between_an_async_and_an_rq_pool_by_editing_routing_still_runs(
    sync_client: redis.Redis, prefix: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    routing = routing_file(tmp_path, monkeypatch, MOVE.replace("POOL", "fast"))
    settings = make_settings(prefix, routing_file=routing)
    publish(keys, load(routing), "test.move", ["evt_1"])
    asyncio.run(run_pool(settings, "fast", burst=True))

    routing.write_text(MOVE.replace("POOL", "iso"))  # moved to the RQ pool
    publish(keys, load(routing), "test.move", ["evt_2"])
    drain_rq(settings, "iso", sync_client)

    routing.write_text(MOVE.replace("POOL", "fast"))  # and back
    publish(keys, load(routing), "test.move", ["evt_3"])
    asyncio.run(run_pool(settings, "fast", burst=True))

    # The pool itself switched to RQ (its consumers restarted), with an entry already waiting.
    publish(keys, load(routing), "test.move", ["evt_4"])
    routing.write_text(MOVE.replace("POOL", "fast").replace("fast: {", "fast: {executor: rq, "))
    drain_rq(settings, "fast", sync_client)

    where = {k.decode(): v.decode() for k, v in sync_client.hgetall(where_key(prefix)).items()}
    assert where == {"evt_1": "fast", "evt_2": "iso", "evt_3": "fast", "evt_4": "fast"}
    assert runs(sync_client, prefix, "record_where") == dict.fromkeys(["evt_1", "evt_2", "evt_3", "evt_4"], 1)
    assert pending(sync_client, keys, "fast") == pending(sync_client, keys, "iso") == 0


def test_status_shows_the_rq_queue_depth_and_worker_count_of_an_rq_pool(
    sync_client: redis.Redis, prefix: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    routing = routing_file(tmp_path, monkeypatch, ROUTING.replace("pools:\n", "pools:\n  plain: {}\n"))
    settings = make_settings(prefix, routing_file=routing)
    publish(keys, load(routing), "test.many", ["evt_1", "evt_2", "evt_3"])
    asyncio.run(run_pool(settings, "iso", burst=True))
    queue = rq_queue_of(sync_client, prefix, "iso")
    worker = SimpleWorker([queue], connection=sync_client, serializer=JSONSerializer, name=f"{prefix}-w1")
    worker.register_birth()
    try:
        async def status() -> dict:  # type: ignore[type-arg]
            client = aioredis.Redis.from_url(TEST_REDIS_URL)
            try:
                return await collect_status(client, keys, ["plain", "iso"], int(time.time() * 1000),
                                            {"iso": queue_name(prefix, "iso")})
            finally:
                await client.aclose()

        found = asyncio.run(status())
    finally:
        worker.register_death()
    iso = found["pools"]["iso"]
    assert (iso["executor"], iso["rq_queue"], iso["rq_queued"], iso["rq_workers"]) == ("rq", f"{prefix}-iso", 3, 1)
    assert (iso["stream_length"], iso["pending"], iso["lag"]) == (3, 3, 0)
    assert "executor" not in found["pools"]["plain"]  # async pools keep their shape


def test_queue_and_job_names_are_deterministic_and_isolated_by_prefix() -> None:
    assert queue_name("fanout", "customer") == "customer"
    assert queue_name("staging", "customer") == "staging-customer"
    assert job_id("fanout", "customer", "1700000000000-0", 2) == "fanout-customer-1700000000000-0-a2"
    assert job_id("a.b", "customer", "1-0", 1) == "a_b-customer-1-0-a1"


def readme_rq_commands() -> list[str]:
    from tests.conftest import REPO

    section = (REPO / "README.md").read_text().split("## Running a pool on RQ", 1)[1].split("\n## ", 1)[0]
    return [line.split("#", 1)[0].strip() for line in section.splitlines() if line.startswith(".venv/bin/rq ")]


def test_the_readme_shows_both_rq_worker_commands() -> None:
    assert [c.split()[1] for c in readme_rq_commands()] == ["worker", "worker-pool"]


@pytest.mark.parametrize("command", readme_rq_commands())
def test_a_readme_rq_worker_command_runs_the_pools_jobs(
    command: str, sync_client: redis.Redis, prefix: str, keys: Keys, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO
    from tests.support import worker_env

    routing = routing_file(tmp_path, monkeypatch, ROUTING.replace("iso", "reports"))
    ids = [f"evt_{i}" for i in range(12)]
    publish(keys, load(routing), "test.many", ids)
    asyncio.run(run_pool(make_settings(prefix, routing_file=routing), "reports", burst=True))
    argv = command.split()
    argv[0] = str(Path(sys.executable).parent / "rq")
    argv[argv.index("reports")] = queue_name(prefix, "reports")
    done = subprocess.run([*argv, "--burst"], cwd=REPO, env=worker_env(prefix, routing), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert runs(sync_client, prefix, "record") == dict.fromkeys(ids, 1)
    assert runs(sync_client, prefix, "sync_record") == dict.fromkeys(ids, 1)
    assert pending(sync_client, keys, "reports") == 0
    assert stats(sync_client, keys, "reports") == {"processed": len(ids)}


def test_a_job_that_failed_without_recording_counts_as_an_attempt_and_is_dead_lettered_past_max(
    sync_client: redis.Redis, prefix: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its work horse was SIGKILLed, say: RQ marks the job failed, and nothing else happened.
    routing = routing_file(tmp_path, monkeypatch, ROUTING.replace("max_attempts: 3", "max_attempts: 2"))
    settings = make_settings(prefix, routing_file=routing)
    publish(keys, load(routing), "test.many", ["evt_killed"])
    entry_id = sync_client.xrange(keys.stream("iso"))[0][0].decode()
    queue = rq_queue_of(sync_client, prefix, "iso")
    for attempt in (1, 2):
        asyncio.run(run_pool(settings, "iso", burst=True))
        job = queue.fetch_job(job_id(prefix, "iso", entry_id, attempt))
        assert job is not None and queue.count == 1
        queue.remove(job)
        job.set_status("failed")
    drain_rq(settings, "iso", sync_client)
    assert runs(sync_client, prefix, "record") == {}
    [dead] = asyncio.run(_list_dead(keys, "iso"))
    assert (dead.event_id, dead.attempts, dead.reason) == ("evt_killed", 2, "max attempts reached")
    assert "attempt 2 did not finish" in dead.error
    assert pending(sync_client, keys, "iso") == 0
    # Attempt 2 was the one retry; the third claim only found the entry past max_attempts.
    assert stats(sync_client, keys, "iso") == {"retried": 1, "dead": 1}


def test_a_failed_ack_after_the_handlers_succeeded_does_not_run_them_again(
    sync_client: redis.Redis, prefix: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.engine import outcomes

    routing = routing_file(tmp_path, monkeypatch)
    settings = make_settings(prefix, routing_file=routing)
    publish(keys, load(routing), "test.many", ["evt_ack"])
    asyncio.run(run_pool(settings, "iso", burst=True))
    entry_id = sync_client.xrange(keys.stream("iso"))[0][0].decode()
    # Every ack of this attempt fails in Redis (a failover, OOM...): the job's own and its callback's.
    with monkeypatch.context() as m:
        m.setattr(outcomes, "ACK_SCRIPT", "return redis.call('NOSUCHCOMMAND')")
        work_burst(sync_client, prefix, "iso")
    assert runs(sync_client, prefix, "record") == {"evt_ack": 1}
    assert pending(sync_client, keys, "iso") == 1
    queue = rq_queue_of(sync_client, prefix, "iso")
    assert queue.failed_job_registry.get_job_ids() == [job_id(prefix, "iso", entry_id, 1)]
    drain_rq(settings, "iso", sync_client)  # attempt 2 finds every handler in the ledger, and acks
    assert runs(sync_client, prefix, "record") == {"evt_ack": 1}
    assert runs(sync_client, prefix, "sync_record") == {"evt_ack": 1}
    assert pending(sync_client, keys, "iso") == 0
    assert stats(sync_client, keys, "iso") == {"processed": 1, "retried": 1}
    assert sync_client.exists(keys.ledger("iso", "evt_ack"), keys.retry_at("iso")) == 0


def test_a_running_consumer_enqueues_the_next_attempt_once_the_failed_ones_backoff_has_passed(
    sync_client: redis.Redis, prefix: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    routing = routing_file(tmp_path, monkeypatch)
    publish(keys, load(routing), "test.retry", ["evt_retry"])
    consumer = start_worker(prefix, routing, tmp_path / "consumer.log", "iso")
    started = time.monotonic()
    try:
        while stats(sync_client, keys, "iso").get("processed") != 1 and time.monotonic() - started < 20:
            work_burst(sync_client, prefix, "iso")
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        consumer.send_signal(signal.SIGTERM)
        assert consumer.wait(timeout=30) == 0, (tmp_path / "consumer.log").read_text()
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait()
    assert runs(sync_client, prefix, "fail_twice") == {"evt_retry": 3}
    assert runs(sync_client, prefix, "record") == {"evt_retry": 1}
    assert pending(sync_client, keys, "iso") == 0
    # Well within the 10 s between full scans of the pending list: retries come from the retry times.
    assert elapsed < 8


def test_retry_later_defers_the_next_attempt_and_permanent_failure_dead_letters_at_once(
    sync_client: redis.Redis, prefix: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    routing = routing_file(tmp_path, monkeypatch)
    settings = make_settings(prefix, routing_file=routing)
    publish(keys, load(routing), "test.defer", ["evt_defer"])
    publish(keys, load(routing), "test.permanent", ["evt_perm"])
    started = time.monotonic()
    drain_rq(settings, "iso", sync_client)
    assert time.monotonic() - started >= 0.3  # defer_s, longer than the backoff (at most 0.2 s)
    assert runs(sync_client, prefix, "defer_once") == {"evt_defer": 2}
    assert runs(sync_client, prefix, "permanent") == {"evt_perm": 1}
    assert runs(sync_client, prefix, "record") == {"evt_perm": 1}
    [dead] = asyncio.run(_list_dead(keys, "iso"))
    assert (dead.event_id, dead.attempts, dead.reason, dead.handlers) == (
        "evt_perm", 1, "permanent failure", (H + "permanent",))
    assert stats(sync_client, keys, "iso") == {"processed": 1, "failed": 2, "retried": 1, "dead": 1}
    assert pending(sync_client, keys, "iso") == 0
    assert sync_client.exists(keys.retry_at("iso"), keys.ledger("iso", "evt_perm")) == 0


HANG = f"""
pools:
  iso: {{executor: rq, {FAST}}}
routes:
  test.hang: {{iso: ["{H}hang_first"]}}
"""


def start_rq_worker(prefix: str, routing: Path, log_path: Path, *, simple: bool = True) -> subprocess.Popen[bytes]:
    """A real `rq worker` for the `iso` pool of this test, named `<prefix>-w`."""
    from tests.support import worker_env

    argv = [sys.executable, "-m", "rq.cli", "worker", queue_name(prefix, "iso"), "--serializer",
            "rq.serializers.JSONSerializer", "--url", TEST_REDIS_URL, "--name", f"{prefix}-w"]
    if simple:
        argv += ["-w", "rq.SimpleWorker"]
    with log_path.open("ab") as out:
        return subprocess.Popen(argv, env=worker_env(prefix, routing), stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.parametrize("gone", ["past_its_timeout", "heartbeat_key_expired"])
def test_an_entry_whose_rq_worker_was_sigkilled_mid_job_is_retried_and_burst_waits_for_it(
    sync_client: redis.Redis, prefix: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gone: str,
) -> None:
    # Small margins, so that "past its RQ timeout" comes 2.5 s after the job started.
    monkeypatch.setattr(defaults, "RQ_RECORDING_MARGIN_S", 1)
    monkeypatch.setattr(defaults, "RQ_ABANDONED_MARGIN_S", 0.5)
    routing = routing_file(tmp_path, monkeypatch, HANG)
    settings = make_settings(prefix, routing_file=routing)
    publish(keys, load(routing), "test.hang", ["evt_hang"])
    asyncio.run(run_pool(settings, "iso", burst=True))
    entry_id = sync_client.xrange(keys.stream("iso"))[0][0].decode()
    queue = rq_queue_of(sync_client, prefix, "iso")
    first = queue.fetch_job(job_id(prefix, "iso", entry_id, 1))
    assert first is not None
    worker = start_rq_worker(prefix, routing, tmp_path / "rq.log")
    try:
        deadline = time.monotonic() + 30
        while runs(sync_client, prefix, "hang_first") != {"evt_hang": 1} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.get_status(refresh=True) == "started", (tmp_path / "rq.log").read_text()
        os.kill(worker.pid, signal.SIGKILL)  # mid-job
        worker.wait()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    if gone == "heartbeat_key_expired":
        sync_client.delete(f"rq:worker:{prefix}-w")  # as its TTL would, a minute or so later
    started = time.monotonic()
    asyncio.run(run_pool(settings, "iso", burst=True))
    elapsed = time.monotonic() - started
    # The burst consumer did not exit while the entry hung on a dead worker: it retried it.
    second = queue.fetch_job(job_id(prefix, "iso", entry_id, 2))
    assert second is not None and second.get_status() == "queued"
    assert sync_client.xpending_range(keys.stream("iso"), "iso", min=entry_id, max=entry_id,
                                      count=1)[0]["times_delivered"] == 2
    if gone == "heartbeat_key_expired":
        assert elapsed < 2  # no need to wait for its timeout
    else:
        assert elapsed >= 1.5
    work_burst(sync_client, prefix, "iso")
    assert runs(sync_client, prefix, "hang_first") == {"evt_hang": 2}
    assert pending(sync_client, keys, "iso") == 0
    assert stats(sync_client, keys, "iso") == {"processed": 1, "retried": 1}


def test_a_failure_between_dead_letter_and_ack_neither_duplicates_the_dead_letter_nor_reruns_handlers(
    sync_client: redis.Redis, prefix: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.engine import outcomes

    routing = routing_file(tmp_path, monkeypatch)
    settings = make_settings(prefix, routing_file=routing)
    publish(keys, load(routing), "test.permanent", ["evt_p"])
    asyncio.run(run_pool(settings, "iso", burst=True))
    # The ack script fails (as RQ's alarm landing after the dead-letter XADD would stop it).
    with monkeypatch.context() as m:
        m.setattr(outcomes, "ACK_SCRIPT", "return redis.call('NOSUCHCOMMAND')")
        work_burst(sync_client, prefix, "iso")
    drain_rq(settings, "iso", sync_client)
    dead = asyncio.run(_list_dead(keys, "iso"))
    assert [(d.event_id, d.attempts, d.reason) for d in dead] == [("evt_p", 1, "permanent failure")]
    assert runs(sync_client, prefix, "record") == {"evt_p": 1}
    assert runs(sync_client, prefix, "permanent") == {"evt_p": 1}
    assert pending(sync_client, keys, "iso") == 0
    assert stats(sync_client, keys, "iso") == {"failed": 1, "dead": 1}


def test_an_rq_job_stops_its_handlers_at_timeout_s_even_one_that_swallows_exceptions(
    sync_client: redis.Redis, prefix: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    routing = routing_file(tmp_path, monkeypatch, ROUTING.replace("max_attempts: 3", "max_attempts: 1")
                           + f'  test.swallow: {{iso: ["{H}sync_swallows_timeouts"]}}\n')
    settings = make_settings(prefix, routing_file=routing)
    publish(keys, load(routing), "test.swallow", ["evt_sw"])
    asyncio.run(run_pool(settings, "iso", burst=True))
    started = time.monotonic()
    work_burst(sync_client, prefix, "iso")
    assert time.monotonic() - started < 4  # timeout_s is 1 s; RQ's own alarm is only a backstop, later
    [dead] = asyncio.run(_list_dead(keys, "iso"))
    assert (dead.event_id, dead.reason, dead.handlers) == ("evt_sw", "max attempts reached",
                                                           (H + "sync_swallows_timeouts",))
    assert dead.error.startswith("TimeoutError")
    assert pending(sync_client, keys, "iso") == 0
    assert stats(sync_client, keys, "iso") == {"failed": 1, "dead": 1}


def test_requeueing_old_failed_attempts_in_rq_runs_nothing_again(
    sync_client: redis.Redis, prefix: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    routing = routing_file(tmp_path, monkeypatch)
    settings = make_settings(prefix, routing_file=routing)
    publish(keys, load(routing), "test.retry", ["evt_rq"])
    drain_rq(settings, "iso", sync_client)
    before = stats(sync_client, keys, "iso")
    queue = rq_queue_of(sync_client, prefix, "iso")
    failed = queue.failed_job_registry.get_job_ids()
    assert len(failed) == 2
    for jid in failed:  # what `rq requeue --all` or rq-dashboard's "Requeue all" does
        queue.failed_job_registry.requeue(jid)
    work_burst(sync_client, prefix, "iso")
    assert runs(sync_client, prefix, "fail_twice") == {"evt_rq": 3}
    assert runs(sync_client, prefix, "record") == {"evt_rq": 1}
    assert stats(sync_client, keys, "iso") == before
    assert pending(sync_client, keys, "iso") == 0


def test_a_job_still_queued_when_its_pool_switched_to_async_does_not_run_the_entry_again(
    sync_client: redis.Redis, prefix: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    routing = routing_file(tmp_path, monkeypatch)
    settings = make_settings(prefix, routing_file=routing)
    publish(keys, load(routing), "test.many", ["evt_sw"])
    asyncio.run(run_pool(settings, "iso", burst=True))  # attempt 1's RQ job is queued
    routing.write_text(ROUTING.replace("executor: rq, ", ""))  # the pool now runs async
    time.sleep(3.5)  # a peer's entry is taken over past timeout_s + backoff + margin
    asyncio.run(run_pool(settings, "iso", burst=True))
    assert runs(sync_client, prefix, "record") == {"evt_sw": 1}
    assert pending(sync_client, keys, "iso") == 0
    work_burst(sync_client, prefix, "iso")  # an RQ worker still running gets to the old job
    assert runs(sync_client, prefix, "record") == {"evt_sw": 1}
    assert runs(sync_client, prefix, "sync_record") == {"evt_sw": 1}
    assert stats(sync_client, keys, "iso") == {"processed": 1, "retried": 1}
    assert pending(sync_client, keys, "iso") == 0


def test_an_async_consumer_does_not_take_over_an_entry_a_live_rq_worker_is_running(
    sync_client: redis.Redis, prefix: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The job was enqueued under timeout_s 30: it is still running when the pool, now async
    # with timeout_s 1, would take a peer's entry over.
    routing = routing_file(tmp_path, monkeypatch, HANG.replace("timeout_s: 1,", "timeout_s: 30,"))
    settings = make_settings(prefix, routing_file=routing)
    publish(keys, load(routing), "test.hang", ["evt_live"])
    asyncio.run(run_pool(settings, "iso", burst=True))
    rq_worker = start_rq_worker(prefix, routing, tmp_path / "rq.log")
    consumer: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 30
        while runs(sync_client, prefix, "hang_first") != {"evt_live": 1} and time.monotonic() < deadline:
            time.sleep(0.05)
        routing.write_text(HANG.replace("executor: rq, ", ""))
        consumer = start_worker(prefix, routing, tmp_path / "consumer.log", "iso")
        time.sleep(4.5)  # past the async pool's takeover wait
        assert runs(sync_client, prefix, "hang_first") == {"evt_live": 1}, (tmp_path / "consumer.log").read_text()
        os.kill(rq_worker.pid, signal.SIGKILL)
        rq_worker.wait()
        sync_client.delete(f"rq:worker:{prefix}-w")  # its heartbeat key expires
        deadline = time.monotonic() + 15
        while pending(sync_client, keys, "iso") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runs(sync_client, prefix, "hang_first") == {"evt_live": 2}
        assert pending(sync_client, keys, "iso") == 0
    finally:
        for proc in (rq_worker, consumer):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the work horse through /proc")
def test_stopping_the_rq_worker_child_of_fanout_run_leaves_no_work_horse_behind(
    sync_client: redis.Redis, prefix: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import REPO
    from workers.supervision.supervisor import Children, rq_worker_command

    routing = routing_file(tmp_path, monkeypatch, HANG.replace("timeout_s: 1,", "timeout_s: 30,"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    publish(keys, load(routing), "test.hang", ["evt_horse"])
    asyncio.run(run_pool(make_settings(prefix, routing_file=routing), "iso", burst=True))
    children = Children([rq_worker_command(prefix, "iso")])  # as `fanout run` starts it
    started: set[int] = set()
    children.start()
    try:
        deadline = time.monotonic() + 30
        while runs(sync_client, prefix, "hang_first") != {"evt_horse": 1} and time.monotonic() < deadline:
            time.sleep(0.05)
        worker = children.procs[0].pid
        horses = {int(p) for task in Path(f"/proc/{worker}/task").iterdir()
                  for p in (task / "children").read_text().split()}
        assert len(horses) == 1  # the work horse running the job
        started = {worker, *horses}
        children.stop(grace_s=0.5)  # the job would run 30 s: past the grace period
        assert not [pid for pid in started if _alive(pid)]
    finally:
        for pid in started:  # left over only if stop() failed to stop them
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        for proc in children.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_the_rq_executor_docstring_shows_the_readme_rq_worker_command() -> None:
    import workers.rq.job as rq_executor

    [worker] = [c for c in readme_rq_commands() if c.split()[1] == "worker"]
    assert worker.removeprefix(".venv/bin/") in (rq_executor.__doc__ or "")


def test_an_rq_jobs_forward_follows_a_destination_edited_in_routing_yaml(
    prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workers.rq.job as rq_executor

    def write(url_env: str) -> Path:
        return routing_file(tmp_path, monkeypatch, f"""
pools:
  admin: {{executor: rq, {FAST}}}
destinations:
  backend: {{url_env: {url_env}, secret_env: BACKEND_SECRET}}
routes:
  test.many: {{admin: ["forward:backend"]}}
""")

    path = write("OLD_URL")
    settings = make_settings(prefix, routing_file=path)
    monkeypatch.setattr(rq_executor, "_runtimes", {})
    first = rq_executor._runtime(settings)
    forward = first.handlers.get("forward:backend", first.holder.table)
    assert not isinstance(forward, Exception)
    destinations = forward.func.args[1]  # type: ignore[attr-defined]
    assert destinations["backend"].url_env == "OLD_URL"
    write("NEW_URL")
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))  # a distinct mtime, whatever the clock
    second = rq_executor._runtime(settings)
    assert second.holder.table.destinations["backend"].url_env == "NEW_URL"
    assert destinations["backend"].url_env == "NEW_URL", "the next job forwards to the edited destination"


def test_the_rq_reclaimer_holds_every_free_slot_while_it_works(
    prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync_client: redis.Redis
) -> None:
    from bus.reload import RoutingHolder
    from workers.engine.consumer import Consumer
    from workers.rq.bridge import RqExecutor

    path = routing_file(tmp_path, monkeypatch)
    settings = make_settings(prefix, routing_file=path)
    seen_free: list[int] = []

    async def go() -> None:
        client = aioredis.Redis.from_url(TEST_REDIS_URL)
        try:
            pool = Consumer(settings, "iso", redis=client, holder=RoutingHolder.load(path))
            assert isinstance(pool.executor, RqExecutor)

            async def record(stream: str, limit: int) -> int:
                seen_free.append(pool.slots.free())
                await asyncio.sleep(0)  # the reader could run here
                seen_free.append(pool.slots.free())
                return 0

            monkeypatch.setattr(pool.executor, "reclaim", record)
            await pool.reclaim_once(pool.streams[0])
            assert pool.slots.free() == pool.concurrency, "the slots are given back"
            pool.executor.close()
        finally:
            await client.aclose()

    asyncio.run(go())
    assert seen_free == [0, 0], "a reader running meanwhile finds no slot to take"


def test_an_rq_pool_with_skip_stale_records_completions_and_skips_an_older_update(
    sync_client: redis.Redis, prefix: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.workers.engine.test_stale import send

    routing = routing_file(tmp_path, monkeypatch, f"""
pools:
  iso: {{executor: rq, {FAST}, skip_stale: true}}
routes:
  customer.updated: {{iso: ["{H}record_newer"]}}
""")
    settings = make_settings(prefix, routing_file=routing)
    table = load(routing)

    def send_one(event_id: str, created: int) -> None:
        async def go() -> None:
            client = aioredis.Redis.from_url(TEST_REDIS_URL)
            try:
                await send(client, keys, table, event_id, "customer.updated", "cus_1", created)
            finally:
                await client.aclose()
        asyncio.run(go())

    send_one("evt_t2", 2_000)
    drain_rq(settings, "iso", sync_client)
    send_one("evt_t1", 1_000)
    drain_rq(settings, "iso", sync_client)
    assert runs(sync_client, prefix, "record_newer") == {"evt_t2": 1}
    assert stats(sync_client, keys, "iso") == {"processed": 1, "stale": 1}
