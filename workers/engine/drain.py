"""Graceful shutdown: in-flight entries get a grace period to finish; what is left stays pending."""

from __future__ import annotations

import asyncio

import structlog


async def drain(tasks: list[asyncio.Task[None]], grace_s: float, log: structlog.typing.FilteringBoundLogger) -> None:
    """Wait up to `grace_s` for `tasks`, then cancel the rest (their entries are claimed by a peer later)."""
    if not tasks:
        return
    log.info("pool.draining", inflight=len(tasks), grace_s=grace_s)
    _, unfinished = await asyncio.wait(tasks, timeout=grace_s)
    for task in unfinished:
        task.cancel()
    if unfinished:
        await asyncio.gather(*unfinished, return_exceptions=True)
        log.warning("pool.drain_timeout", left_pending=len(unfinished))
