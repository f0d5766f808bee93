"""`fanout worker POOL --processes N` shares a pool's work between its children."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bus.keys import Keys
from tests.handlers_for_tests import pids_key
from tests.support import H, load, publish_many, runs, start_worker, write_routing

pytestmark = pytest.mark.anyio

ROUTING = f"""
pools:
  shared: {{concurrency: 2, max_attempts: 3, timeout_s: 2, backoff_base_s: 0.05, backoff_max_s: 0.2}}
routes:
  test.work: {{shared: ["{H}record_pid"]}}
"""


async def test_processes_2_shares_the_work_and_burst_exits_0_when_drained(
    aredis: aioredis.Redis, prefix: str, keys: Keys, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, ROUTING)
    ids = [f"evt_{i:04d}" for i in range(300)]
    await publish_many(aredis, keys, load(routing), "test.work", ids)
    parent = start_worker(prefix, routing, tmp_path / "pool.log", "shared", "--processes", "2", "--burst",
                          TEST_HANDLER_SLEEP_S="0.02")
    try:
        code = parent.wait(timeout=50)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert code == 0, (tmp_path / "pool.log").read_text()
    counts = await runs(aredis, prefix, "record_pid")
    assert set(counts) == set(ids)
    per_pid = {k.decode(): int(v) for k, v in (await aredis.hgetall(pids_key(prefix))).items()}
    assert len(per_pid) == 2, per_pid
    assert all(n > 0 for n in per_pid.values())
    assert int((await aredis.xpending(keys.stream("shared"), keys.group("shared")))["pending"]) == 0


BROKEN = """
pools:
  shared: {concurrency: 2}
routes:
  test.work: {shared: ["tests.no_such_module:handler"]}
