"""Follow routing.yaml in a running consumer: pool options apply at once, new handler names are
resolved off the event loop, and a table whose handlers for this pool do not import is refused."""

from __future__ import annotations

import asyncio
import functools

import structlog

from bus import defaults
from bus.reload import RoutingHolder
from bus.routing import RoutingTable
from workers.handlers import HandlerSet, pool_handler_names
from workers.importer import unresolved


def vet_reloads(holder: RoutingHolder, pool: str) -> None:
    """Make `holder` refuse a new table whose handlers for `pool` do not import (the last good stays)."""
    holder.vet = functools.partial(unresolved, pool=pool)


async def follow_routing(holder: RoutingHolder, pool: str, executor_kind: str, handlers: HandlerSet,
                         log: structlog.typing.FilteringBoundLogger) -> None:
    """Check the file forever (run it as a task); each new table's handlers are resolved."""
    while True:
        await asyncio.sleep(defaults.RELOAD_POLL_S)
        if await holder.check_async():
            await _on_change(holder.table, pool, executor_kind, handlers, log)


async def _on_change(table: RoutingTable, pool: str, executor_kind: str, handlers: HandlerSet,
                     log: structlog.typing.FilteringBoundLogger) -> None:
    new = table.pools.get(pool)
    if new is not None and new.executor != executor_kind:
        log.warning("pool.executor_changed", executor=executor_kind, new_executor=new.executor,
                    action="restart this pool's workers to switch")
    for err in await handlers.load_async(pool_handler_names(table, pool), table):
        log.error("handler.unresolved", error=str(err))
