"""`fanout run` as `make run` starts it: ingress, both pools and the admin stand-in, then SIGTERM.

Nothing is configured but, in one case, Redis (the test database, under this
test's key prefix); in the other, no Redis answers, as on a fresh machine, and
`fanout run` serves an in-process one. The customer pool uses its embedded
defaults, relative to the working directory: var/fanout.sqlite3, var/mail/,
and the admin stand-in's var/admin-backend.jsonl.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from bus import defaults
from bus.keys import Keys
from fanout.cli import main

from .conftest import REPO, TEST_REDIS_URL
from .live import free_port

pytestmark = pytest.mark.integration

FANOUT = Path(sys.executable).parent / "fanout"  # the console script `make install` puts in .venv/bin
UNSET = ("STRIPE_WEBHOOK_SECRET", "ADMIN_BACKEND_URL", "ADMIN_BACKEND_SECRET", "SUPABASE_URL",
         "SMTP_URL", "FANOUT_SQLITE_PATH", "FANOUT_MAIL_DIR", "ROUTING_FILE")
WAIT_S = 10.0
# `fanout run` on a machine where nothing answers on the local Redis port.
NO_LOCAL_REDIS = """
import sys
from fanout import embedded
from fanout.cli import main
embedded.LOCAL_REDIS_URL = "redis://127.0.0.1:1/0"
raise SystemExit(main(sys.argv[1:]))
"""


def children_of(pid: int) -> list[int]:
    """The direct children of `pid`, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it exited while we looked
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """`pid` still runs fanout (a reaped PID may already belong to something else)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return state != "Z" and b"fanout" in command


def wait_until(what: str, condition: Callable[[], bool], run: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert run.poll() is None, f"fanout run exited ({run.returncode}):\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {what} within {WAIT_S} s:\n{log.read_text()}"
        time.sleep(0.05)


def orders(db: Path) -> list[tuple[str, str]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        try:
            return conn.execute("select checkout_session_id, status from orders").fetchall()
        except sqlite3.OperationalError:  # the pool has not created the table yet
            return []


def stand_in_log(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def environ_of(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(pair.split("=", 1) for pair in pairs if "=" in pair)


def settled(redis_url: str, prefix: str) -> Callable[[], bool]:
    """True once both pools hold nothing pending and nothing was dead-lettered."""
    def check() -> bool:
        client = redis.Redis.from_url(redis_url)
        try:
            keys = Keys(prefix)
            return all(client.xpending(keys.stream(pool), keys.group(pool))["pending"] == 0
                       and client.xlen(keys.dead(pool)) == 0 for pool in ("customer", "admin"))
        finally:
            client.close()
    return check


@pytest.mark.parametrize("redis_kind", ["local Redis", "in-process Redis"])
def test_fanout_run_takes_a_sent_checkout_to_an_order_an_email_and_the_admin_stand_in_then_stops_on_sigterm(
        redis_kind: str, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert FANOUT.exists(), f"{FANOUT} is missing: run `make install`"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in UNSET and k != "REDIS_URL"}
    env.update({"FANOUT_PREFIX": prefix, "LOG_LEVEL": "info"})
    command = [str(FANOUT)]
    if redis_kind == "local Redis":
        env["REDIS_URL"] = TEST_REDIS_URL
    else:
        command = [sys.executable, "-c", NO_LOCAL_REDIS]
    # The shipped routing.yaml, found in the working directory as under `make run`.
    (tmp_path / "routing.yaml").write_bytes((REPO / "routing.yaml").read_bytes())
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        run = subprocess.Popen([*command, "run", "--port", str(port)], cwd=tmp_path, env=env,
                               stdout=out, stderr=subprocess.STDOUT)
    pools: list[int] = []
    try:
        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=0.5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until("/readyz", ready, run, log)
        wait_until("pool processes", lambda: len(children_of(run.pid)) == 2, run, log)
        pools = children_of(run.pid)

        # The banner gives the console's address and each pool's metrics; all of them answer.
        def answers(url: str, text: str) -> Callable[[], bool]:
            def check() -> bool:
                try:
                    got = httpx.get(url, timeout=1)
                except httpx.HTTPError:
                    return False
                return got.status_code == 200 and text in got.text
            return check

        [console_url] = re.findall(r"console: +(http://\S+)", log.read_text())
        wait_until("the console", answers(console_url, 'data-pool="customer"'), run, log)
        metrics = dict(re.findall(r"(\w+) (http://\S+/metrics)", log.read_text()))
        assert set(metrics) == {"customer", "admin"}
        for pool, metrics_url in metrics.items():
            wait_until(f"{pool} metrics", answers(metrics_url, f'fanout_pool_lag{{partition="0",pool="{pool}"}}'),
                       run, log)

        # As the banner prints it: no secret given, so both sides use the development secret.
        monkeypatch.delenv("STRIPE_WEBHOOK_SECRET", raising=False)
        event_id = f"evt_run_{uuid.uuid4().hex[:16]}"
        url = f"http://127.0.0.1:{port}{defaults.WEBHOOK_PATH}"
        assert main(["send", "checkout.session.completed", "--url", url, "--id", event_id]) == 0
        # `fanout run` serves in another process: all this process printed is send's answer.
        sent = capsys.readouterr().out
        assert sent.startswith("200 ") and '"pools":["customer","admin"]' in sent

        var = tmp_path / "var"
        wait_until("order", lambda: len(orders(var / "fanout.sqlite3")) == 1, run, log)
        wait_until("email", lambda: len(list((var / "mail").glob("*.eml"))) == 1, run, log)
        wait_until("stand-in delivery", lambda: bool(stand_in_log(var / "admin-backend.jsonl")), run, log)
        assert orders(var / "fanout.sqlite3")[0][1] == "paid"
        assert stand_in_log(var / "admin-backend.jsonl") == [
            {"id": event_id, "type": "checkout.session.completed", "verified": True}]
        [eml] = (var / "mail").glob("*.eml")
        assert event_id in eml.name and "To: Jenny Rosen <jenny.rosen@example.com>" in eml.read_text()
        # Every entry was acked, none dead-lettered, in the Redis the pools were given.
        [redis_url] = {environ_of(pid)["REDIS_URL"] for pid in pools}
        assert (redis_url == TEST_REDIS_URL) == (redis_kind == "local Redis")
        wait_until("acks", settled(redis_url, prefix), run, log)
        # The generated stand-in secret reached the pools through their environment only.
        [secret] = {environ_of(pid)["ADMIN_BACKEND_SECRET"] for pid in pools}

        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=20) == 0, log.read_text()
        assert not [pid for pid in pools if alive(pid)]
    finally:
        for pid in [run.pid, *pools]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        run.wait(timeout=5)

    output = log.read_text()
    banner = output.split("\n\n", 1)[0]
    where = TEST_REDIS_URL if redis_kind == "local Redis" else "in-process Redis (nothing is kept)"
    assert "events are stored in: " + where in banner
    assert f"key prefix:           {prefix} (FANOUT_PREFIX" in banner
    assert "sqlite3 var/fanout.sqlite3 'select checkout_session_id," in banner
    assert ".eml files in var/mail/" in banner
    assert "admin_backend:        a local STAND-IN" in banner and "var/admin-backend.jsonl" in banner
    assert secret not in output and defaults.DEV_WEBHOOK_SECRET not in output