"""


async def test_processes_2_with_an_unimportable_handler_exits_2_instead_of_restarting_forever(
    prefix: str, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, BROKEN)
    log = tmp_path / "pool.log"
    parent = start_worker(prefix, routing, log, "shared", "--processes", "2")
    try:
        code = parent.wait(timeout=20)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    output = log.read_text()
    assert code == 2, output
    assert "no module named 'tests.no_such_module'" in output  # the child's own message
    assert "configuration error" in output  # and the supervisor's
    assert output.count("no module named 'tests.no_such_module'") <= 2, output  # none was started again


def test_run_stops_with_exit_2_when_a_pool_worker_has_a_configuration_error(prefix: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO, TEST_REDIS_URL
    from tests.live import free_port

    routing = write_routing(tmp_path, BROKEN)
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": TEST_REDIS_URL, "FANOUT_PREFIX": prefix,
           "ROUTING_FILE": str(routing), "PYTHONPATH": str(REPO), "LOG_LEVEL": "warning"}
    run = subprocess.Popen([sys.executable, "-m", "fanout.cli", "run", "--port", str(free_port())],
                           env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = run.communicate(timeout=20)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 2, output
    assert "configuration error" in output


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the children through /proc")
def test_run_restarts_a_pool_worker_that_dies(prefix: str, tmp_path: Path) -> None:
    import contextlib
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO, TEST_REDIS_URL
    from tests.live import free_port

    def children(pid: int) -> set[int]:
        found: set[int] = set()
        for task in Path(f"/proc/{pid}/task").iterdir():
            found |= {int(p) for p in (task / "children").read_text().split()}
        return found

    def wait_until(condition: object, timeout_s: float = 15) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():  # type: ignore[operator]
            assert time.monotonic() < deadline
            time.sleep(0.05)

    routing = write_routing(tmp_path, ROUTING)
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": TEST_REDIS_URL, "FANOUT_PREFIX": prefix,
           "ROUTING_FILE": str(routing), "PYTHONPATH": str(REPO), "LOG_LEVEL": "warning"}
    run = subprocess.Popen([sys.executable, "-m", "fanout.cli", "run", "--port", str(free_port())],
                           env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started: set[int] = set()
    try:
        wait_until(lambda: len(children(run.pid)) == 1)
        [first] = started = children(run.pid)
        os.kill(first, signal.SIGKILL)  # the pool's worker, a child of the `fanout run` started here
        wait_until(lambda: bool(children(run.pid) - {first}))
        started |= children(run.pid)
    finally:
        run.send_signal(signal.SIGINT)
        try:
            run.wait(timeout=30)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
            for pid in started:  # left over only if `fanout run` failed to stop them
                with contextlib.suppress(OSError):
                    if b"fanout.cli\0worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        os.kill(pid, signal.SIGKILL)


def test_run_on_a_port_already_taken_exits_2_naming_the_port_before_starting_anything(
    prefix: str, tmp_path: Path
) -> None:
    import socket
    import subprocess
    import sys

    from tests.conftest import REPO, TEST_REDIS_URL

    routing = write_routing(tmp_path, ROUTING)
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": TEST_REDIS_URL, "FANOUT_PREFIX": prefix,
           "ROUTING_FILE": str(routing), "PYTHONPATH": str(REPO), "LOG_LEVEL": "warning"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "fanout.cli", "run", "--host", "127.0.0.1", "--port",
                               str(port)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "running" not in done.stdout.lower()  # no banner, no pools started


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the children through /proc")
@pytest.mark.parametrize("routing_text", [ROUTING.replace("shared: {", "shared: {executor: rq, "),
                                          BROKEN.replace("shared: {", "shared: {executor: rq, ")],
                         ids=["restarts-a-dead-rq-worker", "stops-on-a-config-error"])
def test_run_supervises_the_rq_worker_of_an_rq_pool(prefix: str, tmp_path: Path, routing_text: str) -> None:
    import contextlib
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO, TEST_REDIS_URL
    from tests.live import free_port
    from tests.rq_support import delete_rq_keys

    def rq_workers(pid: int) -> set[int]:
        found: set[int] = set()
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    if b"rq.cli" in Path(f"/proc/{child}/cmdline").read_bytes():
                        found.add(int(child))
        return found

    routing = write_routing(tmp_path, routing_text)
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": TEST_REDIS_URL, "FANOUT_PREFIX": prefix,
           "ROUTING_FILE": str(routing), "PYTHONPATH": str(REPO), "LOG_LEVEL": "warning"}
    run = subprocess.Popen([sys.executable, "-m", "fanout.cli", "run", "--port", str(free_port())],
                           env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if routing_text.startswith("\npools:\n  shared: {executor: rq, concurrency: 2}"):  # BROKEN
            assert run.wait(timeout=30) == 2
            return
        deadline = time.monotonic() + 20
        while not rq_workers(run.pid):
            assert time.monotonic() < deadline and run.poll() is None
            time.sleep(0.05)
        [first] = rq_workers(run.pid)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while not rq_workers(run.pid) - {first}:
            assert time.monotonic() < deadline and run.poll() is None, "the rq worker was not restarted"
            time.sleep(0.05)
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGINT)
            try:
                run.wait(timeout=40)
            finally:
                if run.poll() is None:
                    run.kill()
                    run.wait()
        delete_rq_keys(prefix)
    assert run.returncode == 0


def test_a_signal_while_run_starts_its_children_leaves_none_running(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    from workers.supervision import supervisor

    class Interrupted(BaseException):
        """What `fanout run`'s signal handler raises (StopRequested) in the middle of start()."""

    real_popen = subprocess.Popen
    calls = []

    def popen(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        calls.append(args)
        if len(calls) == 2:
            raise Interrupted
        return real_popen(*args, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(subprocess, "Popen", popen)
    children = supervisor.Children([[sys.executable, "-c", "import time; time.sleep(60)"]] * 3)
    with pytest.raises(Interrupted):
        children.start()
    monkeypatch.undo()
    assert len(children.procs) == 1  # the one started before the signal: stop() can reach it
    assert children.stop(grace_s=5) == [-15]


def test_a_sigterm_while_the_supervisor_starts_its_children_reaches_every_child(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.supervision import supervisor as sup

    started: list[int] = []

    class FakeProc:
        def __init__(self) -> None:
            self.signals: list[int] = []

        def poll(self) -> int | None:
            return 0 if self.signals else None

        def send_signal(self, signum: int) -> None:
            self.signals.append(signum)

    procs: list[FakeProc] = []
    supervisor = sup.Supervisor("alpha", 3)

    def spawn(_: object) -> FakeProc:
        proc = FakeProc()
        procs.append(proc)
        started.append(len(procs))
        if len(procs) == 1:
            supervisor._on_signal(signal.SIGTERM, None)  # the signal lands after the first child
        return proc

    monkeypatch.setattr(sup, "_spawn", spawn)
    monkeypatch.setattr(sup.Children, "signal_all", lambda self, signum: [p.send_signal(signum) for p in self.procs])
    assert supervisor.run() == 0
    assert len(procs) == 3 and all(p.signals for p in procs), "every child was asked to stop"


def test_with_a_metrics_port_each_child_serves_metrics_on_its_own_port() -> None:
    from workers.supervision.supervisor import Supervisor, worker_command

    supervisor = Supervisor("shared", 3, metrics_host="127.0.0.1", metrics_port=9100)
    ports = [command[command.index("--metrics-port") + 1] for command in supervisor.children.commands]
    assert ports == ["9100", "9101", "9102"]
    assert all(command[command.index("--metrics-host") + 1] == "127.0.0.1"
               for command in supervisor.children.commands)
    assert "--metrics-port" not in worker_command("shared")
    assert "--metrics-port" not in Supervisor("shared", 2).children.commands[1]
