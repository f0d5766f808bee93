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


def deployment_commands() -> list[str]:
    """The `fanout ...` commands the Deployment section has platforms run (in sh, toml and yaml)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Deployment\n", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"\bfanout (?:ingress|worker)[^\"`\n]*", section)
    found += re.findall(r'\["fanout", ((?:"[^"]+", )*"[^"]+")\]', section)
    return [c if c.startswith("fanout ") else "fanout " + " ".join(re.findall(r'"([^"]+)"', c)) for c in found]


def test_the_deployment_section_shows_an_ingress_and_worker_commands() -> None:
    commands = deployment_commands()
    assert any(c.startswith("fanout ingress") for c in commands)
    assert {"fanout worker customer", "fanout worker admin"} <= set(commands)


@pytest.mark.parametrize("command", deployment_commands())
def test_a_deployment_command_parses(command: str) -> None:
    args = build_parser().parse_args(command.split()[1:])
    assert callable(args.func)


@pytest.mark.parametrize("line", [line for line in (REPO / "Procfile").read_text().splitlines()
                                  if line and not line.startswith("#")])
def test_a_procfile_command_parses(line: str) -> None:
    command = line.split(":", 1)[1].replace("${PORT:-8000}", "8000").split()
    assert command[0] == "fanout"
    assert callable(build_parser().parse_args(command[1:]).func)
