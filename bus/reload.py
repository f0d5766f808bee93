"""Keep a running process's routing table in step with its file.

Polling the file's stat is enough (a change takes effect within RELOAD_POLL_S)
and needs no inotify, which does not exist on every platform or volume type.
An invalid edit keeps the table in use and logs why, line included.
"""

from __future__ import annotations

import asyncio
import os
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
    """Holds the current table; `table` is read per request, so a swap is one assignment."""

    def __init__(
        self,
        path: Path,
        table: RoutingTable,
        on_change: Callable[[RoutingTable | None, str | None], None] | None = None,
        vet: Callable[[RoutingTable], list[str]] | None = None,
    ) -> None:
        self.path = path
        self.table = table
        # More checks a new table must pass to replace the current one (a worker: its handlers
        # import); each problem is a "file:line: ..." message. Run where the file is parsed.
        self.vet = vet
        self.last_error: str | None = None
        self._stamp = _stamp(path)
        self._on_change = on_change

    @classmethod
    def load(cls, path: Path,
             on_change: Callable[[RoutingTable | None, str | None], None] | None = None) -> RoutingHolder:
        return cls(path, load_routing(path), on_change=on_change)

    def check(self) -> bool:
        """Reload when the file changed; True when a new table is now in use."""
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            table = self._load()
        except ConfigError as err:
            return self._rejected(err)
        return self._loaded(table)

    async def check_async(self) -> bool:
        """`check()` with the file read and parsed in a thread, so the event loop never waits on it."""
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            table = await asyncio.to_thread(self._load)
        except ConfigError as err:
            return self._rejected(err)
        return self._loaded(table)

    def _load(self) -> RoutingTable:
        table = load_routing(self.path)
        problems = self.vet(table) if self.vet is not None else []
        if problems:
            raise ConfigError("\n".join(problems))
        return table

    def _rejected(self, err: ConfigError) -> bool:
        self.last_error = str(err)
        log.error("routing.reload_rejected", file=str(self.path), error=str(err),
                  kept_version=self.table.version)
        if self._on_change:
            self._on_change(None, str(err))
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
            await self.check_async()
