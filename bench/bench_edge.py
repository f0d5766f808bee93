"""The ingress's edge under attack, loopback only, bounded in count and time.

For each server kind (the shipped `fanout ingress` with its guard; the same app under
plain uvicorn; hypercorn and granian when installed), one process each:

    1. baseline: a normal client (a new connection per signed webhook, PACE_RPS) for MEASURE_S;
       its p99 latency;
    2. the same client while IDLE connections sit open (reopened when the server closes
       them) and SLOW slowloris connections trickle one header line a second; p99 and the
       ratio to the baseline (target <= 2x). Phases 1 and 2 alternate CYCLES times, and the
       medians are compared: the machine is shared, and its noise drifts;
    3. fd exhaustion: the server started with RLIMIT_NOFILE 1024 (soft and hard), 1,100 idle
       connections, then 20 normal requests: how many are answered 200;
    4. a header bomb (up to 20 MB of one header): what the server answers, and after how many MB;
    5. throughput, wrk as in bench_ingress (events/s, p99), ROUNDS rounds interleaved.

Attacks run in a child process (`python -m bench.bench_edge attack ...`) so they never
share the measuring client's GIL. Override sizes with BENCH_EDGE_* variables.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from bench.bench_ingress import (
    SECRET,
    cleanup,
    free_port,
    run_wrk,
    server_command,
    start_server,
    write_events,
)
from bus.signing import stripe_signature
from fanout.samples import sample_event

IDLE = int(os.environ.get("BENCH_EDGE_IDLE", "2000"))
SLOW = int(os.environ.get("BENCH_EDGE_SLOW", "500"))
PACE_RPS = int(os.environ.get("BENCH_EDGE_PACE_RPS", "100"))
MEASURE_S = float(os.environ.get("BENCH_EDGE_MEASURE_S", "10"))
CYCLES = int(os.environ.get("BENCH_EDGE_CYCLES", "3"))
ROUNDS = int(os.environ.get("BENCH_EDGE_ROUNDS", "2"))
EXHAUST_FD_LIMIT = 1024
EXHAUST_IDLE = 1100
BOMB_BYTES = 20 * 1024 * 1024
KINDS = os.environ.get("BENCH_EDGE_KINDS", "guard,uvicorn,hypercorn,granian").split(",")


def command(kind: str, port: int) -> list[str] | None:
    """How to serve the ingress app with each server; None when that server is not installed."""
    py = sys.executable
    if kind == "guard":
        return server_command("ingress", port)
    if kind == "uvicorn":  # the app exactly as before the guard: uvicorn's own httptools protocol
        return [py, "-m", "uvicorn", "--factory", "ingress.asgi:from_env", "--host", "127.0.0.1",
                "--port", str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
                "--no-proxy-headers", "--log-level", "warning", "--timeout-keep-alive", "5"]
    if importlib.util.find_spec(kind) is None:
        return None
    if kind == "hypercorn":  # h11: 16 KiB incomplete-request limit by default
        return [py, "-m", "hypercorn", "ingress.asgi:from_env()", "--bind", f"127.0.0.1:{port}",
                "--worker-class", "uvloop", "--keep-alive", "5", "--read-timeout", "10",
                "--log-level", "warning"]
    if kind == "granian":
        return [py, "-m", "granian", "--interface", "asgi", "--factory", "ingress.asgi:from_env",
                "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http", "1",
                "--http1-header-read-timeout", "10000", "--http1-buffer-size", "16384",
                "--log-level", "warning", "--no-ws"]
    raise ValueError(kind)


# --- the normal client ---------------------------------------------------------------------------


def signed_requests(count: int, port: int) -> list[bytes]:
    now = int(time.time())
    out = []
    for _ in range(count):
        body = orjson.dumps(sample_event("charge.refunded", created=now))
        head = (f"POST /webhooks/stripe HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
                f"stripe-signature: {stripe_signature(body, SECRET, timestamp=now)}\r\n\r\n")
        out.append(head.encode() + body)
    return out


def one_request(port: int, request: bytes, timeout_s: float = 5.0) -> tuple[float, int]:
    """(seconds, status) for one request on a new connection; status 0 when it failed."""
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(request)
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    except OSError:
        status = 0
    return time.perf_counter() - started, status


def normal_client(port: int, duration_s: float) -> tuple[float, int, int]:
    """(p99 ms, answered 200, requests) at PACE_RPS, one new connection per request."""
    count = int(duration_s * PACE_RPS)
    requests = signed_requests(count, port)
    latencies, ok = [], 0
    start = time.perf_counter()
    for i, request in enumerate(requests):
        delay = start + i / PACE_RPS - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        seconds, status = one_request(port, request)
        latencies.append(seconds)
        ok += status == 200
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000
    return p99, ok, count


# --- the attacker (a child process) ------------------------------------------------------------


async def _hold_idle(port: int, stop: float, opened: list[int]) -> None:
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.2)
            continue
        opened[0] += 1
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(max(0.0, stop - time.monotonic())):
                await reader.read(65536)  # returns when the server closes it
        writer.close()


async def _slowloris(port: int, stop: float, opened: list[int]) -> None:
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            opened[1] += 1
            writer.write(b"POST /webhooks/stripe HTTP/1.1\r\nhost: x\r\n")
            while time.monotonic() < stop and not writer.is_closing():
                await asyncio.sleep(1.0)
                writer.write(b"x-a: b\r\n")
                await writer.drain()
                if reader.at_eof():
                    break
        except OSError:
            await asyncio.sleep(0.2)
        else:
            writer.close()


async def attack(port: int, idle: int, slow: int, duration_s: float) -> None:
    # A real attacker has machines of its own; here it shares the server's cores, so it yields them.
    os.nice(19)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stop = time.monotonic() + duration_s
    opened = [0, 0]
    tasks = []
    for i in range(idle + slow):  # ramp at ~1,000/s so the listen backlog never overflows
        tasks.append(asyncio.create_task(_hold_idle(port, stop, opened) if i < idle
                                         else _slowloris(port, stop, opened)))
        if i % 100 == 99:
            await asyncio.sleep(0.1)
    await asyncio.gather(*tasks, return_exceptions=True)
    print(orjson.dumps({"idle_opened": opened[0], "slow_opened": opened[1]}).decode(), flush=True)


def start_attack(port: int, idle: int, slow: int, duration_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "bench.bench_edge", "attack", str(port), str(idle),
                             str(slow), str(duration_s)], stdout=subprocess.PIPE, text=True)


# --- scenarios --------------------------------------------------------------------------------------


def under_attack(kind: str, prefix: str) -> dict[str, object]:
    """Baseline and attacked phases alternate CYCLES times (the machine is shared: its noise
    drifts), each MEASURE_S long; the medians of their p99s are compared."""
    port = free_port()
    server = start_server(kind, port, prefix, command=command(kind, port))
    base: list[float] = []
    hit: list[float] = []
    base_ok = hit_ok = base_n = hit_n = 0
    opened = {"idle_opened": 0, "slow_opened": 0}
    try:
        normal_client(port, 1.0)  # warm up
        for _ in range(CYCLES):
            p99, ok, n = normal_client(port, MEASURE_S)
            base.append(p99)
            base_ok, base_n = base_ok + ok, base_n + n
            ramp_s = (IDLE + SLOW) / 1000 + 2
            attacker = start_attack(port, IDLE, SLOW, ramp_s + MEASURE_S + 0.5)
            time.sleep(ramp_s)
            p99, ok, n = normal_client(port, MEASURE_S)
            hit.append(p99)
            hit_ok, hit_n = hit_ok + ok, hit_n + n
            for key, count in orjson.loads(attacker.communicate(timeout=60)[0].strip().splitlines()[-1]).items():
                opened[key] += count
            time.sleep(1.0)  # let the server close what the attacker left
    finally:
        server.terminate()
        server.wait(timeout=10)
    base_p99, hit_p99 = statistics.median(base), statistics.median(hit)
    return {"base_p99_ms": base_p99, "base_ok": f"{base_ok}/{base_n}", "attack_p99_ms": hit_p99,
            "attack_ok": f"{hit_ok}/{hit_n}", "ratio": hit_p99 / base_p99,
            "phases": " ".join(f"{b:.1f}/{h:.1f}" for b, h in zip(base, hit, strict=True)), **opened}


def _fd_limit(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def exhaustion(kind: str, prefix: str) -> str:
    port = free_port()
    server = start_server(kind, port, prefix, command=command(kind, port),
                          preexec_fn=lambda: _fd_limit(EXHAUST_FD_LIMIT))
    try:
        attacker = start_attack(port, EXHAUST_IDLE, 0, 8.0)
        time.sleep(EXHAUST_IDLE / 1000 + 1.5)
        answered = sum(one_request(port, r, timeout_s=2.0)[1] == 200 for r in signed_requests(20, port))
        attacker.communicate(timeout=60)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return f"{answered}/20"


def header_bomb(kind: str, prefix: str) -> str:
    port = free_port()
    server = start_server(kind, port, prefix, command=command(kind, port))
    sent, answer = 0, b""
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            sock.sendall(b"POST /webhooks/stripe HTTP/1.1\r\nhost: x\r\nx-bomb: ")
            chunk = b"a" * 65536
            with contextlib.suppress(OSError):
                while sent < BOMB_BYTES:
                    sock.sendall(chunk)
                    sent += len(chunk)
                sock.sendall(b"\r\ncontent-length: 0\r\n\r\n")
            with contextlib.suppress(OSError):
                answer = sock.recv(200)
    finally:
        server.terminate()
        server.wait(timeout=10)
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace") or "(closed, no answer)"
    return f"{status} after {sent / 1e6:.1f} MB, {time.perf_counter() - started:.1f} s"


def throughput(kinds: list[str], prefix: str) -> dict[str, list[tuple[float, float]]]:
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "events.tsv"
        for _ in range(ROUNDS):
            for kind in kinds:
                write_events(events, 60_000)
                port = free_port()
                server = start_server(kind, port, prefix, command=command(kind, port))
                try:
                    result = run_wrk(port, events)
                finally:
                    server.terminate()
                    server.wait(timeout=10)
                results[kind].append((result.rps, result.p99_ms))
                print(f"round {len(results[kind])} {kind:9s} {result.rps:8.0f} events/s  p99 {result.p99_ms:6.2f} ms",
                      flush=True)
    return results


def main() -> int:
    kinds = [k for k in KINDS if command(k, 0) is not None]
    skipped = sorted(set(KINDS) - set(kinds))
    prefix = f"bench-edge-{uuid.uuid4().hex[:8]}"
    attacks: dict[str, dict[str, object]] = {}
    try:
        for kind in kinds if CYCLES else []:  # BENCH_EDGE_CYCLES=0: throughput only
            attacks[kind] = under_attack(kind, prefix)
            attacks[kind]["exhaustion"] = exhaustion(kind, prefix)
            attacks[kind]["bomb"] = header_bomb(kind, prefix)
            a = attacks[kind]
            print(f"{kind:9s} baseline p99 {a['base_p99_ms']:7.2f} ms ({a['base_ok']} ok)   "
                  f"under {IDLE} idle + {SLOW} slowloris p99 {a['attack_p99_ms']:7.2f} ms ({a['attack_ok']} ok)"
                  f"   ratio {a['ratio']:.2f}x", flush=True)
            print(f"{'':9s} p99 ms per cycle, baseline/attacked: {a['phases']};   connections the attacker "
                  f"opened: idle {a['idle_opened']}, slowloris {a['slow_opened']}", flush=True)
            print(f"{'':9s} fd limit {EXHAUST_FD_LIMIT}, {EXHAUST_IDLE} idle: {a['exhaustion']} answered 200;"
                  f"   header bomb: {a['bomb']}", flush=True)
        wrk = throughput(kinds, prefix)
    finally:
        cleanup(prefix)
    if not ROUNDS:
        return 0
    print(f"\nthroughput, wrk -t1 -c64 as bench_ingress, median of {ROUNDS} rounds")
    base = statistics.median(r for r, _ in wrk["uvicorn"]) if "uvicorn" in wrk else None
    for kind, runs in wrk.items():
        rps = statistics.median(r for r, _ in runs)
        p99 = statistics.median(p for _, p in runs)
        vs = f"   {rps / base:.0%} of plain uvicorn" if base else ""
        print(f"{kind:9s} {rps:8.0f} events/s  p99 {p99:6.2f} ms{vs}")
    if skipped:
        print(f"(not installed, skipped: {', '.join(skipped)})")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["attack"]:
        port, idle, slow, duration = sys.argv[2:6]
        import uvloop  # the attacker shares the machine's cores: spend as little of them as it can

        uvloop.run(attack(int(port), int(idle), int(slow), float(duration)))
    else:
        raise SystemExit(main())
