"""docs/handlers.md shows the example project's files verbatim, so the guide's code is tested code."""

from __future__ import annotations

import re

import pytest

from .conftest import REPO

BLOCK = re.compile(r"^```(?:python|yaml)\n# (examples/\S+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def quoted_files() -> list[tuple[str, str]]:
    return BLOCK.findall((REPO / "docs" / "handlers.md").read_text())


def test_the_guide_quotes_the_handler_its_test_and_its_routing() -> None:
    assert {path for path, _ in quoted_files()} == {
        "examples/shop/shop/fulfilment.py", "examples/shop/test_shop.py", "examples/shop/routing.yaml"}


@pytest.mark.parametrize(("path", "shown"), quoted_files())
def test_a_quoted_file_is_the_file_itself(path: str, shown: str) -> None:
    assert shown == (REPO / path).read_text()


def test_the_example_readme_commands_work_from_its_folder(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    from fanout.cli import build_parser, main

    text = (REPO / "examples" / "shop" / "README.md").read_text()
    commands = [line.split("fanout ", 1)[1].split() for line in text.splitlines() if "/.venv/bin/fanout " in line]
    assert commands == [["routes", "check"], ["worker", "shop"]]
    monkeypatch.chdir(REPO / "examples" / "shop")
    monkeypatch.delenv("ROUTING_FILE", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))  # `routes` puts the folder on sys.path
    assert main(commands[0]) == 0
    assert capsys.readouterr().out.startswith("routing.yaml: ok")
    assert build_parser().parse_args(commands[1]).pool == "shop"
