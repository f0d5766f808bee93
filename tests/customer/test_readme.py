"""The README's "look at the orders" command works on the file the embedded store writes."""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, make_settings
from tests.customer.helpers import checkout_ids, make_context, make_event
from workers.customer.handlers import orders
from workers.customer.store.sqlite_store import DEFAULT_PATH, ORDERS_QUERY


def readme_sqlite_command() -> list[str]:
    text = (REPO / "README.md").read_text()
    match = re.search(r"^sqlite3 .*$", text, flags=re.MULTILINE)
    assert match, "README shows no sqlite3 command"
    return shlex.split(match.group(0))


def test_readme_sqlite3_command_lists_orders_of_the_embedded_store(
        prefix: str, tmp_path: Path) -> None:
    if shutil.which("sqlite3") is None:
        pytest.skip("the sqlite3 command-line shell is not installed")
    command = readme_sqlite_command()
    assert command[1] == DEFAULT_PATH
    assert command[2] == ORDERS_QUERY  # what `fanout run` prints, too
    db = tmp_path / "fanout.sqlite3"
    ids = checkout_ids()

    async def place_order() -> None:
        ctx = make_context(make_settings(prefix, FANOUT_SQLITE_PATH=str(db)))
        await orders.create_from_checkout(make_event("checkout.session.completed", ids=ids), ctx)
        await ctx.resources.aclose()

    asyncio.run(place_order())
    out = subprocess.run([command[0], str(db), *command[2:]], capture_output=True, text=True,
                         check=True, timeout=10).stdout
    assert out.strip() == f"{ids['session']}|paid|4999|usd|jenny.rosen@example.com"
