"""The README's `fanout routes` examples are run, and their shown output must match."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fanout.cli import main

from .conftest import REPO


def examples() -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for each `.venv/bin/fanout routes explain` example."""
    lines = (REPO / "README.md").read_text().splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.startswith(".venv/bin/fanout routes explain "):
            expected = []
            for follow in lines[i + 1 :]:
                if not follow.startswith("# "):
                    break
                expected.append(follow[2:])
            found.append((line, expected))
    return found


def test_the_readme_has_routing_examples() -> None:
    assert len(examples()) >= 2


@pytest.mark.parametrize(("command", "expected"), examples())
def test_a_readme_routes_example_prints_what_the_readme_shows(
    command: str, expected: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    argv = command.split()[1:]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == expected


def test_routes_check_as_the_readme_shows_it(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    assert main(["routes", "check"]) == 0
    assert re.match(r"routing.yaml: ok \(version [0-9a-f]{12};", capsys.readouterr().out)


def readme() -> str:
    return (REPO / "README.md").read_text()


def test_the_readme_routing_block_is_the_shipped_file_without_its_comments() -> None:
    section = readme().split("## routing.yaml\n", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```\n", 1)[0]
    shipped = [line for line in (REPO / "routing.yaml").read_text().splitlines()
               if line.strip() and not line.lstrip().startswith("#")]
    assert block.splitlines() == shipped


def test_make_run_takes_port_and_host() -> None:
    import subprocess

    done = subprocess.run(["make", "--no-print-directory", "-n", "run", "PORT=8010", "HOST=0.0.0.0"],
                          cwd=REPO, capture_output=True, text=True, timeout=30, check=True)
    runs = [line for line in done.stdout.splitlines() if "fanout run" in line]
    assert runs == [".venv/bin/fanout run --host 0.0.0.0 --port 8010"], done.stdout
    assert "make run PORT=8010" in readme()


def send_commands() -> list[list[str]]:
    return [line.split("#", 1)[0].split()[1:] for line in readme().splitlines()
            if line.startswith(".venv/bin/fanout send ")]


def test_every_readme_send_command_is_accepted_by_the_ingress_and_the_customer_pool_settles_them(
        prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's sends, in its order, into a served ingress; then the customer pool drains them:
    nothing is dead-lettered, and the checkout + payment intent pair leaves its order paid."""
    import asyncio
    import sqlite3

    import orjson

    from bus import defaults
    from fanout.samples import sample_event
    from ingress.app import create_app
    from workers.ops.deadletter import list_dead
    from workers.supervision.runner import run_pool

    from .conftest import make_settings
    from .live import serve

    commands = send_commands()
    assert ["send", "--file", "payload.json"] in commands
    assert any("payment_intent.succeeded" in c and "--object" in c for c in commands)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "payload.json").write_bytes(orjson.dumps(sample_event("customer.created")))
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET", raising=False)
    db = tmp_path / "fanout.sqlite3"
    settings = make_settings(prefix, secrets=defaults.DEV_WEBHOOK_SECRET, FANOUT_SQLITE_PATH=str(db),
                             FANOUT_MAIL_DIR=str(tmp_path / "mail"))
    with serve(create_app(settings)) as base:
        for command in commands:
            assert main([*command, "--url", base + defaults.WEBHOOK_PATH]) == 0, command
    capsys.readouterr()

    async def drain() -> list[object]:
        import redis.asyncio as aioredis

        from bus.keys import Keys

        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            await run_pool(settings, "customer", redis=client, burst=True)
            return list(await list_dead(client, Keys(prefix), "customer"))
        finally:
            await client.aclose()

    assert asyncio.run(drain()) == []
    with sqlite3.connect(db) as conn:
        status = conn.execute("select status from orders where checkout_session_id = 'cs_test_demo_2'").fetchall()
    assert status == [("paid",)]
