"""Run the handlers one stream entry names: resolved once, bounded by a timeout, failures captured.

Async handlers run on the event loop. Sync handlers run in the pool's thread
pool, so a blocking client cannot stall the other in-flight entries.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass

import structlog

from bus.envelope import Event
from bus.errors import ConfigError, PermanentFailure, RetryLater
from bus.routing import Destination, RoutingTable
from workers.context import Context, Handler
from workers.engine.failures import (
    REASON_ERROR,
    REASON_PAUSED,
    REASON_PERMANENT,
    REASON_RETRY_REQUESTED,
    REASON_TIMEOUT,
    REASON_UNKNOWN_HANDLER,
    Failure,
)
from workers.importer import resolve_handler

log = structlog.get_logger("fanout.worker")


@dataclass(frozen=True)
class Resolved:
    name: str
    func: Handler
    is_async: bool


def pool_handler_names(table: RoutingTable, pool: str) -> set[str]:
    """Every handler name the routing table sends to `pool`."""
    return {h for route in table.routes for p, handlers in route.targets if p == pool for h in handlers}


class HandlerSet:
    """The pool's handlers by name. Names are resolved once; a name that cannot be is remembered."""

    def __init__(self) -> None:
        self._resolved: dict[str, Resolved | ConfigError] = {}
        # The destinations of the latest table (a removed one keeps its last known declaration);
        # forward handlers read it at each call, so edits apply without resolving them again.
        self._destinations: dict[str, Destination] = {}

    def load(self, names: Iterable[str], table: RoutingTable, *, strict: bool) -> list[ConfigError]:
        """Resolve names not seen yet; with `strict`, raise the first error instead of returning them."""
        errors: list[ConfigError] = []
        self._destinations.update(table.destinations)
        for name in sorted(set(names) - set(self._resolved)):
            try:
                func = resolve_handler(name, self._destinations)
            except ConfigError as err:
                if strict:
                    raise
                self._resolved[name] = err
                errors.append(err)
                continue
            self._resolved[name] = Resolved(name, func, inspect.iscoroutinefunction(func))
        return errors

    async def load_async(self, names: Iterable[str], table: RoutingTable) -> list[ConfigError]:
        """`load(strict=False)` with the new names resolved in a thread: importing a module never blocks the loop."""
        self._destinations.update(table.destinations)
        new = sorted(set(names) - set(self._resolved))
        if not new:
            return []
        found = await asyncio.to_thread(_resolve_all, new, self._destinations)
        errors: list[ConfigError] = []
        for name, resolved in found.items():
            if name not in self._resolved:  # a concurrent call may have resolved it meanwhile
                self._resolved[name] = resolved
                if isinstance(resolved, ConfigError):
                    errors.append(resolved)
        return errors

    def known(self, name: str) -> bool:
        """True when `name` was resolved already (or found unresolvable)."""
        return name in self._resolved

    def get(self, name: str, table: RoutingTable) -> Resolved | ConfigError:
        """The handler called `name`; a name first seen here (a newer routing table) is resolved now."""
        found = self._resolved.get(name)
        if found is None:
            self.load([name], table, strict=False)
            found = self._resolved[name]
        return found


def _resolve_all(names: list[str], destinations: dict[str, Destination]) -> dict[str, Resolved | ConfigError]:
    out: dict[str, Resolved | ConfigError] = {}
    for name in names:
        try:
            func = resolve_handler(name, destinations)
        except ConfigError as err:
            out[name] = err
            continue
        out[name] = Resolved(name, func, inspect.iscoroutinefunction(func))
    return out


async def call_handler(
    handler: Resolved | ConfigError,
    name: str,
    event: Event,
    make_ctx: Callable[[str], Context],
    timeout_s: float,
    executor: Callable[[], Executor],
    *,
    passthrough: tuple[type[BaseException], ...] = (),
) -> Failure | None:
    """Run one handler once; None on success, else the failure to record.

    Exceptions of a `passthrough` type are not a handler's failure but the caller's
    (the RQ executor's hard job timeout): they are raised, not recorded.
    """
    if isinstance(handler, ConfigError):
        return Failure(name, f"unknown handler: {handler}", "", permanent=True, reason=REASON_UNKNOWN_HANDLER)
    ctx = make_ctx(name)
    try:
        async with asyncio.timeout(timeout_s):
            if handler.is_async:
                result = handler.func(event, ctx)
                if result is not None:
                    await result
            else:
                call = functools.partial(contextvars.copy_context().run, handler.func, event, ctx)
                await asyncio.get_running_loop().run_in_executor(executor(), call)
    except passthrough:
        raise
    except PermanentFailure as err:
        ctx.log.warning("handler.permanent_failure", error=str(err))
        return Failure(name, _error_line(err), traceback.format_exc(), permanent=True, reason=REASON_PERMANENT)
    except RetryLater as err:
        ctx.log.info("handler.retry_later" if err.counts_as_attempt else "handler.paused",
                     reason=str(err), defer_s=err.defer_s)
        return Failure(name, _error_line(err), traceback.format_exc(), defer_s=err.defer_s,
                       retry_later=True, counts_as_attempt=err.counts_as_attempt,
                       reason=REASON_RETRY_REQUESTED if err.counts_as_attempt else REASON_PAUSED)
    except TimeoutError:
        ctx.log.warning("handler.timeout", timeout_s=timeout_s)
        return Failure(name, f"TimeoutError: no result within {timeout_s} s", traceback.format_exc(),
                       reason=REASON_TIMEOUT)
    except Exception as err:  # any handler error is a failed attempt
        ctx.log.warning("handler.failed", error=_error_line(err))
        return Failure(name, _error_line(err), traceback.format_exc(), reason=REASON_ERROR)
    return None


def _error_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"
