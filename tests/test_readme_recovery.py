"""The README's recovery examples (`--reroute`, `reconcile`, `routes diff`) run, and print what it shows.

Each command is read from the README and run as written, in a directory holding a
copy of the shipped routing.yaml, on state made for it. The reconcile examples
are served by tests/stripe_events_double.py, since their dates are fixed and
localstripe stamps events with the current time (tests/test_reconcile.py runs
reconcile against localstripe itself).
"""

from __future__ import annotations

import re
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from bus.envelope import entry_fields
from bus.keys import Keys
from bus.routing import load_routing
from fanout.cli import main
from fanout.samples import sample_event
from ingress.parse import routing_fields
from tests.conftest import REPO, TEST_REDIS_URL
from tests.live import serve
from tests.stripe_events_double import API_KEY, EventsDouble
from tests.support import mark_seen

TYPO = "mypkg.mymod:handle"
CHARGE_REFUNDED = "  charge.refunded: {admin: [forward:admin_backend]}\n"


def shown(prefix: str, also: str = "") -> tuple[list[str], list[str]]:
    """The README command starting with `.venv/bin/fanout PREFIX` (and holding `also`): argv, output shown."""
    lines = (REPO / "README.md").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith(".venv/bin/fanout " + prefix) and also in line:
            expected = []
            for follow in lines[i + 1:]:
                if not follow.startswith("# "):
                    break
                expected.append(follow[2:])
            return line.split("#", 1)[0].split()[1:], expected
    raise AssertionError(f"the README shows no `fanout {prefix}`")


def assert_prints(out: str, expected: list[str]) -> None:
    """Output lines match the README's, where `…` stands for anything (a table version)."""
    got = out.splitlines()
    assert len(got) == len(expected), (got, expected)
    for line, pattern in zip(got, expected, strict=True):
        assert re.fullmatch(".*".join(map(re.escape, pattern.split("…"))), line), (line, pattern)


@pytest.fixture
def workdir(tmp_path: Path, prefix: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copy(REPO / "routing.yaml", tmp_path / "routing.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ROUTING_FILE", raising=False)
    for name, value in {"REDIS_URL": TEST_REDIS_URL, "FANOUT_PREFIX": prefix, "LOG_LEVEL": "warning"}.items():
        monkeypatch.setenv(name, value)
    return tmp_path


@pytest.fixture
def client() -> Any:
    c = redis.Redis.from_url(TEST_REDIS_URL)
    yield c
    c.close()


def stored_fields(event: dict[str, Any], handlers: tuple[str, ...]) -> dict[str, str | bytes]:
    body = orjson.dumps(event)
    return entry_fields(routing_fields(body), handlers, "v-typo", body)


def test_the_readme_reroute_examples_recover_what_a_handler_typo_dead_lettered(
    workdir: Path, keys: Keys, client: Any, capsys: pytest.CaptureFixture[str],
) -> None:
    table = load_routing(workdir / "routing.yaml")
    [(_, now_routed)] = [t for t in table.match("checkout.session.completed").targets if t[0] == "customer"]
    for i in range(2):
        fields = stored_fields(sample_event("checkout.session.completed", event_id=f"evt_typo_{i}"), (TYPO,))
        client.xadd(keys.dead("customer"), {**fields, "dlq_reason": "unknown handler",
                                            "dlq_handlers": TYPO, "dlq_entry_id": f"1-{i}"})
    argv, expected = shown("dlq replay customer --all --reroute")
    assert main(argv) == 0
    assert_prints(capsys.readouterr().out, expected)
    copies = client.xrange(keys.stream("customer"))
    assert [c[b"handlers"].decode() for _, c in copies] == [",".join(now_routed)] * 2
    assert client.xlen(keys.dead("customer")) == 0

    argv, expected = shown("replay customer --event ", also="--reroute")
    event_id = argv[argv.index("--event") + 1]
    client.xadd(keys.stream("customer"), stored_fields(sample_event("checkout.session.completed",
                                                                    event_id=event_id), (TYPO,)))
    assert main(argv) == 0
    assert_prints(capsys.readouterr().out, expected)
    [*_, (_, copy)] = client.xrange(keys.stream("customer"))
    assert copy[b"handlers"].decode() == ",".join(now_routed) and copy[b"id"].decode() == event_id


def _api_event(event_type: str, created: str, n: int) -> dict[str, Any]:
    event = sample_event(event_type, event_id=f"evt_api_{event_type.replace('.', '_')}_{n}")
    event["created"] = int(datetime.fromisoformat(created).timestamp())
    return event


def test_the_readme_reconcile_examples_run_and_print_what_it_shows(
    workdir: Path, keys: Keys, client: Any, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    in_window = [_api_event("checkout.session.completed", "2026-11-28T10:00:00Z", 1),
                 _api_event("checkout.session.completed", "2026-11-28T11:00:00Z", 2),
                 _api_event("payment_intent.succeeded", "2026-11-29T09:00:00Z", 1)]
    double = EventsDouble(events=[*in_window, _api_event("customer.created", "2026-11-28T12:00:00Z", 1),
                                  _api_event("checkout.session.completed", "2026-11-30T08:00:00Z", 3)])
    # The first checkout was delivered: the ingress marked it seen.
    mark_seen(client, keys, in_window[0]["id"], in_window[0]["data"]["object"]["id"])
    monkeypatch.setenv("STRIPE_API_KEY", API_KEY)
    with serve(double.app()) as base:
        monkeypatch.setenv("STRIPE_API_BASE", base)
        argv, expected = shown("reconcile --since 2026-11-28T00:00:00Z --dry-run")
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "dry run, nothing written" in out.splitlines()[0] and "would publish  4" in out
        assert client.xlen(keys.stream("customer")) == 0

        argv, expected = shown("reconcile --since 2026-11-28T00:00:00Z --until")
        assert main(argv) == 0
        assert_prints(capsys.readouterr().out, expected)
    assert client.xlen(keys.stream("customer")) == 2 and client.xlen(keys.stream("admin")) == 1


def test_the_readme_routes_diff_example_prints_what_it_shows(
    workdir: Path, keys: Keys, client: Any, capsys: pytest.CaptureFixture[str],
) -> None:
    shipped = (workdir / "routing.yaml").read_text()
    assert CHARGE_REFUNDED in shipped
    (workdir / "routing.new.yaml").write_text(shipped.replace(
        CHARGE_REFUNDED, "  charge.refunded: {admin: [forward:admin_backend], customer: [analytics.track]}\n"))
    table = load_routing(workdir / "routing.yaml")
    for event_type, n in (("charge.refunded", 2), ("checkout.session.completed", 3)):
        for i in range(n):
            event = sample_event(event_type, event_id=f"evt_diff_{event_type.replace('.', '_')}_{i}")
            for pool, handlers in table.match(event_type).targets:
                client.xadd(keys.stream(pool), stored_fields(event, handlers))
    argv, expected = shown("routes diff routing.new.yaml")
    assert main(argv) == 0
    assert_prints(capsys.readouterr().out, expected)
