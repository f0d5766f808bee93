"""What a new user meets first: one clear line (no traceback) for a Redis that does not answer,
a pool-name typo, a busy port or a secret that is not Stripe's; options refused by argparse."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from bus.keys import Keys
from fanout.cli import build_parser, main

from .conftest import REPO, TEST_REDIS_URL, TEST_SECRET
from .live import free_port, wait_for_health

DEAD_REDIS = "redis://:hunter2secret@127.0.0.1:1/0"  # nothing listens on port 1; a password to hide


def fanout(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "ROUTING_FILE": str(REPO / "routing.yaml"), "PYTHONPATH": str(REPO),
               "LOG_LEVEL": "warning", **env}
    return subprocess.run([sys.executable, "-m", "fanout.cli", *args], env=environ, capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize("command", [
    ["status"], ["status", "--json"], ["worker", "customer"], ["worker", "customer", "--processes", "2"],
    ["dlq", "list", "customer"], ["dlq", "replay", "customer", "--all"],
    ["replay", "customer", "--event", "evt_1"], ["replay", "customer", "--event", "evt_1", "--reroute"],
    ["partitions"], ["routes", "diff", str(REPO / "routing.yaml")],
    ["reconcile", "--since", "2026-11-30T00:00:00Z"],
])
def test_a_redis_that_does_not_answer_is_one_line_naming_where_without_the_password(command: list[str]) -> None:
    done = fanout(*command, REDIS_URL=DEAD_REDIS, STRIPE_API_KEY="sk_test_never_used")
    assert done.returncode == 1, done
    assert done.stderr.strip().splitlines() == [
        f"fanout {' '.join(command[:2]) if command[0] in ('dlq', 'routes') else command[0]}: Redis at 127.0.0.1:1 "
        "does not answer (ConnectionError: Connection refused); check REDIS_URL"], done.stderr
    assert "hunter2secret" not in done.stdout + done.stderr


def test_an_unparsable_redis_url_is_one_line_too() -> None:
    done = fanout("status", REDIS_URL="localhost:6379")
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("fanout status: Redis at (not a redis:// URL) does not answer (ValueError: ")


@pytest.mark.parametrize("command", [
    ["dlq", "list", "custmer"], ["dlq", "replay", "custmer", "--all"],
    ["replay", "custmer", "--since", "2026-01-01T00:00:00Z"], ["replay", "custmer", "--event", "evt_1"],
    ["dlq", "replay", "custmer", "--all", "--reroute"], ["replay", "custmer", "--event", "evt_1", "--reroute"],
])
def test_a_pool_name_typo_is_refused_and_creates_nothing(command: list[str], prefix: str) -> None:
    done = fanout(*command, REDIS_URL=TEST_REDIS_URL, FANOUT_PREFIX=prefix)
    assert done.returncode == 2, done
    assert done.stderr.strip().endswith(
        "unknown pool 'custmer'; did you mean 'customer'? (pools: admin, customer)"), done.stderr
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        assert list(client.scan_iter(match=Keys(prefix).pattern())) == []
    finally:
        client.close()


def test_a_pool_removed_from_routing_yaml_keeps_its_dead_letters_reachable(prefix: str) -> None:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.xadd(Keys(prefix).dead("legacy"), {"id": "evt_old", "type": "x.y", "dlq_reason": "r"})
        done = fanout("dlq", "list", "legacy", REDIS_URL=TEST_REDIS_URL, FANOUT_PREFIX=prefix)
    finally:
        client.close()
    assert done.returncode == 0, done.stderr
    assert "evt_old" in done.stdout


def test_ingress_on_a_busy_port_says_so_in_one_line_and_exits_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = fanout("ingress", "--port", str(port), REDIS_URL=TEST_REDIS_URL,
                      STRIPE_WEBHOOK_SECRET=TEST_SECRET)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"fanout ingress: cannot listen on 127.0.0.1:{port} (Address already in use); is another server "
        f"using port {port}? Choose another with --port."]


def test_ingress_without_redis_says_so_at_start_warns_about_the_secret_and_answers_503() -> None:
    port = free_port()
    environ = {**os.environ, "ROUTING_FILE": str(REPO / "routing.yaml"), "PYTHONPATH": str(REPO),
               "LOG_LEVEL": "warning", "REDIS_URL": DEAD_REDIS, "STRIPE_WEBHOOK_SECRET": "abc"}
    ingress = subprocess.Popen([sys.executable, "-m", "fanout.cli", "ingress", "--port", str(port)],
                               env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        health = wait_for_health(ingress, port, timeout_s=15, output=ingress.communicate)
        assert health.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=3).status_code == 503
    finally:
        ingress.send_signal(signal.SIGTERM)
        _, err = ingress.communicate(timeout=15)
    assert "warning: STRIPE_WEBHOOK_SECRET does not start with 'whsec_'" in err
    assert "fanout ingress: Redis at 127.0.0.1:1 does not answer (ConnectionError: Connection refused)" in err
    assert "every webhook is answered 503" in err
    assert "hunter2secret" not in err and "abc" not in err  # neither the password nor the secret
    assert "Traceback" not in err


@pytest.mark.parametrize(("argv", "message"), [
    (["worker", "customer", "--concurrency", "0"], "argument --concurrency: must be 1 or more, got 0"),
    (["worker", "customer", "--processes", "0"], "argument --processes: must be 1 or more, got 0"),
    (["worker", "customer", "--processes", "two"], "argument --processes: 'two' is not a whole number"),
    (["ingress", "--workers", "0"], "argument --workers: must be 1 or more, got 0"),
    (["run", "--port", "70000"], "argument --port: a port is 1 to 65535, got 70000"),
])
def test_zero_or_bad_counts_are_refused_by_argparse(argv: list[str], message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"stripe-fanout {version('stripe-fanout')}"


def test_help_speaks_to_users_and_every_option_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.description is not None and parser.description.startswith("stripe-fanout: point Stripe")
    missing = []

    def walk(p: object, path: str) -> None:
        import argparse

        assert isinstance(p, argparse.ArgumentParser)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, f"{path} {name}")
            elif not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(parser, "fanout")
    assert missing == []


def test_routes_check_takes_the_file_as_an_option_or_positionally(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shipped = str(REPO / "routing.yaml")
    assert main(["routes", "check", "--file", shipped]) == 0
    assert main(["routes", "check", shipped]) == 0
    assert capsys.readouterr().out.count(": ok (version") == 2
    with pytest.raises(SystemExit) as exited:
        main(["routes", "check", shipped, "--file", str(tmp_path / "other.yaml")])
    assert exited.value.code == 2


def test_secret_warnings_name_the_problem_never_the_secret() -> None:
    from bus.settings import parse_secrets
    from fanout.preflight import secret_warnings

    assert secret_warnings(parse_secrets(TEST_SECRET)) == []
    [only] = secret_warnings(parse_secrets("abc"))
    assert only.startswith("warning: STRIPE_WEBHOOK_SECRET does not start with 'whsec_'") and "abc" not in only
    warnings = secret_warnings(parse_secrets(f"{TEST_SECRET},whsec_x1y2,zzz_not_stripe_at_all_123456"))
    assert [w.split(":")[1].strip() for w in warnings] == [
        "secret 2 of STRIPE_WEBHOOK_SECRET is only 10 characters long",
        "secret 3 of STRIPE_WEBHOOK_SECRET does not start with 'whsec_'"]
    assert not any("x1y2" in w or "zzz_not" in w for w in warnings)


def test_fanout_run_warns_about_a_secret_that_is_not_stripes(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from fanout import run as run_module

    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "abc")
    monkeypatch.setenv("REDIS_URL", TEST_REDIS_URL)
    monkeypatch.setenv("ROUTING_FILE", str(REPO / "no-such-routing.yaml"))  # stops right after the checks
    monkeypatch.setattr(run_module, "cannot_listen", lambda host, port: None)
    assert run_module.run_everything("127.0.0.1", free_port()) == 1
    assert "warning: STRIPE_WEBHOOK_SECRET does not start with 'whsec_'" in capsys.readouterr().err


def test_fanout_run_with_a_configured_redis_that_does_not_answer_stops_at_once(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from fanout import run as run_module

    monkeypatch.setenv("REDIS_URL", DEAD_REDIS)
    monkeypatch.setenv("ROUTING_FILE", str(REPO / "routing.yaml"))
    assert run_module.run_everything("127.0.0.1", free_port()) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "fanout run: Redis at 127.0.0.1:1 does not answer (ConnectionError: Connection refused); check REDIS_URL"]
