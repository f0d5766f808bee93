"""Run a background pass (reclaim, trim) at an interval; a failing pass is logged, never fatal."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from bus import defaults


async def every(interval_s: Callable[[], float], action: Callable[[], Awaitable[Any]],
                stopping: Callable[[], bool], log: Any) -> None:
    while not stopping():
        await asyncio.sleep(interval_s())
        try:
            await action()
        except RedisError as err:
            log.error("pool.background_failed", action=action.__name__, error=f"{type(err).__name__}: {err}")
        except Exception as err:  # a bug must not end the task silently: retries would stop
            log.error("pool.background_failed", action=action.__name__,
                      error=f"{type(err).__name__}: {err}", exc_info=True)
            await asyncio.sleep(defaults.BACKGROUND_FAILURE_BACKOFF_S)
