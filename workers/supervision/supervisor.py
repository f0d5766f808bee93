"""`fanout worker POOL --processes N`: N consumer processes under one parent, like `rq worker-pool`.

The parent forwards SIGTERM and SIGINT to its children and waits for them to
drain. A child that exits on its own is started again after RESPAWN_DELAY_S,
except in burst mode, where exiting is how a child says the pool is drained.
A child that exits 2 has a configuration error (unknown pool, unimportable
handler), which starting it again cannot fix: the parent stops the others and
exits 2. `fanout run` uses the same child handling (Children.keep_running)
for the pools it starts beside the ingress.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import structlog

from bus import defaults

log = structlog.get_logger("fanout.supervisor")

POLL_S = 0.2
# After its grace period, a child that got a second SIGTERM has this long before SIGKILL.
FORCE_GRACE_S = 5.0
# The exit status of `fanout worker` when the pool or one of its handlers cannot be resolved.
CONFIG_ERROR_EXIT = 2


def worker_command(pool: str, *, burst: bool = False, concurrency: int | None = None,
                   metrics_host: str | None = None, metrics_port: int | None = None) -> list[str]:
    """The command line of one consumer process of `pool`."""
    command = [sys.executable, "-m", "fanout.cli", "worker", pool]
    if burst:
        command.append("--burst")
    if concurrency:
        command += ["--concurrency", str(concurrency)]
    if metrics_port is not None:
        command += ["--metrics-port", str(metrics_port)]
        if metrics_host is not None:
            command += ["--metrics-host", metrics_host]
    return command


def rq_worker_command(prefix: str, pool: str) -> list[str]:
    """An RQ worker for an `executor: rq` pool, as the README shows it (`fanout run` starts one)."""
    from workers.rq.queue import SERIALIZER_PATH, queue_name

    return [sys.executable, "-m", "rq.cli", "worker", queue_name(prefix, pool), "-c", "workers.rq.settings",
            "--serializer", SERIALIZER_PATH, "--quiet"]


@dataclass
class Children:
    """Child processes started from commands; `stop()` sends SIGTERM and waits, then kills."""

    commands: Sequence[Sequence[str]]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> None:
        """Start every child; on an interruption (a signal) part-way, the ones started are kept in
        `procs`, so `stop()` still stops them."""
        self.procs = []
        for command in self.commands:
            self.procs.append(_spawn(command))

    def respawn(self, index: int) -> None:
        self.procs[index] = _spawn(self.commands[index])

    def restart_exited(self, label: str) -> int | None:
        """Start again each child that exited, after RESPAWN_DELAY_S; CONFIG_ERROR_EXIT if one exited so."""
        for index, proc in enumerate(self.procs):
            code = proc.poll()
            if code is None:
                continue
            if code == CONFIG_ERROR_EXIT:
                return code
            log.warning("supervisor.child_exited", pool=label, code=code,
                        command=" ".join(self.commands[index][3:]))
            time.sleep(defaults.RESPAWN_DELAY_S)
            self.respawn(index)
        return None

    def keep_running(self, stopped: threading.Event, label: str) -> int | None:
        """Restart children that exit until `stopped` is set; CONFIG_ERROR_EXIT when one exits so."""
        while not stopped.wait(POLL_S):
            code = self.restart_exited(label)
            if code is not None:
                return code
        return None

    def signal_all(self, signum: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                _signal_group(proc, signum)

    def stop(self, grace_s: float = defaults.SHUTDOWN_GRACE_S + 5,
             force_grace_s: float = FORCE_GRACE_S) -> list[int]:
        """Stop every child and what it started; return the exit codes.

        SIGTERM to each child's process group (each child leads its own), up to `grace_s` to
        drain; then a second SIGTERM to the groups still there, which an RQ worker takes as a
        cold shutdown: it kills its work horse (in a process group of its own, out of reach of
        a signal to the worker's group) and exits; after `force_grace_s`, SIGKILL to the group
        and to every process the child had started (found through /proc, where there is one).
        """
        self.signal_all(signal.SIGTERM)
        left = _wait_all(self.procs, grace_s)
        if left:
            time.sleep(max(0.0, 1.05 - grace_s))  # RQ ignores a second signal within 1 s of the first
            for proc in left:
                _signal_group(proc, signal.SIGTERM)
            left = _wait_all(left, force_grace_s)
        for proc in left:
            descendants = _descendants(proc.pid)
            _signal_group(proc, signal.SIGKILL)
            for pid in descendants:
                with contextlib.suppress(OSError):
                    if _leads_group(pid):
                        os.killpg(pid, signal.SIGKILL)
                    else:
                        os.kill(pid, signal.SIGKILL)
            proc.wait()
        return [proc.returncode for proc in self.procs]


def _spawn(command: Sequence[str]) -> subprocess.Popen[bytes]:
    """A child in a session (and process group) of its own, so that stopping it reaches its children."""
    return subprocess.Popen(list(command), start_new_session=True)


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def _wait_all(procs: list[subprocess.Popen[bytes]], timeout_s: float) -> list[subprocess.Popen[bytes]]:
    """Wait up to `timeout_s` in all for `procs` to exit; those still running."""
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    return [proc for proc in procs if proc.poll() is None]


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc; empty elsewhere)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


class Supervisor:
    def __init__(self, pool: str, processes: int, *, burst: bool = False,
                 concurrency: int | None = None, metrics_host: str | None = None,
                 metrics_port: int | None = None) -> None:
        self.pool = pool
        self.burst = burst
        # With metrics, child i serves them on metrics_port + i.
        self.children = Children([
            worker_command(pool, burst=burst, concurrency=concurrency, metrics_host=metrics_host,
                           metrics_port=None if metrics_port is None else metrics_port + i)
            for i in range(processes)])
        self._stopping = False

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        self._stopping = True
        self.children.signal_all(signal.SIGTERM)

    def run(self) -> int:
        """Run until every child has exited (burst) or until SIGTERM/SIGINT; the exit status."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.children.start()
            if self._stopping:
                # The signal came while children were still being started: the later ones missed it.
                self.children.signal_all(signal.SIGTERM)
            log.info("supervisor.started", pool=self.pool, processes=len(self.children.procs))
            while True:
                codes = [proc.poll() for proc in self.children.procs]
                if CONFIG_ERROR_EXIT in codes and not self._stopping:
                    log.error("supervisor.child_config_error", pool=self.pool, code=CONFIG_ERROR_EXIT)
                    print(f"fanout worker: a {self.pool!r} process exited with a configuration error "
                          "(see its message above); restarting cannot fix it, stopping the others",
                          file=sys.stderr, flush=True)
                    self.children.stop()
                    return CONFIG_ERROR_EXIT
                if all(code is not None for code in codes):
                    break
                if not (self._stopping or self.burst) and self.children.restart_exited(self.pool) is not None:
                    continue  # a child exited 2 since the poll above: handled at the top
                time.sleep(POLL_S)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        failed = [code for code in codes if code != 0]
        log.info("supervisor.stopped", pool=self.pool, exit_codes=codes)
        return 1 if failed else 0
