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

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType

import structlog

from bus import defaults

log = structlog.get_logger("fanout.supervisor")

POLL_S = 0.2
# The exit status of `fanout worker` when the pool or one of its handlers cannot be resolved.
CONFIG_ERROR_EXIT = 2


def worker_command(pool: str, *, burst: bool = False, concurrency: int | None = None) -> list[str]:
    """The command line of one consumer process of `pool`."""
    command = [sys.executable, "-m", "fanout.cli", "worker", pool]
    if burst:
        command.append("--burst")
    if concurrency:
        command += ["--concurrency", str(concurrency)]
    return command


def rq_worker_command(prefix: str, pool: str) -> list[str]:
    """An RQ worker for an `executor: rq` pool, as the README shows it (`fanout run` starts one)."""
    from workers.rq_queue import SERIALIZER_PATH, queue_name

    return [sys.executable, "-m", "rq.cli", "worker", queue_name(prefix, pool), "-c", "workers.rq_settings",
            "--serializer", SERIALIZER_PATH, "--quiet"]


@dataclass
class Children:
    """Child processes started from commands; `stop()` sends SIGTERM and waits, then kills."""

    commands: Sequence[Sequence[str]]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> None:
        self.procs = [subprocess.Popen(list(command)) for command in self.commands]

    def respawn(self, index: int) -> None:
        self.procs[index] = subprocess.Popen(list(self.commands[index]))

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
                proc.send_signal(signum)

    def stop(self, grace_s: float = defaults.SHUTDOWN_GRACE_S + 5) -> list[int]:
        """SIGTERM every child, wait up to `grace_s`, SIGKILL what is left; return exit codes."""
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return [proc.returncode for proc in self.procs]


class Supervisor:
    def __init__(self, pool: str, processes: int, *, burst: bool = False,
                 concurrency: int | None = None) -> None:
        self.pool = pool
        self.burst = burst
        self.children = Children([worker_command(pool, burst=burst, concurrency=concurrency)] * processes)
        self._stopping = False

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        self._stopping = True
        self.children.signal_all(signal.SIGTERM)

    def run(self) -> int:
        """Run until every child has exited (burst) or until SIGTERM/SIGINT; the exit status."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.children.start()
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
