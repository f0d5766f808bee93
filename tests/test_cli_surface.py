"""The CLI's surface: every command and subcommand, with each option, as tests/cli_surface.json records it.

The file changes only on purpose (a new option, a new help line): regenerate it with
`.venv/bin/python -m tests.test_cli_surface > tests/cli_surface.json` and review the diff.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import orjson
import pytest

from fanout.cli import build_parser

SNAPSHOT = Path(__file__).with_name("cli_surface.json")


def _option(action: argparse.Action) -> dict[str, Any]:
    return {"flags": action.option_strings or [action.dest], "dest": action.dest, "metavar": action.metavar,
            "nargs": action.nargs, "required": action.required, "default": repr(action.default),
            "choices": sorted(map(str, action.choices)) if action.choices else None, "help": action.help,
            "kind": type(action).__name__}


def surface(parser: argparse.ArgumentParser | None = None, path: str = "fanout") -> dict[str, Any]:
    """{command path: {"usage", "description", "options": [...], "subcommands": {name: help}}}, depth first."""
    parser = parser or build_parser()
    found: dict[str, Any] = {}
    entry: dict[str, Any] = {"usage": parser.format_usage(), "description": parser.description,
                             "epilog": parser.epilog, "options": [], "subcommands": {}}
    found[path] = entry
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, child in action.choices.items():
                entry["subcommands"][name] = helps.get(name)
                found.update(surface(child, f"{path} {name}"))
        else:
            entry["options"].append(_option(action))
    return found


def test_every_command_and_option_is_as_the_snapshot_records(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")  # usage lines wrap at the terminal's width
    recorded = orjson.loads(SNAPSHOT.read_bytes())
    current = surface()
    assert list(current) == list(recorded)  # the same commands, in the same order
    for path, entry in current.items():
        assert entry == recorded[path], path


if __name__ == "__main__":
    import os

    os.environ["COLUMNS"] = "100"  # usage lines wrap at the terminal's width
    print(orjson.dumps(surface(), option=orjson.OPT_INDENT_2).decode())
