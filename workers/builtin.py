"""Handlers with no outside effects."""

from __future__ import annotations

from bus.envelope import Event
from workers.context import Context


async def noop(event: Event, ctx: Context) -> None:
    """Succeed at once: for benchmarks, and for routes that only need acknowledging."""
