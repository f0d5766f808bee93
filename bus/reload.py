"""Keep a running process's routing table in step with its file.

Polling the file's stat is enough (a change takes effect within RELOAD_POLL_S)
and needs no inotify, which does not exist on every platform or volume type.
An invalid edit keeps the table in use and logs why, line included.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from bus import defaults
from bus.errors import ConfigError
from bus.routing import RoutingTable, load_routing

log = structlog.get_logger("fanout.routing")


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class RoutingHolder:
    """Holds the current table; `table` is read per request, so a swap is one assignment.

    Nothing a routing file holds can stop the watcher: a ConfigError (with its line) or any
    other exception is kept in `last_error`, logged, and the next change is looked at as usual.
    """

    def __init__(
        self,
        path: Path,
        table: RoutingTable,
        on_change: Callable[[RoutingTable | None, str | None], None] | None = None,
        vet: Callable[[RoutingTable], list[str]] | None = None,
        *,
        max_bytes: int = defaults.MAX_ROUTING_FILE_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.table = table
        # More checks a new table must pass to replace the current one (a worker: its handlers
        # import); each problem is a "file:line: ..." message. Run where the file is parsed.
        self.vet = vet
        self.last_error: str | None = None
        # When the watcher last looked at the file (wall clock), for /readyz; None before it has.
        self.last_check_at: float | None = None
        self._stamp = _stamp(path)
        self._on_change = on_change
        self._max_bytes = max_bytes
        self._clock = clock

    @classmethod
    def load(
        cls,
        path: Path,
        on_change: Callable[[RoutingTable | None, str | None], None] | None = None,
        *,
        max_bytes: int = defaults.MAX_ROUTING_FILE_BYTES,
    ) -> RoutingHolder:
        return cls(path, load_routing(path, max_bytes), on_change=on_change, max_bytes=max_bytes)

    def check(self) -> bool:
        """Reload when the file changed; True when a new table is now in use."""
        if not self._changed():
            return False
        try:
            table = self._load()
        except Exception as err:  # a bad edit, whatever it raises, must not end the watcher
            return self._rejected(err)
        return self._loaded(table)

    async def check_async(self) -> bool:
        """`check()` with the file read and parsed in a thread, so the event loop never waits on it."""
        if not self._changed():
            return False
        try:
            table = await asyncio.to_thread(self._load)
        except Exception as err:  # a bad edit, whatever it raises, must not end the watcher
            return self._rejected(err)
        return self._loaded(table)

    def _load(self) -> RoutingTable:
        table = load_routing(self.path, self._max_bytes)
        problems = self.vet(table) if self.vet is not None else []
        if problems:
            raise ConfigError("\n".join(problems))
        return table

    def _changed(self) -> bool:
        """Whether the file changed since the last look (a vanished file is a change too)."""
        self.last_check_at = self._clock()
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True

    def _rejected(self, err: Exception) -> bool:
        # A ConfigError names the file and line itself; anything else is a bug of ours, so
        # its type and traceback go to the log, and only its type and message to /readyz.
        error = str(err) if isinstance(err, ConfigError) else (
            f"{self.path}: cannot load routing file: {type(err).__name__}: {err}")
        self.last_error = error
        log.error("routing.reload_rejected", file=str(self.path), error=error,
                  kept_version=self.table.version,
                  exc_info=not isinstance(err, ConfigError))
        if self._on_change:
            self._on_change(None, error)
        return False

    def _loaded(self, table: RoutingTable) -> bool:
        self.last_error = None
        if table.version == self.table.version:
            return False
        log.info("routing.reloaded", file=str(self.path), old_version=self.table.version,
                 version=table.version, warnings=list(table.warnings))
        self.table = table
        if self._on_change:
            self._on_change(table, None)
        return True

    async def watch(self, poll_s: float = defaults.RELOAD_POLL_S) -> None:
        """Check the file forever; run it as a task and cancel it at shutdown."""
        while True:
            await asyncio.sleep(poll_s)
            try:
                await self.check_async()
            except Exception:  # on_change or the log failed: say so, and keep watching
                log.exception("routing.watch_failed", file=str(self.path))
