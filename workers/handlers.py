"""Run the handlers one stream entry names: resolved once, bounded by a timeout, failures captured.

Async handlers run on the event loop. Sync handlers run in the pool's thread
pool, so a blocking client cannot stall the other in-flight entries.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import importlib
import inspect
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass

import structlog

from bus import defaults
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
from workers.timeouts import HandlerTimeouts

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
    """The pool's handlers by name, resolved once.

    A name that cannot be resolved is remembered for UNRESOLVED_RETRY_S only, then
    tried again: creating the missing module (or fixing it) mends a running worker.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 retry_unresolved_s: float = defaults.UNRESOLVED_RETRY_S) -> None:
        # Resolved names only, so the hot path (`known`, `get`) is one dict lookup, as before.
        self._resolved: dict[str, Resolved] = {}
        # name -> (why it did not resolve, when (clock) it may be tried again).
        self._failed: dict[str, tuple[ConfigError, float]] = {}
        self._clock = clock
        self._retry_unresolved_s = retry_unresolved_s
        # The destinations of the latest table (a removed one keeps its last known declaration);
        # forward handlers read it at each call, so edits apply without resolving them again.
        self._destinations: dict[str, Destination] = {}

    def _todo(self, names: Iterable[str]) -> list[str]:
        """Names never seen, and failed names whose retry time has come."""
        now = self._clock()
        todo = sorted(n for n in set(names) - set(self._resolved)
                      if n not in self._failed or self._failed[n][1] <= now)
        if any(n in self._failed for n in todo):
            # The import system caches directory listings: a module created since must be found.
            importlib.invalidate_caches()
        return todo

    def _store(self, name: str, resolved: Resolved | ConfigError) -> None:
        if isinstance(resolved, ConfigError):
            self._failed[name] = (resolved, self._clock() + self._retry_unresolved_s)
        else:
            self._resolved[name] = resolved
            self._failed.pop(name, None)

    def load(self, names: Iterable[str], table: RoutingTable, *, strict: bool) -> list[ConfigError]:
        """Resolve names not seen yet; with `strict`, raise the first error instead of returning them."""
        errors: list[ConfigError] = []
        self._destinations.update(table.destinations)
        for name in self._todo(names):
            try:
                func = resolve_handler(name, self._destinations)
            except ConfigError as err:
                if strict:
                    raise
                self._store(name, err)
                errors.append(err)
                continue
            self._store(name, Resolved(name, func, inspect.iscoroutinefunction(func)))
        return errors

    async def load_async(self, names: Iterable[str], table: RoutingTable) -> list[ConfigError]:
        """`load(strict=False)` with the new names resolved in a thread: importing a module never blocks the loop."""
        self._destinations.update(table.destinations)
        new = self._todo(names)
        if not new:
            return []
        found = await asyncio.to_thread(_resolve_all, new, self._destinations)
        errors: list[ConfigError] = []
        for name, resolved in found.items():
            if name in self._resolved:
                continue  # a concurrent call resolved it meanwhile
            self._store(name, resolved)
            if isinstance(resolved, ConfigError):
                errors.append(resolved)
        return errors

    def known(self, name: str) -> bool:
        """True when `name` was resolved already (or found unresolvable, and not yet due another try)."""
        return name in self._resolved or (name in self._failed and self._failed[name][1] > self._clock())

    def get(self, name: str, table: RoutingTable) -> Resolved | ConfigError:
        """The handler called `name`; a name first seen here (a newer routing table), or a failed
        one due another try, is resolved now."""
        found = self._resolved.get(name)
        if found is not None:
            return found
        if not self.known(name):
            self.load([name], table, strict=False)
        return self._resolved.get(name) or self._failed[name][0]


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
    timeouts: HandlerTimeouts | None = None,
) -> Failure | None:
    """Run one handler once; None on success, else the failure to record.

    `timeouts` is the caller's shared timer (workers/timeouts.py: a consumer runs many calls at
    once); without it the call has a timer of its own. Exceptions of a `passthrough` type are
    not a handler's failure but the caller's (the RQ executor's hard job timeout): they are
    raised, not recorded.
    """
    if isinstance(handler, ConfigError):
        # The reason already says "unknown handler": the error is the resolver's own line.
        return Failure(name, _error_line(handler), "", permanent=True, reason=REASON_UNKNOWN_HANDLER)
    ctx = make_ctx(name)
    try:
        with (timeouts or HandlerTimeouts()).limit(timeout_s):
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
