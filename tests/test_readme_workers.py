"""Every `fanout` command the README's "Two commands" and worker sections show is one the CLI accepts."""

from __future__ import annotations

import re

import pytest

from fanout.cli import build_parser

from .conftest import REPO

SECTIONS = ("## Two commands", "## Running and scaling a pool", "## Running a pool on RQ", "## Operating")


def commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    found: list[str] = []
    for heading in SECTIONS:
        section = text.split(heading, 1)[1].split("\n## ", 1)[0]
        for line in section.splitlines():
            if line.startswith(".venv/bin/fanout "):
                command = line.split("#", 1)[0].strip()
                command = re.sub(r" \[(--\w+)\]", r" \1", command)  # "[--json]" -> "--json"
                found.append(command)
    return found


def test_the_worker_sections_show_commands() -> None:
    assert len(commands()) >= 8


@pytest.mark.parametrize("command", commands())
def test_a_readme_worker_command_parses(command: str) -> None:
    args = build_parser().parse_args(command.split()[1:])
    assert callable(args.func)
