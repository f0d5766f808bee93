"""The README's `fanout routes` examples are run, and their shown output must match."""

from __future__ import annotations

import re

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
