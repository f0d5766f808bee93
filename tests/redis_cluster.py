"""A real local Redis Cluster (3 masters, 3 replicas) started from `redis-server`, for tests and bench.

    with LocalCluster.start() as cluster:
        cluster.url  # redis://127.0.0.1:<port>/0, any node

Nodes run on free ports in a temporary directory with persistence off; everything
is killed by pid (and the directory removed) on exit, also after a failure.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import redis

NODE_TIMEOUT_MS = 1000
START_TIMEOUT_S = 30.0


def _free_ports(count: int) -> list[int]:
    """Ports free now whose cluster bus port (+10000) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


@dataclass
class LocalCluster:
    directory: Path
    ports: list[int]
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    @classmethod
    def start(cls, nodes: int = 6) -> LocalCluster:
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            raise RuntimeError("redis-server and redis-cli are needed for a local Redis Cluster")
        cluster = cls(Path(tempfile.mkdtemp(prefix="fanout-cluster-")), _free_ports(nodes))
        try:
            for port in cluster.ports:
                cluster._spawn(port)
            for port in cluster.ports:
                cluster._wait_ping(port)
            subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in cluster.ports),
                 "--cluster-replicas", "1", "--cluster-yes"],
                check=True, capture_output=True, timeout=START_TIMEOUT_S,
            )
            cluster.wait_healthy()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _spawn(self, port: int) -> None:
        node_dir = self.directory / str(port)
        node_dir.mkdir(exist_ok=True)
        self.processes[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", str(node_dir / "nodes.conf"), "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             "--dir", str(node_dir), "--save", "", "--appendonly", "no", "--protected-mode", "no",
             "--logfile", str(node_dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=1)

    def _wait_ping(self, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with self.client(port) as c:
                    c.ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline or self.processes[port].poll() is not None:
                    raise RuntimeError(f"redis-server on port {port} did not start") from None
                time.sleep(0.02)

    def live_ports(self) -> list[int]:
        return [p for p, proc in self.processes.items() if proc.poll() is None]

    def masters(self) -> list[int]:
        """Ports of the live nodes that are masters now."""
        out = []
        for port in self.live_ports():
            with self.client(port) as c:
                if c.info("replication")["role"] == "master":
                    out.append(port)
        return sorted(out)

    def wait_healthy(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until every live node says cluster_state:ok and every live replica is in sync with its master."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self._healthy():
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the local Redis Cluster did not become healthy")
            time.sleep(0.05)

    def _healthy(self) -> bool:
        try:
            for port in self.live_ports():
                with self.client(port) as c:
                    if c.cluster("info")["cluster_state"] != "ok":
                        return False
                    repl = c.info("replication")
                    if repl["role"] == "slave" and (repl.get("master_link_status") != "up"
                                                    or repl.get("master_sync_in_progress")):
                        return False
                    if repl["role"] == "master" and self._expects_replica(c) and int(repl["connected_slaves"]) < 1:
                        return False
        except redis.RedisError:
            return False
        return True

    def _expects_replica(self, client: redis.Redis) -> bool:
        # A master whose replica was killed (a test's failover) has none to wait for.
        return len(self.live_ports()) == len(self.ports)

    def kill(self, port: int) -> None:
        """SIGKILL one node (a crashed master, for failover tests)."""
        proc = self.processes[port]
        proc.kill()
        proc.wait(timeout=10)

    def restart(self, port: int) -> None:
        """Start a killed node again; it rejoins from its nodes.conf (as a replica, after a failover)."""
        self._spawn(port)
        self._wait_ping(port)

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
