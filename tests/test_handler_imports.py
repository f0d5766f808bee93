"""Custom handlers are imported by `fanout routes check` and vetted by a worker's hot reload."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bus.reload import RoutingHolder
from fanout.cli import main
from tests.conftest import make_settings
from tests.support import FAST_POOL, H, wait_for, write_routing
from workers.engine.consumer import Consumer as Pool
from workers.importer import unresolved

TYPO = f"""\
pools:
  customer: {{{FAST_POOL}}}
  admin: {{{FAST_POOL}}}
routes:
  charge.refunded: {{customer: ["{H}record"]}}
  invoice.paid:
    customer: ["mypkg.mymod:handle"]
  refund.created: {{admin: ["{H}no_such_function"]}}
"""


def test_routes_check_imports_every_handler_and_names_each_failure_with_its_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    routing = write_routing(tmp_path, TYPO)
    assert main(["routes", "check", str(routing)]) == 1
    err = capsys.readouterr().err
    assert f"{routing}:6: route 'invoice.paid', pool 'customer': handler 'mypkg.mymod:handle'" in err
    assert "no module named 'mypkg'" in err
    assert f"{routing}:8: route 'refund.created', pool 'admin'" in err and "has no attribute" in err
    assert ":5:" not in err, "a handler that imports is not reported"


def test_routes_check_finds_handler_modules_in_the_current_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    package = tmp_path / "shop_hooks_for_check"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "refunds.py").write_text("async def on_refund(event, ctx):\n    pass\n")
    routing = write_routing(tmp_path, textwrap.dedent("""\
        pools: {admin: {}}
        routes:
          charge.refunded: {admin: ["shop_hooks_for_check.refunds:on_refund"]}
        """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    try:
        assert main(["routes", "check", str(routing)]) == 0, capsys.readouterr().err
    finally:
        sys.modules.pop("shop_hooks_for_check.refunds", None)
        sys.modules.pop("shop_hooks_for_check", None)


def test_unresolved_for_one_pool_ignores_the_other_pools_handlers(tmp_path: Path) -> None:
    table = RoutingHolder.load(write_routing(tmp_path, TYPO.replace('["mypkg.mymod:handle"]',
                                                                    f'["{H}record"]'))).table
    assert unresolved(table, pool="customer") == []
    [problem] = unresolved(table, pool="admin")
    assert problem.startswith(f"{table.source}:8: route 'refund.created', pool 'admin'")


@pytest.mark.anyio
async def test_a_worker_refuses_a_reload_whose_handlers_do_not_import_and_keeps_the_last_good(
        aredis: aioredis.Redis, prefix: str, tmp_path: Path) -> None:
    good = f"""\
pools:
  customer: {{{FAST_POOL}}}
routes:
  charge.refunded: {{customer: ["{H}record"]}}
"""
    routing = write_routing(tmp_path, good)
    settings = make_settings(prefix, routing_file=routing)
    holder = RoutingHolder.load(routing)
    pool = Pool(settings, "customer", redis=aredis, holder=holder, block_ms=50)
    first = holder.table.version
    running = asyncio.create_task(pool.run())
    try:
        routing.write_text(good.replace(f'"{H}record"', '"mypkg.mymod:handle"'))
        os.utime(routing, ns=(1, 1))

        async def refused() -> bool:
            return holder.last_error is not None

        await wait_for(refused)
        assert holder.table.version == first, "the last good table is kept"
        assert f"{routing}:4: route 'charge.refunded', pool 'customer'" in holder.last_error  # type: ignore[operator]
        assert "no module named 'mypkg'" in holder.last_error  # type: ignore[operator]

        routing.write_text(good.replace("charge.refunded", "refund.created"))
        os.utime(routing, ns=(2, 2))

        async def reloaded() -> bool:
            return holder.table.version != first

        await wait_for(reloaded)
        assert holder.last_error is None
    finally:
        pool.request_stop()
        await running
