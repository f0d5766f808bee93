"""Ingress throughput and latency against two baselines, one server process each, same load.

    1. naive:   Stripe's documented handler (construct_event, then one XADD) in Starlette
    2. raw:     read the body, answer 200 (the floor)
    3. ingress: this project

Load: wrk (one thread, 64 connections) posting unique pre-signed events. Each
server kind runs ROUNDS times, interleaved, and the median is reported, since the
machine is shared and noisy. Targets: ingress >= 5x naive and >= 30% of raw.
A py-spy profile of one extra ingress run shows where its time goes.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis

from bus.keys import Keys
from bus.signing import stripe_signature
from fanout.samples import sample_event

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SECRET = "whsec_bench_secret"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
DURATION_S = int(os.environ.get("BENCH_DURATION_S", "6"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
EVENTS_PER_RUN = int(os.environ.get("BENCH_EVENTS", "60000"))

SERVERS = {
    "raw": "bench.apps:raw_app",
    "naive": "bench.apps:naive_app",
    "ingress": "ingress.asgi:from_env",
}


def server_command(kind: str, port: int) -> list[str]:
    """The baselines under plain uvicorn; the ingress as it ships (`fanout ingress`, with the edge's limits)."""
    if kind == "ingress":
        return [sys.executable, "-m", "fanout.cli", "ingress", "--host", "127.0.0.1", "--port", str(port)]
    return [sys.executable, "-m", "uvicorn", "--factory", SERVERS[kind], "--host", "127.0.0.1", "--port", str(port),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--no-proxy-headers",
            "--log-level", "warning"]


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    requests: int


def write_events(path: Path, count: int) -> None:
    """Unique charge.refunded events (routed to one pool), signed now, one per line."""
    now = int(time.time())
    with path.open("wb") as out:
        for _ in range(count):
            body = orjson.dumps(sample_event("charge.refunded", created=now))
            out.write(stripe_signature(body, SECRET, timestamp=now).encode() + b"\t" + body + b"\n")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(kind: str, port: int, prefix: str, extra_env: dict[str, str] | None = None,
                 command: list[str] | None = None, **popen: Any) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REDIS_URL": REDIS_URL, "STRIPE_WEBHOOK_SECRET": SECRET, "FANOUT_PREFIX": prefix,
           "ROUTING_FILE": str(REPO / "routing.yaml"), **(extra_env or {})}
    proc = subprocess.Popen(command or server_command(kind, port), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    import httpx

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{kind} server did not start")


def run_wrk(port: int, events: Path) -> Result:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{DURATION_S}s", "--latency", "-s", str(HERE / "wrk_events.lua"),
         f"http://127.0.0.1:{port}/webhooks/stripe", "--", str(events), "1"],
        capture_output=True, text=True, check=True,
    ).stdout

    def latency_ms(pct: str) -> float:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            raise RuntimeError(f"no {pct}% latency in wrk output:\n{out}")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return Result(rps, latency_ms("50"), latency_ms("99"), int(non.group(1)) if non else 0, requests)


def profile_ingress(events: Path, prefix: str) -> list[tuple[str, float]]:
    """Self time by function during one loaded run, from py-spy's raw (collapsed) output."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        return []
    port = free_port()
    server = start_server("ingress", port, prefix)
    raw = events.with_suffix(".pyspy")
    spy = subprocess.Popen([py_spy, "record", "--pid", str(server.pid), "--format", "raw", "--rate", "200",
                            "--duration", str(DURATION_S), "--nonblocking", "-o", str(raw)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_wrk(port, events)
        spy.wait(timeout=DURATION_S + 30)
    finally:
        server.terminate()
        server.wait(timeout=10)
    if not raw.exists():
        return []
    self_samples: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaf = stack.split(";")[-1]
        leaf = re.sub(r" \(/.*?/(site-packages/|work/main/|lib/python3\.\d+/)?", " (", leaf)
        self_samples[leaf] += int(count)
        total += int(count)
    return [(name, 100 * n / total) for name, n in self_samples.most_common(15)]


def cleanup(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    for pattern in (Keys(prefix).pattern(), f"{prefix}:naive"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
    client.close()


def main() -> int:
    if shutil.which("wrk") is None:
        print("bench_ingress: wrk is not installed (make bench installs it with apt-get)", file=sys.stderr)
        return 1
    results: dict[str, list[Result]] = {kind: [] for kind in SERVERS}
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "events.tsv"
        try:
            for round_ in range(ROUNDS):
                for kind in SERVERS:
                    write_events(events, EVENTS_PER_RUN)  # fresh ids: no run sees a duplicate
                    port = free_port()
                    server = start_server(kind, port, prefix)
                    try:
                        result = run_wrk(port, events)
                    finally:
                        server.terminate()
                        server.wait(timeout=10)
                    results[kind].append(result)
                    print(f"round {round_ + 1} {kind:8s} {result.rps:8.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
                          f"p99 {result.p99_ms:6.2f} ms  non-2xx {result.non_2xx}"
                          + ("  (events reused: raise BENCH_EVENTS)" if result.requests > EVENTS_PER_RUN else ""),
                          flush=True)
            write_events(events, EVENTS_PER_RUN)
            profile = profile_ingress(events, prefix)
        finally:
            cleanup(prefix)

    def median(kind: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in results[kind])

    print(f"\nmedian of {ROUNDS} rounds, wrk -t1 -c{CONNECTIONS} -d{DURATION_S}s, one server process each")
    print(f"{'server':8s} {'events/s':>9s} {'p50 ms':>7s} {'p99 ms':>7s}")
    for kind in SERVERS:
        print(f"{kind:8s} {median(kind, 'rps'):9.0f} {median(kind, 'p50_ms'):7.2f} {median(kind, 'p99_ms'):7.2f}")
    vs_naive = median("ingress", "rps") / median("naive", "rps")
    vs_raw = median("ingress", "rps") / median("raw", "rps")
    print(f"\ningress / naive throughput: {vs_naive:.2f}x   (target >= 5x)")
    print(f"ingress / raw floor:        {vs_raw:.0%}    (target >= 30%)")
    errors = sum(r.non_2xx for rs in results.values() for r in rs)
    if errors:
        print(f"WARNING: {errors} non-2xx answers during the runs")
    if profile:
        print("\ningress profile (py-spy, self time by function, one loaded run):")
        for name, pct in profile:
            print(f"  {pct:5.1f}%  {name}")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
