"""Graceful shutdown: in-flight entries get a grace period to finish; what is left stays pending.

Entries the consumer held beyond its free slots (workers/engine/backlog.py) are already
delivered to it, so they are run too, as slots free during the drain: a consumer that
stops leaves nothing it took unstarted unless the grace period runs out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog


async def drain(running: Callable[[], list[asyncio.Task[None]]], grace_s: float,
                log: structlog.typing.FilteringBoundLogger) -> None:
    """Wait up to `grace_s` until nothing runs, then cancel the rest (their entries are claimed by a peer later).

    `running` is asked again each time what it returned has finished: an entry that ends
    starts a held one in its slot.
    """
    tasks = running()
    if not tasks:
        return
    log.info("pool.draining", inflight=len(tasks), grace_s=grace_s)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while tasks and (left := deadline - loop.time()) > 0:
        await asyncio.wait(tasks, timeout=left)
        tasks = [t for t in running() if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
        log.warning("pool.drain_timeout", left_pending=len(tasks))
