"""The pool's handler cache: a name that failed to resolve is tried again, so a fix needs no restart."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.errors import ConfigError
from bus.routing import RoutingTable, load_routing
from workers.handlers import HandlerSet, Resolved


@pytest.fixture
def module_dir(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))


def table(tmp_path: Path) -> RoutingTable:
    path = tmp_path / "routing.yaml"
    path.write_text("pools: {p: {}}\nroutes:\n  x.y: {p: [noop]}\n")
    return load_routing(path)


def test_a_handler_module_created_after_a_failure_is_found_once_the_retry_interval_has_passed(
        module_dir: Path) -> None:
    now = [100.0]
    handlers = HandlerSet(clock=lambda: now[0], retry_unresolved_s=5.0)
    module = f"billing_{uuid.uuid4().hex[:8]}"
    name = f"{module}:handle"
    routing = table(module_dir)

    assert isinstance(handlers.get(name, routing), ConfigError)
    (module_dir / f"{module}.py").write_text("async def handle(event, ctx):\n    return None\n")
    now[0] += 4.9
    assert isinstance(handlers.get(name, routing), ConfigError)  # still within the interval: cached
    assert handlers.known(name)
    now[0] += 0.2
    assert not handlers.known(name)
    found = handlers.get(name, routing)
    assert isinstance(found, Resolved) and found.is_async
    sys.modules.pop(module, None)


@pytest.mark.anyio
async def test_load_async_retries_a_failed_name_that_is_due(module_dir: Path) -> None:
    now = [0.0]
    handlers = HandlerSet(clock=lambda: now[0], retry_unresolved_s=1.0)
    module = f"reports_{uuid.uuid4().hex[:8]}"
    name = f"{module}:render"
    routing = table(module_dir)

    assert len(await handlers.load_async([name], routing)) == 1
    (module_dir / f"{module}.py").write_text("def render(event, ctx):\n    return None\n")
    assert await handlers.load_async([name], routing) == []  # not due: nothing tried
    assert isinstance(handlers.get(name, routing), ConfigError)
    now[0] = 1.0
    assert await handlers.load_async([name], routing) == []
    found = handlers.get(name, routing)
    assert isinstance(found, Resolved) and not found.is_async
    sys.modules.pop(module, None)
